"""The analysis past one process (sharing.py): shares by voxels, the prefetch, results kept for
a rerun, torchrun runs merged exactly (a broken CT among good ones, a killed process), and two
processes first using the program cache at once."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from ch10_luna.dsets import find_luna
from ch10_luna.model import LunaModel
from ch13_segment import sharing
from ch13_segment.model import UNetWrapper
from ch13_segment.nodule_analysis import main
from common.ct import write_mhd
from common.errors import DataError
from tests.helpers import save_model_state, torchrun_nodes

SCRIPT = "ch13_segment/nodule_analysis.py"
BROKEN = "1.2.3.4.5"                    # a series of 5 slices: too few for the U-Net's context


# ----------------------------------------------------------------------------- shares
def test_share_deals_the_largest_first_onto_the_least_loaded_rank():
    # One CT as large as ten others: by count it would be 6 and 5; by voxels, 1 and 10.
    sizes = [100] + [10] * 10
    assert sharing.share(sizes, 2) == [[0], list(range(1, 11))]
    # Largest first: 9 -> rank 0, 8 -> 1, 7 -> 2, 5 -> 2 (7 < 8), 4 -> 1 (12 vs 8+4), ...
    assert sharing.share([4, 9, 5, 7, 8], 3) == [[1], [0, 4], [2, 3]]
    # Equal sizes: the lowest rank first, whatever order the items come in.
    assert sharing.share([3, 3, 3, 3], 2) == [[0, 2], [1, 3]]


def test_share_gives_every_item_once_and_leaves_extra_ranks_idle():
    assert sharing.share([5, 1], 4) == [[0], [1], [], []]
    assert sharing.share([], 3) == [[], [], []]
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 1000, 50).tolist()
    parts = sharing.share(sizes, 7)
    assert sorted(i for p in parts for i in p) == list(range(50))
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes)          # within one item of even
    assert parts == sharing.share(list(sizes), 7)         # every rank computes the same


def test_header_voxels_reads_the_header_only(tmp_path):
    path = tmp_path / "a.mhd"
    write_mhd(path, np.zeros((7, 5, 3), dtype=np.int16), (0, 0, 0), (1, 1, 1))
    assert sharing.header_voxels(path) == 7 * 5 * 3
    (tmp_path / "a.raw").write_bytes(b"")                 # truncated: it fails when read
    assert sharing.header_voxels(path) == 0


def test_prefetch_keeps_the_order_reads_one_ahead_and_passes_broken_items_on():
    started, lock = [], threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        if i == 2:
            raise DataError(f"item {i} is broken")
        return i * 10

    seen = []
    for item, value, waited, error in sharing.prefetched(range(5), load):
        with lock:
            assert max(started) <= item + 1               # never more than one ahead
        seen.append((item, value, None if error is None else str(error)))
        assert waited >= 0
    assert seen == [(0, 0, None), (1, 10, None), (2, None, "item 2 is broken"), (3, 30, None),
                    (4, 40, None)]


# ----------------------------------------------------------------------------- the runs
def threshold_unet():
    """A one-level U-Net that marks HU > -400 exactly (the centre slice passed through, then
    cut): dozens of candidates per synthetic CT, where a random one marks thousands."""
    seg = UNetWrapper(in_channels=7, n_classes=1, depth=1, wf=1, padding=True, batch_norm=True)
    with torch.no_grad():
        for p in seg.parameters():
            p.zero_()
        for m in seg.modules():
            if isinstance(m, torch.nn.BatchNorm2d):       # the identity
                m.weight.fill_(1.0)
                m.running_var.fill_(1.0)
                m.eps = 0.0
        first, second, last = (m for m in seg.unet.modules() if isinstance(m, torch.nn.Conv2d))
        first.weight[0, 3, 1, 1], first.bias[0] = 1.0, 1000.0        # HU + 1000 >= 0
        second.weight[0, 0, 1, 1] = 1.0
        last.weight[0, 0], last.bias[0] = 0.1, -0.1 * (-400.0 + 1000.0)
    return seg


@pytest.fixture(scope="module")
def data(seg_luna, tmp_path_factory):
    """(data root, seg, cls): the sample's 3 CTs and a broken one, a U-Net and a classifier."""
    root = tmp_path_factory.mktemp("shared")
    luna = root / "luna"
    (luna / "subset0").mkdir(parents=True)
    for path in seg_luna.series.values():
        for f in path.parent.glob(f"{path.stem}.*"):
            (luna / "subset0" / f.name).symlink_to(f)
    write_mhd(luna / "subset0" / f"{BROKEN}.mhd", np.zeros((5, 40, 40), dtype=np.int16),
              (0, 0, 0), (1, 1, 1))
    for name in ("candidates.csv", "annotations.csv", "annotations_with_malignancy.csv"):
        (luna / name).write_bytes((seg_luna.root / name).read_bytes())
    torch.manual_seed(0)
    cls = LunaModel(conv_channels=2)
    with torch.no_grad():                                 # HU near the model's range
        cls.tail_batchnorm.running_mean.fill_(-500.0)
        cls.tail_batchnorm.running_var.fill_(500.0 ** 2)
    return (root, save_model_state(threshold_unet(), root / "seg.state"),
            save_model_state(cls, root / "cls.state"))


def argv(data, out, *extra):
    root, seg, cls = data
    return ["--run-validation", "--include-train", "--data-dir", str(root), "--seg-model", seg,
            "--cls-model", cls, "--no-compile", "--no-png", "--no-volumes", "--outputs",
            str(out / "outputs"), "--json", str(out / "a.json"), "--submission",
            str(out / "a.csv"), *extra]


