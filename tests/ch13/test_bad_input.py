"""Bad input at chapters 13-14's entry points: one line naming the file or flag, exit 2, nothing
run from a file, nothing half-written, no result from a broken model or file."""
import json
import re
import shutil

import pytest
import torch

from ch10_luna.checkpoints import save_checkpoint
from ch10_luna.model import LunaModel
from ch13_segment import check_fp_rate, nodule_analysis, roc, train_malignancy, train_seg
from ch13_segment.model import UNetWrapper
from ch13_segment.train_seg import MODEL_KWARGS
from common.errors import run_cli
from tests.ch10.test_bad_input import Marker, refused, set_field
from tests.common.test_ct import write_dicom_series


@pytest.fixture
def evil(tmp_path):
    """(a checkpoint whose unpickling would create `marker`, the marker path)."""
    marker = tmp_path / "marker"
    torch.save({"model_state": {}, "model_name": "LunaModel", "x": Marker(str(marker))},
               tmp_path / "evil.state")
    return tmp_path / "evil.state", marker


@pytest.fixture
def luna(seg_luna, tmp_path):
    shutil.copytree(seg_luna.root, tmp_path / "data" / "luna")
    return tmp_path / "data" / "luna"


# ----------------------------------------------------------------------------- class 1: code
@pytest.mark.parametrize("script, flag", [
    ("train_seg", "--resume"), ("train_malignancy", "--finetune"),
    ("train_malignancy", "--resume"), ("nodule_analysis", "--cls-model"),
    ("nodule_analysis", "--seg-model"),
])
def test_checkpoints_that_are_code_run_nothing(evil, luna, tiny_models, capsys, script, flag):
    path, marker = evil
    seg, cls, _ = tiny_models
    main = {"train_seg": train_seg.main, "train_malignancy": train_malignancy.main,
            "nodule_analysis": nodule_analysis.main}[script]
    argv = [flag, str(path), "--data-dir", str(luna.parent)]
    if script == "nodule_analysis":
        models = {"--seg-model": seg, "--cls-model": cls}
        models[flag] = str(path)
        argv = ["--run-validation", "--data-dir", str(luna.parent),
                *[v for kv in models.items() for v in kv]]
    line = refused(main, argv, capsys)
    assert line.startswith(f"error: {flag} {path}: holds Python objects")
    assert not marker.exists()


# ----------------------------------------------------------------------------- class 2: CTs
def test_analysing_a_broken_series_names_its_field(luna, tiny_models, capsys):
    seg, cls, _ = tiny_models
    mhd = sorted(luna.glob("subset*/*.mhd"))[0]
    set_field(mhd, "ElementSpacing", "0 1 1")
    line = refused(nodule_analysis.main, ["--no-compile", mhd.stem, "--data-dir", str(luna.parent),
                                          "--seg-model", seg, "--cls-model", cls], capsys)
    assert line == (f"error: series {mhd.stem} is unusable: {mhd}: ElementSpacing '0 1 1': "
                    "spacings must be finite and > 0 (mm)")


# A header beyond what a CT can be (common.ct's bounds): one line naming the file and the field,
# through --ct (a scan of one's own) and through the LUNA folder; nothing written.
BEYOND_A_CT = [
    ("ElementSpacing", "700000.0 0.7 2.5", "a voxel step of 700000 mm is no CT's (each must lie "
                                           "between 0.01 and 50 mm)"),     # the header
    ("Offset", "0 -10000.5 0", "-10000.5 mm from the scanner's origin is no CT's (each "
                               "coordinate must lie within 10,000 mm)"),
    ("TransformMatrix", "1 0 0 0 1 0 0 0 1.01", "the direction matrix is not orthonormal (axes "
                                                "of length 1 at right angles: |D^T D - I| is "
                                                "0.02, at most 0.001)"),
    ("DimSize", "160 160 16385", "each size must lie between 1 and 16,384 voxels"),
]


