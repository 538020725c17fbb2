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
from common.errors import DataError, run_cli
from tests.helpers import assert_same_rows, read_jsonl


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


MID_EPOCH_ARGV = ["--epoch-size", "32", "--batch-size", "8", "--val-stride", "2",
                  "--checkpoint-every", "1", "--epochs", "1"]      # 4 batches, 3 checkpoints


@pytest.fixture(scope="module")
def mid_epoch_run(tiny_luna, tmp_path_factory):
    """A train_cls run of one epoch of 4 batches, uninterrupted: (its checkpoints after
    batches 1, 2 and 3 as dicts, its metrics.jsonl rows)."""
    run = tmp_path_factory.mktemp("resumable") / "run"
    argv = ["--data-dir", str(tiny_luna.parent), "--run-dir", str(run), *MID_EPOCH_ARGV]
    saved = {}
    original = train_cls.mid_epoch_saver

    def keep_each(*args, **kwargs):
        after_batch = original(*args, **kwargs)

        def then_copy(rows):
            after_batch(rows)
            state = torch.load(run / "cls_dlwpt.last.state", weights_only=True)
            saved.setdefault(state.get("batch"), state)
        return then_copy
    train_cls.mid_epoch_saver = keep_each
    try:
        train_cls.main(argv)
    finally:
        train_cls.mid_epoch_saver = original
    assert sorted(k for k in saved if k) == [1, 2, 3]
    return saved, read_jsonl(run / "metrics.jsonl")


@pytest.fixture(scope="module")
def mid_epoch_checkpoint(mid_epoch_run):
    """A checkpoint train_cls wrote in the middle of an epoch (batch 1 of 4): its dict."""
    return mid_epoch_run[0][1]


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


# ----------------------------------------------------------------------------- resume points
# A resume point is checked as a whole (checkpoints.check_resume_point): epoch, batch, samples
# seen, the partial epoch's metrics and the saved batch and epoch size must agree.
def resume_point_state(epoch, batch, seen, start=None, widths=(), rows=3, batch_size=4,
                       epoch_size=30):
    """A hand-made checkpoint dict holding just what the resume point check reads."""
    state = {"epoch": epoch, "totalTrainingSamples_count": seen,
             "args": {"batch_size": batch_size, "epoch_size": epoch_size}}
    if batch:
        state.update(batch=batch, epoch_start_samples=start,
                     trn_partial=[torch.zeros(rows, width) for width in widths])
    return state


# (the state, None when it must resume, else the words of its one line). 30 samples in batches
# of 4: one process has 8 batches (the last of 2 samples), each of two processes 15 samples in
# 4 batches (the last of 3): a checkpoint follows batch 1 .. 7 (one process) or 1 .. 3 (two).
POINTS = {
    "last batch, 1 process": (resume_point_state(1, 7, 28, 0, [28]), None),
    "after the last, 1 process": (resume_point_state(1, 8, 32, 0, [32]),
                                  "field 'batch' is 8, beyond the epoch: 1 process(es) with 30 "
                                  "samples per epoch and batch size 4 have 8 batch(es) each"),
    "last batch, 2 processes": (resume_point_state(1, 3, 24, 0, [12, 12]), None),
    "after the last, 2 processes": (resume_point_state(1, 4, 32, 0, [16, 16]),
                                    "field 'batch' is 4, beyond the epoch: 2 process(es)"),
    "batch 999 with partial metrics": (resume_point_state(1, 999, 8, 0, [8]),
                                       "field 'batch' is 999, beyond the epoch"),
    "older file: a rank's whole epoch": (resume_point_state(1, 2, 16, 0, [15, 15]), None),
    "partial longer": (resume_point_state(1, 2, 8, 0, [9]),
                       "field 'trn_partial' holds 9 samples' metrics for rank 0, not 8"),
    "partial shorter": (resume_point_state(1, 2, 8, 0, [7]), "holds 7 samples' metrics"),
    "one rank's partial shorter": (resume_point_state(1, 2, 16, 0, [8, 4]),
                                   "holds 4 samples' metrics for rank 1, not 8"),
    "partial of 2 rows": (resume_point_state(1, 2, 8, 0, [8], rows=2),
                          "field 'trn_partial' holds 2 rows of metrics for rank 0, not 3"),
    "partial of 4 rows": (resume_point_state(1, 2, 8, 0, [8], rows=4), "holds 4 rows"),
    "samples one more": (resume_point_state(1, 2, 9, 0, [8]),
                         "field 'totalTrainingSamples_count' is 9, not 8 (field "
                         "'epoch_start_samples' 0 + batch 2 x batch size 4 x 1 process(es))"),
    "samples one fewer": (resume_point_state(1, 2, 7, 0, [8]), "is 7, not 8"),
    "epoch 1 starting past 0": (resume_point_state(1, 2, 9, 1, [8]),
                                "field 'epoch_start_samples' is 1 in epoch 1: epoch 1 starts "
                                "at 0"),
    "epoch 2 starting at 0": (resume_point_state(2, 2, 8, 0, [8]),
                              "field 'epoch_start_samples' is 0 in epoch 2"),
    "epoch 3 after two whole epochs": (resume_point_state(3, 2, 68, 60, [8]), None),
    "epoch 3 after more than two": (resume_point_state(3, 2, 69, 61, [8]),
                                    "field 'epoch_start_samples' is 61, more than the 2 "
                                    "epoch(s) before epoch 3 hold (30 samples each)"),
    "mid-epoch in epoch 0": (resume_point_state(0, 2, 8, 0, [8]),
                             "field 'epoch' is 0 but field 'batch' is 2"),
    "batch size 0": (resume_point_state(1, 2, 8, 0, [8], batch_size=0),
                     "field 'args', setting 'batch_size' is 0, not a whole number >= 1"),
    "batch size 1": (resume_point_state(1, 2, 2, 0, [2], batch_size=1), None),
    "epoch size -30": (resume_point_state(2, 0, 60, epoch_size=-30),
                       "setting 'epoch_size' is -30, not a whole number >= 0"),
    "epoch size unset: its checks wait": (resume_point_state(1, 999, 3996, 0, [3996],
                                                             epoch_size=None), None),
    "end of epoch 2, all seen": (resume_point_state(2, 0, 60), None),
    "end of epoch 2, one more": (resume_point_state(2, 0, 61),
                                 "field 'totalTrainingSamples_count' is 61, more than 2 "
                                 "epoch(s) of 30 samples hold"),
    "end of epoch 2, none seen": (resume_point_state(2, 0, 0),
                                  "field 'totalTrainingSamples_count' is 0 after epoch 2"),
    "before epoch 1": (resume_point_state(0, 0, 0), None),
    "before epoch 1, some seen": (resume_point_state(0, 0, 8), "is 8 after epoch 0"),
    "end of epoch with partial metrics": (
        {**resume_point_state(1, 0, 30), "trn_partial": [torch.zeros(3, 8)]},
        "field 'trn_partial' holds a partial epoch's metrics but field 'batch' is None"),
}


