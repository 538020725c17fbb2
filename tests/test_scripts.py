"""Every chapter script imports, answers --help, turns bad input into one line through run_cli,
and is named in its chapter's README (readers run them by name)."""
import importlib
from pathlib import Path

import pytest

from common.data import REPO_ROOT

SCRIPTS = sorted(p for p in REPO_ROOT.glob("ch*/*.py")
                 if p.name != "__init__.py" and "def main(" in p.read_text())


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_script_runs_through_run_cli_and_its_readme_names_it(path: Path):
    text = path.read_text()
    guard = 'if __name__ == "__main__":'
    assert guard in text, "no __main__ guard"
    assert "run_cli(" in text.split(guard, 1)[1], "the __main__ guard does not call run_cli"
    readme = (path.parent / "README.md").read_text()
    assert path.name in readme, f"{path.parent.name}/README.md does not mention {path.name}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help(path: Path, capsys):
    module = importlib.import_module(f"{path.parent.name}.{path.stem}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