@pytest.mark.parametrize("field, value, message", BEYOND_A_CT, ids=[f for f, _, _ in BEYOND_A_CT])
def test_a_ct_beyond_the_bounds_is_one_line_naming_the_file_and_field(luna, tiny_models,
                                                                      tmp_path, capsys, field,
                                                                      value, message):
    seg, cls, _ = tiny_models
    source = sorted(luna.glob("subset*/*.mhd"))[0]
    own = tmp_path / "own"
    own.mkdir()
    for path in (source, source.with_suffix(".raw")):
        shutil.copy(path, own / path.name)
    mhd = own / source.name
    set_field(mhd, field, value)
    out = tmp_path / "out"
    line = refused(nodule_analysis.main, ["--no-compile", "--ct", str(mhd), "--seg-model", seg,
                                          "--cls-model", cls, "--outputs", str(out)], capsys)
    assert line == f"error: {mhd}: {field} {value!r}: {message}"
    assert not out.exists() or not list(out.iterdir())
    set_field(source, field, value)
    line = refused(nodule_analysis.main, ["--no-compile", source.stem, "--data-dir",
                                          str(luna.parent), "--seg-model", seg, "--cls-model",
                                          cls, "--outputs", str(out)], capsys)
    assert line == f"error: series {source.stem} is unusable: {source}: {field} {value!r}: " \
                   f"{message}"


def test_a_dicom_series_beyond_the_bounds_is_one_line(tiny_models, tmp_path, capsys):
    seg, cls, _ = tiny_models
    folder, _ = write_dicom_series(tmp_path / "scan", (0.7, 0.7, 60.0))
    line = refused(nodule_analysis.main, ["--no-compile", "--ct", str(folder), "--seg-model",
                                          seg, "--cls-model", cls, "--outputs",
                                          str(tmp_path / "out")], capsys)
    assert line.startswith(f"error: {folder} (DICOM series of 4 files): spacing (0.7, 0.7, 60")
    assert line.endswith("mm: a voxel step of 60 mm is no CT's (each must lie between 0.01 and "
                         "50 mm)")


