"""The one GPU check (issue 13): every `gpu` test and the ch10 / ch13 / ch15 benchmarks on CUDA,
each step under its own timeout and all of them within --budget-s (10 minutes), into ONE JSON
summary. `bash .ci/gpu` sets up the Python and runs this.

    bash .ci/gpu                                   # on a machine with CUDA
    bash .ci/gpu --dry-run                         # the same steps on the CPU, smallest sizes
    bash .ci/gpu --only ch13-analysis,ch15-serving # some steps again

The steps, in this order (one that fails or runs out of time is recorded, and the next runs):
  gpu-tests         python -m pytest -m gpu
  ch10-train        ch10_luna/benchmark.py: training and validation samples/s against the
                    model-only ceilings, fp32 and --amp (balanced, fully augmented)
  ch13-train        ch13_segment/benchmark.py: the same for the U-Net
  ch13-analysis     ch13_segment/benchmark.py --analysis: nodule_analysis seconds per CT
  ch15-serving      ch15_deploy/benchmark.py: batched against unbatched serving
  ch10-train-plain  ch10_luna/benchmark.py --no-augment
  ch10-train-compiled  ch10_luna/benchmark.py --compile: the same through torch.compile
  ch13-train-compiled  ch13_segment/benchmark.py --compile
  ch15-latency      ch15_deploy/latency.py with --device cuda once it takes one; until then it
                    times the CPU only, so the GPU run skips it (the dry run runs it)

The summary (runs/gpu/<time>-gpu.json or -dry-run.json, or --out): the machine (nvidia-smi's GPU
name and memory, torch, CUDA, cuDNN, CPU), the data the steps read, and per step its command,
status (ok, failed, timeout, skipped, not run), seconds, figures (what the script's main
returned, through gpu_step.py) and the last lines of its output. It is rewritten after every
step, so a run cut short still leaves what it measured.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from common.data import REPO_ROOT, data_root
from common.errors import DataError, run_cli
from common.files import output_dir, runs_dir, write_json

STEP_RUNNER = Path(__file__).resolve().parent / "gpu_step.py"
SHARED_DATA = REPO_ROOT.parent / "shared" / "dlwpt-data"      # the book's files, as .ci/run
BUDGET_S = 600                          # the 10 minutes for every step together
MIN_STEP_S = 15                         # a step is not started with less than this left
DRY_TIMEOUT_S = 300                     # per step in the dry run (a busy 2-core CI machine)
TAIL_LINES, TAIL_CHARS = 40, 6000       # of each step's output kept in the summary
OK = ("ok", "skipped")

# Run by the step's Python: what it runs on (JSON on stdout).
PROBE = """import json, os, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    "cuda_available": cuda, "bf16": torch.cuda.is_bf16_supported() if cuda else None,
    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if cuda else [], "python": platform.python_version(), "torch_threads":
    torch.get_num_threads()}))"""


# ----------------------------------------------------------------------------- the plan
def step(name, what, script, args, timeout_s, env="bench"):
    """One step: `script` (a path under the repository, run through gpu_step.py) or None for
    the gpu tests; `env` 'tests' adds the book's data files as .ci/run does."""
    return {"name": name, "what": what, "script": script, "args": [str(a) for a in args],
            "timeout_s": timeout_s, "env": env}