@pytest.fixture(scope="module")
def alone(data, tmp_path_factory):
    """The one-process run, one thread (as each torchrun process here): (out, result)."""
    out = tmp_path_factory.mktemp("alone")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, main(argv(data, out))
    finally:
        torch.set_num_threads(threads)


def same_run(a, b):
    """Two analyses' JSON, submission and markups equal, bit for bit (the timings aside)."""
    docs = [json.loads((out / "a.json").read_text()) for out in (a, b)]
    for doc in docs:
        for s in doc["series"]:
            del s["timing_s"]
    assert docs[0] == docs[1]
    assert (a / "a.csv").read_bytes() == (b / "a.csv").read_bytes()
    names = sorted(p.name for p in (a / "outputs").iterdir())
    assert names == sorted(p.name for p in (b / "outputs").iterdir() if p.is_file())
    for name in names:
        assert (a / "outputs" / name).read_bytes() == (b / "outputs" / name).read_bytes(), name


def test_alone_a_broken_ct_is_one_line_and_the_others_finish(alone, seg_luna, capsys):
    out, result = alone
    doc = json.loads((out / "a.json").read_text())
    assert [s["series_uid"] for s in doc["series"]] == sorted(seg_luna.series)
    assert doc["missing"] == [{"series_uid": BROKEN, "error": (
        f"series {BROKEN} has 5 slices; the 2-D segmentation needs at least 7 (3 context "
        "slices each side)")}]
    assert list(result["missing"]) == [BROKEN]
    assert sum(len(s["candidates"]) for s in doc["series"]) > 3 * 10     # dozens per CT


def test_two_nodes_merge_what_one_process_finds(alone, data, tmp_path):
    """torchrun --nnodes 2 (c10d rendezvous on 127.0.0.1), one process each."""
    results = torchrun_nodes(SCRIPT, [argv(data, tmp_path)] * 2)
    same_run(alone[0], tmp_path)
    printed = "".join(r.stdout for r in results)
    errors = "".join(r.stderr for r in results)
    assert errors.count("warning: skipped: ") == 1 and f"series {BROKEN} has 5 slices" in errors
    assert "3 CT(s) on cpu x 2 processes in fp32" in printed
    assert f"1 CT(s) could not be read and are left out (said above): {BROKEN}" in printed
    assert printed.count("[rank 0] ") + printed.count("[rank 1] ") == 3   # a line per CT


KILLER = """
import os, signal
from ch13_segment import sharing
from ch13_segment.nodule_analysis import main
from common.errors import run_cli

keep = sharing.keep


def keep_then_die(*args, **kwargs):
    path = keep(*args, **kwargs)
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)            # rank 1's first CT is kept, then lost
    return path


sharing.keep = keep_then_die
run_cli(main)
"""


def test_a_killed_process_is_restarted_and_the_run_resumes(alone, data, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--max-restarts", "1", str(script), *argv(data, tmp_path, "--resume")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    # The restarted processes found rank 1's first CT (and any rank 0 had finished) kept.
    kept = int(run.stdout.split("--resume: ")[1].split(" of the 4 CTs")[0])
    assert 1 <= kept <= 3
    same_run(alone[0], tmp_path)
    assert sorted(p.name for p in (tmp_path / "outputs" / "results").iterdir()) == sorted(
        f"{r['series_uid']}.json" for r in alone[1]["results"])   # no temporary left


def test_resume_skips_what_is_kept_and_redoes_what_is_stale(data, tmp_path, capsys,
                                                            one_torch_thread):
    root, seg, cls = data
    uid = max(find_luna(root / "luna").series)            # a good one
    run = [uid, "--data-dir", str(root), "--seg-model", seg, "--cls-model", cls, "--no-compile",
           "--no-png", "--no-volumes", "--outputs", str(tmp_path), "--resume"]
    first = main(run)
    capsys.readouterr()
    again = main(run)
    assert "--resume: 1 of the 1 CTs were analysed before" in capsys.readouterr().out
    assert again["results"][0]["detections"] == first["results"][0]["detections"]
    assert again["results"][0]["timing"] == first["results"][0]["timing"]   # read back
    main(run + ["--erosion-max-spacing", "inf"])          # other settings: analysed anew
    assert "--resume:" not in capsys.readouterr().out
    (tmp_path / f"{uid}_detections.mrk.json").unlink()    # a file of it gone: analysed anew
    main(run + ["--erosion-max-spacing", "inf"])
    assert "--resume:" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([uid, "--resume"])
    assert "--resume needs --outputs DIR" in capsys.readouterr().err


# ----------------------------------------------------------------------------- program cache
RACER = """
import sys, time
from pathlib import Path
import torch
from ch13_segment.precision import load_or_compile

cache, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(cache.parent / f"ready-{me}").touch()                  # start together: each waits for both
while not (cache.parent / f"ready-{other}").exists():
    time.sleep(0.01)
torch.manual_seed(0)
module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
x = torch.arange(16, dtype=torch.float32).reshape(2, 8)
program = load_or_compile(module, x, cache, "tiny-2x8", module)
with torch.no_grad():
    print("out", program(x).numpy().tobytes().hex())
"""


@pytest.mark.slow                      # two processes, one AOTInductor compilation
def test_two_processes_first_using_the_program_cache_compile_once(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    cache = tmp_path / "programs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    racers = [subprocess.Popen([sys.executable, str(script), str(cache), me, other], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for me, other in (("a", "b"), ("b", "a"))]
    outputs = [r.communicate(timeout=600) for r in racers]
    assert [r.returncode for r in racers] == [0, 0], [e[-1000:] for _, e in outputs]
    printed = [o for o, _ in outputs]
    assert sum(o.count("compiled tiny in") for o in printed) == 1     # one compiled, one waited
    results = [o.split("out ")[1].strip() for o in printed]
    assert results[0] == results[1]
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-2x8.pt2"]   # no temporary, no lock
