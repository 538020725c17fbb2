"""Bad input at chapters 9-12's entry points: one line on stderr naming the file or flag, exit 2,
nothing run from a file, nothing half-written; a broken series among good ones is skipped."""
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from ch10_luna import check_data, f1_plot, train_cls, vis
from ch10_luna.checkpoints import save_checkpoint
from ch10_luna.dsets import find_luna
from ch10_luna.model import LunaModel
from common.errors import run_cli


class Marker:
    """Unpickling this would create `path`: the test of code run from a data file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def refused(main, argv, capsys):
    """Run `main(argv)` as its script does; the one stderr line of a refusal (exit 2)."""
    with pytest.raises(SystemExit) as caught:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def luna(tiny_luna, tmp_path):
    """A copy of the tiny sample (4 series in subset0, subset1) to break, as a data root."""
    shutil.copytree(tiny_luna, tmp_path / "luna")
    return tmp_path / "luna"


def train_argv(luna, run_dir, *extra):
    return ["--data-dir", str(luna.parent), "--run-dir", str(run_dir), "--epoch-size", "16",
            "--batch-size", "8", "--val-stride", "2", *extra]


def first_mhd(luna):
    return sorted(luna.glob("subset*/*.mhd"))[0]


def set_field(mhd, name, value):
    text = re.sub(rf"^{name} = .*$", f"{name} = {value}", mhd.read_text(), flags=re.M)
    mhd.write_text(text)


# ----------------------------------------------------------------------------- class 1: code
def test_a_checkpoint_that_is_code_runs_nothing(luna, tmp_path, capsys):
    marker = tmp_path / "marker"
    torch.save({"model_state": {}, "x": Marker(str(marker))}, tmp_path / "evil.state")
    line = refused(train_cls.main, ["--resume", str(tmp_path / "evil.state")], capsys)
    assert line.startswith(f"error: --resume {tmp_path / 'evil.state'}: holds Python objects")
    assert not marker.exists()


# ----------------------------------------------------------------------------- class 2: CTs
GEOMETRY_FAULTS = [
    ("ElementSpacing", "nan 1 1", "ElementSpacing 'nan 1 1': spacings must be finite and > 0"),
    ("ElementSpacing", "0 1 1", "spacings must be finite and > 0"),
    ("ElementSpacing", "one 1 1", "ElementSpacing"),
    ("TransformMatrix", "1 0 0 1 0 0 0 0 1", "the direction matrix must be finite and "
                                             "invertible"),
    ("NDims", "2", "NDims '2': a CT volume must be 3-D"),
    ("DimSize", "160 160 71", "not the file this header describes"),     # .raw is larger
    ("ElementType", "MET_STRING", "ElementType 'MET_STRING' is not supported"),
    ("ElementSpacing", "700000.0 0.7 2.5", "ElementSpacing '700000.0 0.7 2.5': a voxel step of "
                                           "700000 mm is no CT's"),      # beyond a CT's bounds
    ("Offset", "0 0 10000.5", "Offset '0 0 10000.5': 10000.5 mm from the scanner's origin"),
    ("TransformMatrix", "1 0 0 0 1 0 0 0 1.01", "the direction matrix is not orthonormal"),
    ("DimSize", "160 160 16385", "DimSize '160 160 16385': each size must lie between 1 and "
                                 "16,384 voxels"),
]


@pytest.mark.parametrize("field, value, message", GEOMETRY_FAULTS)
def test_check_data_names_the_broken_field(luna, field, value, message):
    (luna / "SYNTHETIC.json").unlink()                 # as LUNA16: no sample to regenerate
    mhd = first_mhd(luna)
    set_field(mhd, field, value)
    report = check_data.check_luna(luna)
    (bad,) = report["bad_files"]
    assert bad["file"] == str(mhd) and message in bad["error"]
    assert report["series_ok"] == 3 and report["usable"]           # training skips it
    assert "1 broken series skipped" in report["verdict"]
    assert message in find_luna(luna).skipped[mhd.stem]       # the trainers' reader, the same


def test_training_skips_a_broken_series_with_one_warning(luna, tmp_path, capsys):
    mhd = first_mhd(luna)
    set_field(mhd, "ElementSpacing", "nan 1 1")
    _model, history = train_cls.main(train_argv(luna, tmp_path / "run"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"warning: skipped: {mhd}: ElementSpacing 'nan 1 1': spacings must "
                        "be finite and > 0 (mm)"]
    assert history[0]["val"]["count/neg"] + history[0]["val"]["count/pos"] > 0


def test_nothing_usable_left_is_one_error(luna, tmp_path, capsys):
    for mhd in luna.glob("subset*/*.mhd"):
        set_field(mhd, "TransformMatrix", "0 0 0 0 0 0 0 0 0")
    line = refused(train_cls.main, train_argv(luna, tmp_path / "run"), capsys)
    assert "no usable series (4 skipped;" in line and "direction matrix" in line
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- class 3: CSVs
def break_csv(luna, kind):
    path = luna / ("annotations.csv" if kind in ("nan", "folder", "inf") else "candidates.csv")
    if kind == "nan":
        lines = path.read_text().splitlines()
        fields = lines[1].split(",")
        lines[1] = ",".join([fields[0], "nan", *fields[2:]])
        path.write_text("\n".join(lines) + "\n")
    elif kind == "inf":
        path.write_text(path.read_text().rstrip() + "\n1.2,inf,0,0,5\n")
    elif kind == "empty":
        path.write_text("")
    elif kind == "latin1":
        path.write_bytes(path.read_bytes() + "1.2.3,\xe9,0,0,0\n".encode("latin-1"))
    elif kind == "column":
        path.write_text(path.read_text().replace("coordZ", "coord_z", 1))
    elif kind == "folder":
        path.unlink()
        path.mkdir()
    return path


@pytest.mark.parametrize("kind, message", [
    ("nan", r"annotations\.csv, line 2: coordX is 'nan', not a finite number"),
    ("inf", r"annotations\.csv, line \d+: coordX is 'inf', not a finite number"),
    ("empty", r"candidates\.csv: empty file \(expected a header"),
    ("latin1", r"candidates\.csv: not UTF-8 text \(byte 0xe9"),
    ("column", r"candidates\.csv: no column coordZ"),
    ("folder", r"annotations\.csv: a folder, not a CSV file"),
])
def test_malformed_luna_tables_are_one_line(luna, tmp_path, capsys, kind, message):
    path = break_csv(luna, kind)
    line = refused(train_cls.main, train_argv(luna, tmp_path / "run"), capsys)
    assert re.search(message, line), line
    assert str(path) in line
    assert not (tmp_path / "run").exists()                      # nothing begun


# ----------------------------------------------------------------------------- class 4: outputs
@pytest.mark.parametrize("script", ["train_cls", "vis", "f1_plot"])
def test_an_output_folder_that_is_a_file(luna, tmp_path, capsys, script):
    (tmp_path / "file").write_text("")
    main, flag = {"train_cls": (train_cls.main, "--run-dir"), "vis": (vis.main, "--out"),
                  "f1_plot": (f1_plot.main, "--out")}[script]
    data = [] if script == "f1_plot" else ["--data-dir", str(luna.parent)]
    line = refused(main, [*data, flag, str(tmp_path / "file" / "x")], capsys)
    assert f"{tmp_path / 'file' / 'x'}: part of the path is a file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "luna"]


def test_a_run_dir_that_is_a_file_is_refused_before_the_sample_is_made(tmp_path, capsys):
    (tmp_path / "run").write_text("")
    line = refused(train_cls.main, ["--data-dir", str(tmp_path), "--run-dir",
                                    str(tmp_path / "run")], capsys)
    assert line == f"error: --run-dir {tmp_path / 'run'}: a file is in the way, not a folder"
    assert not (tmp_path / "synthetic").exists()


FULL_DISK = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))   # smaller than a checkpoint
    from ch10_luna import train_cls
    from common.errors import run_cli
    run_cli(train_cls.main, sys.argv[1:])
""")