def plan(dry_run, book_models=None, latency_takes_device=False):
    """The steps in the order they run. `book_models`: (seg, cls) checkpoint paths for the
    analysis, or None to let it look under the data root (and say what to download)."""
    dev = ["--device", "cpu" if dry_run else "cuda"]
    t = (lambda gpu_s: DRY_TIMEOUT_S) if dry_run else (lambda gpu_s: gpu_s)
    # GPU sizes: enough batches for the loaders' startup (inside the timed loop) to fade,
    # 4 loader workers of the 16 cores so that reading crops does not cap the GPU.
    ch10 = ([*dev, "--steps", 1, "--batch-size", 2, "--num-workers", 0, "--skip-layout",
             "--crop-reads", 5] if dry_run else
            [*dev, "--steps", 200, "--batch-size", 32, "--num-workers", 4])
    ch13 = ([*dev, "--steps", 1, "--batch-size", 2, "--num-workers", 0, "--val-slices", 2]
            if dry_run else [*dev, "--steps", 100, "--batch-size", 16, "--num-workers", 4])
    models = ["--seg-model", book_models[0], "--cls-model", book_models[1]] if book_models \
        else []
    # int8 is CPU-only (oneDNN): the GPU compares fp32 with bf16, eager and compiled; the dry
    # run keeps to fp32 (bf16 autocast is emulated on CPUs without AVX512-BF16, several times
    # slower, and its path is the fp32 one under autocast), one erosion, one round and eager
    # networks, so the wiring is tested in seconds
    analysis = ([*dev, "--analysis", "--slices", 7, "--batch-size", 4, "--precisions", "fp32",
                 "--erosions", "inf", "--repeats", 1, "--eager-only", *models] if dry_run
                else [*dev, "--analysis", "--slices", 117, 205, "--batch-size", 16,
                      "--precisions", "fp32", "bf16", *models])
    serving = ([*dev, "--seconds", 0.1, "--clients", 1] if dry_run else
               [*dev, "--seconds", 5, "--clients", "1,10,50"])
    latency = ["--models", "cls,unet", "--backends", "eager", "--repeats", 1, "--warmup", 0,
               "--unet-size", 8] if dry_run else []
    if latency_takes_device:
        latency = [*dev, *latency]
    steps = [
        step("gpu-tests", "every test marked gpu", None, ["-m", "gpu"], t(180), env="tests"),
        step("ch10-train", "LunaModel training and validation samples/s against the model-only "
             "ceilings, fp32 and --amp, balanced + fully augmented", "ch10_luna/benchmark.py",
             ch10, t(150)),
        step("ch13-train", "U-Net training samples/s against the model-only ceiling (NCHW and "
             "channels-last), fp32 and --amp; validation ms per slice",
             "ch13_segment/benchmark.py", ch13, t(150)),
        step("ch13-analysis", "nodule_analysis seconds per CT (load, segmentation, grouping, "
             "classification), fp32 and --amp, against the book's code",
             "ch13_segment/benchmark.py", analysis, t(200)),
        step("ch15-serving", "batched against unbatched serving: requests/s and p99 ms at 1, 10 "
             "and 50 clients", "ch15_deploy/benchmark.py", serving, t(150)),
        step("ch10-train-plain", "LunaModel training without augmentation, fp32 and --amp",
             "ch10_luna/benchmark.py", [*ch10, "--no-augment"], t(120)),
        step("ch10-train-compiled", "LunaModel training through torch.compile, fp32 and --amp "
             "(eager: ch10-train)", "ch10_luna/benchmark.py", [*ch10, "--compile"], t(150)),
        step("ch13-train-compiled", "U-Net training through torch.compile, fp32 and --amp "
             "(eager: ch13-train)", "ch13_segment/benchmark.py", [*ch13, "--compile"], t(150)),
        step("ch15-latency", "one request's latency per backend (eager, TorchScript, ONNX "
             "Runtime, AOTInductor)", "ch15_deploy/latency.py", latency, t(150)),
    ]
    if dry_run:              # torch.compile of a training step: minutes on a CPU, for no figure
        for s in steps:
            if s["name"].endswith("-compiled"):
                s["skip"] = ("compiled training is timed on the GPU; on the CPU "
                             "ch13_segment/benchmark.py --networks measures it")
    if not dry_run and not latency_takes_device:
        steps[-1]["skip"] = ("ch15_deploy/latency.py takes no --device (it times the CPU "
                             "only); once it takes --device this step runs it with cuda")
    return steps