# ----------------------------------------------------------------------------- class 3: files
@pytest.mark.parametrize("content, message", [
    (b"", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (b'{"series": []}', "holds no series"),
    (b'{"series": [{"series_uid": "1", "candidates": [{"center_xyz": [0, 0, 0], '
     b'"center_irc": [0, 0, 0], "prob_nodule": NaN, "prob_malignant": null}], '
     b'"annotations": []}]}', "not a finite number"),
    (b'{"series": [{"series_uid": "1", "candidates": [{"center_xyz": [0, 0, 0], '
     b'"center_irc": [0, 0, 0], "prob_nodule": 3, "prob_malignant": null}], '
     b'"annotations": []}]}', r"P\(nodule\) outside \[0, 1\]"),
    (b'{"rows": 1}', "no 'series'"),
])
def test_check_fp_rate_refuses_what_is_not_an_analysis(tmp_path, capsys, content, message):
    path = tmp_path / "a.json"
    path.write_bytes(content)
    line = refused(check_fp_rate.main, ["--analysis", str(path), "--out",
                                        str(tmp_path / "out")], capsys)
    assert line.startswith(f"error: --analysis {path}: ") and re.search(message, line), line
    assert not (tmp_path / "out").exists()


def test_malformed_annotations_stop_the_analysis_before_any_ct(luna, tiny_models, capsys):
    seg, cls, _ = tiny_models
    path = luna / "annotations_with_malignancy.csv"
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")
    lines[1] = ",".join([fields[0], fields[1], "nan", *fields[3:]])
    path.write_text("\n".join(lines) + "\n")
    line = refused(nodule_analysis.main, ["--no-compile",
                                          "--run-validation", "--data-dir", str(luna.parent),
                                          "--seg-model", seg, "--cls-model", cls], capsys)
    assert line == (f"error: {path}, line 2: coordY is 'nan', not a finite number")


# ----------------------------------------------------------------------------- class 4: outputs
@pytest.mark.parametrize("script", ["nodule_analysis", "check_fp_rate", "roc", "train_seg"])
def test_an_output_path_under_a_file(luna, tiny_models, tmp_path, capsys, script):
    seg, cls, _ = tiny_models
    (tmp_path / "file").write_text("")
    target = str(tmp_path / "file" / "x")
    data = ["--data-dir", str(luna.parent)]
    argv = {"nodule_analysis": ["--run-validation", *data, "--seg-model", seg, "--cls-model",
                                cls, "--json", target + "/a.json"],
            "check_fp_rate": ["--run-validation", *data, "--seg-model", seg, "--cls-model",
                              cls, "--out", target],
            "roc": ["--synthetic", *data, "--out", target],
            "train_seg": [*data, "--run-dir", target]}[script]
    main = {"nodule_analysis": nodule_analysis.main, "check_fp_rate": check_fp_rate.main,
            "roc": roc.main, "train_seg": train_seg.main}[script]
    if script == "roc":        # reads the sample under <data root>/synthetic/luna
        shutil.copytree(luna, luna.parent / "synthetic" / "luna")
    line = refused(main, argv, capsys)
    assert "part of the path is a file" in line and str(tmp_path / "file" / "x") in line
    assert not list(tmp_path.glob("file*/**/*.json"))


@pytest.mark.parametrize("broken", ["nan weights", "nan outputs"])
def test_a_model_that_gives_nan_writes_no_json(luna, tiny_models, tmp_path, capsys, broken):
    seg, _, _ = tiny_models
    model = LunaModel(conv_channels=2)
    with torch.no_grad():
        if broken == "nan weights":
            model.head_linear.weight.fill_(float("nan"))
        else:                                  # finite weights, but sqrt(-1) in the batch norm
            model.tail_batchnorm.running_var.fill_(-1.0)
    path = tmp_path / "nan.state"
    torch.save({"model_state": model.state_dict(), "model_name": "LunaModel"}, path)
    out = tmp_path / "a.json"
    line = refused(nodule_analysis.main, ["--no-compile",
                                          "--run-validation", "--data-dir", str(luna.parent),
                                          "--seg-model", seg, "--cls-model", str(path),
                                          "--json", str(out)], capsys)
    if broken == "nan weights":                # refused at load, naming the file and tensor
        assert line == (f"error: --cls-model {path}: field 'model_state', entry "
                        "'head_linear.weight' holds NaN or Inf values")
    else:
        assert line.startswith("error: --cls-model: the model gave a probability that is not "
                               "a number on series ")
    assert not out.exists() and not list(tmp_path.glob(".a.tmp-*"))


# ----------------------------------------------------------------------------- classes 7, 9
def test_a_unet_checkpoint_for_the_classifier_is_one_short_line(luna, tiny_models, capsys):
    seg, _, _ = tiny_models
    unet = UNetWrapper(**MODEL_KWARGS)
    torch.save({"model_state": unet.state_dict(), "model_name": "LunaModel"},
               luna.parent / "lies.state")
    line = refused(nodule_analysis.main, ["--no-compile",
                                          "--run-validation", "--data-dir", str(luna.parent),
                                          "--seg-model", seg, "--cls-model",
                                          str(luna.parent / "lies.state")], capsys)
    assert "--cls-model" in line and len(line) < 300


def test_train_seg_resume_with_settings_lacking_a_field(luna, tmp_path, capsys):
    model = UNetWrapper(**MODEL_KWARGS)
    settings = vars(train_seg.parse_args(["--data-dir", str(luna.parent)]))
    del settings["val_cadence"], settings["image_series"]
    path = save_checkpoint(tmp_path / "seg.state", model, torch.optim.Adam(model.parameters()),
                           settings, 1, 16)
    line = refused(train_seg.main, ["--resume", str(path)], capsys)
    assert line == (f"error: --resume {path}: its saved settings lack --image-series, "
                    "--val-cadence (saved by another script or version); start a new run "
                    "instead")


def test_the_analysis_json_is_valid_json(luna, tiny_models, tmp_path, one_torch_thread):
    seg, cls, _ = tiny_models
    out = tmp_path / "a.json"
    run_cli(nodule_analysis.main, ["--no-compile",
                                   sorted(p.stem for p in luna.glob("subset*/*.mhd"))[0],
                                   "--data-dir", str(luna.parent), "--seg-model", seg,
                                   "--cls-model", cls, "--json", str(out)])
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert doc["series"] and doc["thresholds"]["erosion_max_spacing_mm"] == 1.0