@pytest.mark.parametrize("case", POINTS)
def test_a_resume_point_is_checked_as_a_whole(case):
    from ch10_luna.checkpoints import check_resume_point

    state, words = POINTS[case]
    if words is None:
        check_resume_point(state, "x.state")
    else:
        with pytest.raises(DataError) as caught:
            check_resume_point(state, "x.state")
        assert str(caught.value).startswith("--resume x.state: ") and words in str(caught.value)


def test_a_checkpoints_batch_is_checked_against_the_epoch_this_run_trains():
    """With --epoch-size unset (the data decides), the epoch's length the trainer computes is
    the one checked; a trainer that resumes only at an epoch's end refuses a mid-epoch one."""
    from ch10_luna.checkpoints import resume_point
    from ch10_luna.runtime import Proc

    proc = Proc("cpu", 0, 1, print)
    state = {**resume_point_state(1, 7, 28, 0, [28], epoch_size=None), "best_f1": 0.5}
    assert resume_point(state, "x.state", proc, "best_f1", 30).batch == 7
    with pytest.raises(DataError, match="field 'batch' is 7, beyond the epoch: 1 process"):
        resume_point(state, "x.state", proc, "best_f1", 28)           # 7 batches of 4
    with pytest.raises(DataError, match="this script saves and resumes at the end of an epoch"):
        resume_point(state, "x.state", proc, "best_recall")


def resumed_rows(state, tmp_path, capsys, name="case"):
    """train_cls resumed from `state` (written to tmp_path/<name>.state, its run folder
    tmp_path/<name>): its metrics rows, or the one line of its refusal."""
    import copy

    state = copy.deepcopy(state)
    run = tmp_path / name
    if isinstance(state.get("args"), dict):
        state["args"]["run_dir"] = str(run)           # a resumed run writes where it was saved
    path = tmp_path / f"{name}.state"
    torch.save(state, path)
    capsys.readouterr()                               # an earlier case's progress bars
    try:
        run_cli(train_cls.main, ["--resume", str(path)])
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        assert e.code == 2 and len(err) == 1 and "Traceback" not in err[0], err[-3:]
        assert err[0].startswith(f"error: --resume {path}: "), err
        assert not run.exists()                       # refused before the run starts
        return err[0]
    return read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []


def test_resumed_after_the_last_batch_but_one_equals_the_uninterrupted_run(
        mid_epoch_run, tmp_path, capsys):
    saved, rows = mid_epoch_run
    assert (saved[3]["batch"], saved[3]["trn_partial"][0].shape) == (3, (3, 24))
    assert_same_rows(rows, resumed_rows(saved[3], tmp_path, capsys))