def select(steps, only):
    """The steps named in `only` (a list; None: all); an unknown name is a DataError."""
    if not only:
        return steps
    names = [s["name"] for s in steps]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise DataError(f"--only {','.join(unknown)}: no such step; the steps are "
                        f"{','.join(names)}")
    return [s for s in steps if s["name"] in only]


def shown_command(s):
    """What a reader would type for step `s`."""
    if s["script"] is None:
        return " ".join(["python -m pytest", *s["args"], "-q"])
    return " ".join(["python", s["script"], *s["args"]])


# ----------------------------------------------------------------------------- running
def clean_tail(text, lines=TAIL_LINES, chars=TAIL_CHARS):
    """The last `lines` lines of a program's output, progress bars folded (the text after each
    line's last carriage return), blank lines dropped, at most `chars` characters."""
    kept = [line.rstrip().rsplit("\r", 1)[-1] for line in text.split("\n")]  # not splitlines(): \r
    tail = "\n".join([line for line in kept if line.strip()][-lines:])
    return tail[-chars:]


def parse_junit(path):
    """pytest's --junitxml report -> counts, the passed tests, failures with their messages and
    the skip reasons."""
    root = ET.parse(path).getroot()
    passed, failed, skipped = [], [], Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        bad = bad if bad is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            failed.append({"test": name, "message": (bad.get("message") or "")[:500]})
        elif skip is not None:
            skipped[(skip.get("message") or "")[:200]] += 1
        else:
            passed.append(name)
    return {"tests": len(passed) + len(failed) + sum(skipped.values()), "passed": passed,
            "failed": failed, "skipped": sum(skipped.values()), "skip_reasons": dict(skipped)}


def stop_group(process, grace_s=10):
    """End the step's process group (the step and whatever it started: servers, loader
    workers): SIGTERM, then SIGKILL after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def blank_record(s):
    """Step `s`'s record in the summary before it runs (every record has these keys)."""
    return {"name": s["name"], "what": s["what"], "command": shown_command(s),
            "timeout_s": None, "status": None, "returncode": None, "seconds": None,
            "figures": None, "output_tail": "", "error": None}


def run_step(s, python, env, timeout_s, workdir):
    """Run step `s` for at most `timeout_s`; its record for the summary."""
    workdir = Path(workdir)
    log, result = workdir / f"{s['name']}.log", workdir / f"{s['name']}.json"
    if s["script"] is None:
        # A module that cannot be imported here (a package missing) fails alone, not the rest.
        argv = [python, "-m", "pytest", *s["args"], "-q", "-p", "no:cacheprovider",
                "--continue-on-collection-errors", f"--junitxml={result.with_suffix('.xml')}"]
    else:
        module = s["script"].removesuffix(".py").replace("/", ".")
        argv = [python, str(STEP_RUNNER), module, str(result), *s["args"]]
    record = {**blank_record(s), "timeout_s": round(timeout_s)}
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)        # its own group: stop_group
        try:
            record["returncode"] = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            record["status"] = "timeout"
        stop_group(process)                # a timed-out step, and anything a step left behind
    record["seconds"] = round(time.monotonic() - started, 1)
    record["output_tail"] = clean_tail(log.read_text(encoding="utf-8", errors="replace"))
    junit = result.with_suffix(".xml")
    with contextlib.suppress(OSError, ValueError, ET.ParseError):
        record["figures"] = (parse_junit(junit) if s["script"] is None else
                             json.loads(result.read_text(encoding="utf-8")))
    if record["status"] == "timeout":
        record["error"] = f"stopped after {timeout_s:.0f} s (its timeout)"
    elif record["returncode"] == 0:
        record["status"] = "ok"
    else:
        record["status"] = "failed"
        record["error"] = (("no test is marked gpu" if record["returncode"] == 5 and
                            s["script"] is None else f"exit status {record['returncode']}")
                           + ": " + clean_tail(record["output_tail"], lines=8, chars=1500))
    return record


def say_now(text):
    print(text, flush=True)