def test_a_full_disk_leaves_one_line_and_no_half_checkpoint(luna, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, *train_argv(luna, run),
                             "--checkpoint-every", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    err = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert err == [f"error: checkpoint {run / 'cls_dlwpt.last.state'}: cannot write: the disk "
                   "is full or the file is over a size limit (File too large)"]
    assert "Traceback" not in result.stderr
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]
    assert not (run / "cls_dlwpt.last.state").exists()


# ----------------------------------------------------------------------------- classes 7, 9
def test_another_models_checkpoint_is_named_in_one_short_line(luna, tmp_path, capsys):
    small = LunaModel(conv_channels=4)
    path = save_checkpoint(tmp_path / "small.state", small, torch.optim.SGD(
        small.parameters(), lr=0.1), vars(train_cls.parse_args(train_argv(luna, tmp_path))), 1,
        32)
    line = refused(train_cls.main, ["--resume", str(path)], capsys)
    assert ("does not fit LunaModel/Adam: 17 of another shape (block1.conv1.weight: "
            "(4, 1, 3, 3, 3) in the file, (8, 1, 3, 3, 3) in the model; and 16 more)") in line
    assert len(line) < 300


def test_resuming_settings_that_lack_a_flag_is_one_line(luna, tmp_path, capsys):
    model = LunaModel()
    settings = vars(train_cls.parse_args(train_argv(luna, tmp_path / "r")))
    del settings["checkpoint_every"]                    # written by another version
    path = save_checkpoint(tmp_path / "old.state", model, torch.optim.SGD(model.parameters(),
                                                                           lr=0.1), settings,
                           1, 32)
    line = refused(train_cls.main, ["--resume", str(path)], capsys)
    assert line == (f"error: --resume {path}: its saved settings lack --checkpoint-every "
                    "(saved by another script or version); start a new run instead")


