"""Every chapter-4 script: `--help`, and a missing book file is one line naming the download."""
import importlib

import pytest

from common.errors import DataError, run_cli

SCRIPTS = {                      # module -> registry name of the file it reads first
    "images": "image-dog", "volumetric": "dicom-ct", "wine": "wine", "bikes": "bikes",
    "text": "jane-austen", "audio": "audio-chirp", "video": "video-cockatoo",
}


@pytest.mark.parametrize("module", sorted(SCRIPTS))
def test_missing_file_names_the_download(module, tmp_path):
    main = importlib.import_module(f"ch04_data.{module}").main
    with pytest.raises(DataError, match=f"python -m common.data download {SCRIPTS[module]}$"):
        main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
             if module != "text" else ["--data-dir", str(tmp_path)])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", sorted(SCRIPTS))
def test_run_cli_prints_one_line_and_exits_2(module, tmp_path, capsys):
    main = importlib.import_module(f"ch04_data.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"download {SCRIPTS[module]}" in err


@pytest.mark.parametrize("module", sorted(SCRIPTS))
def test_help(module, capsys):
    main = importlib.import_module(f"ch04_data.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--data-dir" in capsys.readouterr().out