def run_plan(steps, python, envs, budget_s, workdir, after_step=None, say=say_now):
    """Every step in turn, each within its timeout and what is left of `budget_s`; the records.
    `after_step(records)` runs after each (the summary is rewritten)."""
    started, records = time.monotonic(), []
    for i, s in enumerate(steps, 1):
        left = budget_s - (time.monotonic() - started)
        if s.get("skip") or left < MIN_STEP_S:
            why = s.get("skip") or (f"not started: {max(left, 0):.0f} s of the {budget_s:.0f} s "
                                    "budget left")
            records.append({**blank_record(s), "status": "skipped" if s.get("skip") else
                            "not run", "error": why})
            say(f"[{i}/{len(steps)}] {s['name']}: {records[-1]['status']}: {why}")
        else:
            timeout_s = min(s["timeout_s"], left)
            say(f"[{i}/{len(steps)}] {s['name']}: {shown_command(s)}  (at most {timeout_s:.0f} s)")
            records.append(run_step(s, python, envs[s["env"]], timeout_s, workdir))
            r = records[-1]
            say(f"    {r['status']} in {r['seconds']:.0f} s" + (f": {r['error']}" if r["error"]
                                                                else ""))
            say("    " + "\n    ".join(r["output_tail"].splitlines()[-4:]))
        if after_step is not None:
            after_step(records)
    return records


# ----------------------------------------------------------------------------- the machine
def command_output(argv, timeout_s=120, env=None):
    """(exit status, stdout + stderr) of a short command; (None, why) when it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env,
                              cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    return done.returncode, (done.stdout + done.stderr).strip()


def machine(python, env):
    """What the steps run on: nvidia-smi's GPUs, torch and CUDA as the steps' Python sees them,
    the CPU, and the repository's commit."""
    info = {"nvidia_smi": None, "gpus": [], "cpu": platform.processor() or None,
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": python}
    if shutil.which("nvidia-smi"):
        rc, text = command_output(["nvidia-smi", "--query-gpu=name,memory.total",
                                   "--format=csv"])
        info["nvidia_smi"] = text
        if rc == 0:
            info["gpus"] = [dict(zip(("name", "memory_total"), map(str.strip, row.split(","))))
                            for row in text.splitlines()[1:] if row.strip()]
    else:
        info["nvidia_smi"] = "nvidia-smi: not found"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    rc, text = command_output([python, "-c", PROBE], env=env)
    try:
        info["torch"] = json.loads(text.splitlines()[-1]) if rc == 0 else None
    except (ValueError, IndexError):
        info["torch"] = None
    if info["torch"] is None:
        info["torch_error"] = text[-1500:]
    rc, text = command_output(["git", "rev-parse", "--short", "HEAD"])
    if rc == 0:
        dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])[1]
        info["git"] = text + (" with local changes" if dirty else "")
    return info


def find_book_models(roots):
    """(seg, cls): the book's checkpoints nodule_analysis uses, from the first data root that
    holds both; None when none does (the step then names the download)."""
    try:
        from ch13_segment.model import BOOK_CLS_MODEL, BOOK_SEG_MODEL
    except Exception:                      # whatever it is, the step itself will say it
        return None
    for root in roots:
        seg, cls = Path(root) / BOOK_SEG_MODEL, Path(root) / BOOK_CLS_MODEL
        if seg.is_file() and cls.is_file():
            return str(seg), str(cls)
    return None


def takes_flag(python, script, flag, env):
    """Whether `script --help` lists `flag`."""
    rc, text = command_output([python, script, "--help"], env=env)
    return rc == 0 and flag in text


def environments(base):
    """The steps' environments: 'bench' is this one (a $DLWPT_DATA the user set is the
    benchmarks' data root; without it, data/ in the repository, where the synthetic sample is
    generated once); 'tests' also points DLWPT_DATA and DLWPT_MIRROR at ../shared/dlwpt-data
    when it is there, as .ci/run does (never the benchmarks': they write under their root)."""
    bench = {**base, "PYTHONUNBUFFERED": "1"}
    tests = dict(bench)
    if SHARED_DATA.is_dir():
        tests["DLWPT_DATA"] = tests["DLWPT_MIRROR"] = str(SHARED_DATA.resolve())
    return {"bench": bench, "tests": tests}