@pytest.fixture(scope="module")
def mid_epoch_checkpoint(tiny_luna, tmp_path_factory):
    """A checkpoint train_cls wrote in the middle of an epoch (batch 1 of 2): its dict."""
    run = tmp_path_factory.mktemp("resumable") / "run"
    argv = ["--data-dir", str(tiny_luna.parent), "--run-dir", str(run), "--epoch-size", "32",
            "--batch-size", "8", "--val-stride", "2", "--checkpoint-every", "1", "--epochs", "1"]
    saved = []
    original = train_cls.mid_epoch_saver

    def keep_the_first(*args, **kwargs):
        after_batch = original(*args, **kwargs)

        def then_copy(rows):
            after_batch(rows)
            if not saved:
                saved.append(torch.load(run / "cls_dlwpt.last.state", weights_only=True))
        return then_copy
    train_cls.mid_epoch_saver = keep_the_first
    try:
        train_cls.main(argv)
    finally:
        train_cls.mid_epoch_saver = original
    assert saved[0]["batch"] == 1
    return saved[0]


def nan_in_optimizer(state):
    first = next(iter(state["optimizer_state"]["state"].values()))
    first["exp_avg"].view(-1)[0] = float("nan")


# Each damage: (what it does to the checkpoint dict, the field the one line names, its words)
DAMAGES = {
    "augment -1": (lambda s: s["args"].update(augment=-1), "field 'args', setting 'augment'",
                   "is -1, not a list of all, flip, offset"),
    "no epoch_start_samples": (lambda s: s.pop("epoch_start_samples"),
                               "field 'epoch_start_samples'", "is missing"),
    "nan weights": (lambda s: s["model_state"]["head_linear.weight"].fill_(float("nan")),
                    "field 'model_state', entry 'head_linear.weight'", "holds NaN or Inf"),
    "nan optimizer": (nan_in_optimizer, "field 'optimizer_state'", "holds NaN or Inf"),
    "nan partial": (lambda s: s["trn_partial"][0].fill_(float("nan")), "field 'trn_partial'",
                    "holds NaN or Inf"),
    "epoch as text": (lambda s: s.update(epoch="2"), "field 'epoch'", "is '2', not a whole"),
    "negative samples": (lambda s: s.update(totalTrainingSamples_count=-5),
                         "field 'totalTrainingSamples_count'", "is -5, not a whole number"),
    "partial not a list": (lambda s: s.update(trn_partial=3.0), "field 'trn_partial'",
                           "is 3.0, not a list"),
    "best f1 nan": (lambda s: s.update(best_f1=float("nan")), "field 'best_f1'",
                    "is nan, not a finite number"),
    "epoch size as text": (lambda s: s["args"].update(epoch_size="many"),
                           "field 'args', setting 'epoch_size'", "is 'many', not a whole"),
    "no optimizer state": (lambda s: s.update(optimizer_state=[]), "field 'optimizer_state'",
                           "is [], not an optimizer's state dict"),
    "lr as text": (lambda s: s["args"].update(lr="fast"), "field 'args', setting 'lr'",
                   "is 'fast', not a finite number"),
    "batch size a bool": (lambda s: s["args"].update(batch_size=True),
                      "field 'args', setting 'batch_size'", "is True, not a whole number"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_field(
        mid_epoch_checkpoint, tmp_path, capsys, damage):
    import copy

    change, field, words = DAMAGES[damage]
    state = copy.deepcopy(mid_epoch_checkpoint)
    change(state)
    path = tmp_path / "damaged.state"
    torch.save(state, path)
    line = refused(train_cls.main, ["--resume", str(path), "--run-dir", str(tmp_path / "r")],
                   capsys)
    assert line.startswith(f"error: --resume {path}: {field} ") and words in line, line
    assert not (tmp_path / "r").exists()                      # refused before any run starts