def could_have_been_written(state):
    """Whether train_cls resuming with one process can take `state`: its fields as train_cls
    writes them (the test's own statement of the rule, for the fuzz below)."""
    def whole(value, least=0):
        return type(value) is int and value >= least

    settings = state["args"]
    batch_size, epoch_size = settings["batch_size"], settings["epoch_size"]
    epoch, seen, batch = (state.get(k, 0) for k in ("epoch", "totalTrainingSamples_count",
                                                    "batch"))
    if not (whole(batch_size, 1) and whole(epoch_size, 1) and whole(epoch) and whole(seen)
            and whole(batch)):
        return False
    if batch == 0:
        return "trn_partial" not in state and (epoch == 0) == (seen == 0) and \
            seen <= epoch * epoch_size
    parts, start = state.get("trn_partial"), state.get("epoch_start_samples")
    if not (type(parts) is list and len(parts) == 1 and whole(start)):   # one process's
        return False
    batches = -(-epoch_size // batch_size)
    return (epoch >= 1 and batch < batches and parts[0].shape in ((3, batch * batch_size),
                                                                  (3, epoch_size))
            and seen == start + batch * batch_size and (start == 0) == (epoch == 1)
            and start <= (epoch - 1) * epoch_size)


def padded(width):
    def pad(parts):
        return [torch.cat([parts[0], torch.zeros(3, width - parts[0].shape[1])], dim=1)]
    return pad


DELETE = object()
# What each field of the batch 2 checkpoint (epoch 1, 16 samples seen, epoch 32, batch 8,
# partial metrics (3, 16)) may become: values or changes of the partial metrics.
FIELD_VALUES = {
    "batch": [0, 1, 3, 4, 5, 999, -1, 2.0, True, "2", DELETE],
    "epoch": [0, 2, 3, -1, 1.0, "1"],
    "totalTrainingSamples_count": [0, 8, 24, 32, 33, 999, -16, 16.0],
    "epoch_start_samples": [8, 16, 32, -1, 0.0, DELETE],
    "trn_partial": [lambda p: [p[0][:2]], lambda p: [torch.cat([p[0], p[0][:1]])],
                    lambda p: [p[0][:, :8]], padded(24), padded(32), lambda p: [p[0][:, :0]],
                    lambda p: [p[0], p[0]], lambda p: [], lambda p: p[0], DELETE],
    "batch_size": [4, 16, 1, 0, -8, 8.0],
    "epoch_size": [16, 24, 31, -32, "32"],
}


def damaged(state, rng, changes=None):
    """`state` with 1 to 3 of its fields changed (FIELD_VALUES; or `changes`, a list of (field,
    value)), and whether only changes that keep the resume point (the older full-epoch width of
    the partial metrics) were made."""
    import copy

    state = copy.deepcopy(state)
    same = True
    if changes is None:
        fields = rng.sample(sorted(FIELD_VALUES), rng.randint(1, 3))
        changes = [(field, rng.choice(FIELD_VALUES[field])) for field in fields]
    for field, value in changes:
        holder = state["args"] if field in ("batch_size", "epoch_size") else state
        if value is DELETE:
            holder.pop(field, None)
        elif callable(value):
            holder[field] = value(holder[field])
        else:
            holder[field] = value
        same = same and getattr(value, "__qualname__", "").startswith("padded") and \
            holder[field][0].shape[1] == 32
    return state, same


def test_damaged_resume_points_resume_or_are_refused_in_one_line(mid_epoch_run, tmp_path,
                                                                 capsys):
    """A seeded fuzz of combined damages: each case either resumes (and, where the damage
    keeps the resume point, ends with the uninterrupted run's metrics) or is refused in one
    line naming the file, as could_have_been_written says: never a traceback."""
    import random

    saved, rows = mid_epoch_run
    rng, counts = random.Random(21), {"refused": 0, "resumed": 0, "resumed exactly": 0}
    chosen = [[("trn_partial", padded(32))], [("epoch_size", 31)]]   # kept, another epoch size
    for case in range(len(chosen) + 18):             # each case a train_cls start
        state, same = damaged(saved[2], rng, chosen[case] if case < len(chosen) else None)
        result = resumed_rows(state, tmp_path, capsys, f"case{case}")
        if not could_have_been_written(state):
            assert isinstance(result, str), (case, state["args"], rows)
            counts["refused"] += 1
            continue
        assert isinstance(result, list), (case, result)
        epoch = state["epoch"] + (0 if state.get("batch") else 1)     # where it resumes
        assert [(r["epoch"], r["phase"]) for r in result] == (        # --epochs 1 was saved
            [(1, "trn"), (1, "val")] if epoch == 1 else [])
        if same:
            assert_same_rows(rows, result)
            counts["resumed exactly"] += 1
        counts["resumed"] += 1
    with capsys.disabled():
        print(f"\nresume point fuzz: {counts}")
    assert counts["refused"] >= 12 and counts["resumed"] > counts["resumed exactly"] >= 1