def default_out(dry_run):
    stamp = f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}"
    return runs_dir("gpu") / f"{stamp}-{'dry-run' if dry_run else 'gpu'}.json"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="run every step on the CPU at the smallest sizes (no GPU needed)")
    p.add_argument("--out", default=None, help="the summary (default: runs/gpu/<time>-gpu.json)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help="seconds for all steps together (default: %(default)s)")
    p.add_argument("--only", default=None, type=lambda s: [n for n in s.split(",") if n],
                   help="comma-separated step names (default: every step)")
    p.add_argument("--python", default=sys.executable, help="the Python the steps run with")
    p.add_argument("--setup-log", default=None, help=argparse.SUPPRESS)   # from .ci/gpu
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        raise DataError(f"--budget-s {args.budget_s:g}: must be more than 0")
    select(plan(args.dry_run), args.only)             # an unknown name: before any work
    out = Path(args.out) if args.out else default_out(args.dry_run)
    if out.is_dir():
        raise DataError(f"--out {out}: a folder, not a file")
    envs = environments(os.environ)
    info = machine(args.python, envs["bench"])
    torch_info = info.get("torch") or {}
    if not args.dry_run and not torch_info.get("cuda_available"):
        raise DataError(
            f".ci/gpu: no CUDA: {args.python} " + (
                f"has torch {torch_info['torch']} (CUDA build: "
                f"{torch_info['cuda'] or 'none, a CPU build'}) and sees no GPU"
                if torch_info else "cannot import torch") + "; --dry-run runs the same steps "
            "on the CPU")
    output_dir(out.parent, "--out folder")
    bench_root = data_root()
    models = find_book_models([bench_root, SHARED_DATA])
    steps = select(plan(args.dry_run, models, takes_flag(
        args.python, "ch15_deploy/latency.py", "--device", envs["bench"])), args.only)
    summary = {"kind": "dry-run" if args.dry_run else "gpu",
               "started": f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}",
               "finished": False, "seconds": None, "budget_s": args.budget_s, "machine": info,
               "data": {"benchmarks": str(bench_root), "tests": envs["tests"].get("DLWPT_DATA"),
                        "book_models": list(models) if models else None},
               "setup": None, "ok": None, "steps": []}
    if args.setup_log:
        with contextlib.suppress(OSError):
            summary["setup"] = clean_tail(Path(args.setup_log).read_text(errors="replace")) \
                or None                                    # None: .venv was there already
    print(f".ci/gpu{' --dry-run' if args.dry_run else ''}: {len(steps)} steps within "
          f"{args.budget_s:.0f} s on {', '.join(torch_info.get('gpus') or ['the CPU'])}; "
          f"torch {torch_info.get('torch')}, CUDA {torch_info.get('cuda')}")
    started = time.monotonic()

    def save(records):
        summary["steps"] = records
        summary["seconds"] = round(time.monotonic() - started, 1)
        write_json(out, summary, "--out")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        records = run_plan(steps, args.python, envs, args.budget_s, workdir, after_step=save)
    summary["finished"] = True
    summary["ok"] = all(r["status"] in OK for r in records)
    save(records)
    counts = Counter(r["status"] for r in records)
    print(f"\n{len(records)} steps in {summary['seconds']:.0f} s: " + ", ".join(
        f"{n} {status}" for status, n in counts.items()))
    for r in records:
        print(f"  {r['status']:8s} {r['name']:17s} " + (f"{r['seconds']:6.0f} s"
                                                        if r["seconds"] is not None else ""))
    print(f"summary: {out}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if run_cli(main)["ok"] else 1)      # 1: a step failed; 2: bad input, no CUDA
