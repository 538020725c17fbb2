"""Chapter 15's exercise (section 15.8): a project of your own, with this repository's pieces.

    python ch15_deploy/exercises_ch15.py            # the answer, and which entry points it names

The book leaves 15.1 open ("pick a project that excites you", Kaggle for instance). The answer
here is a path from your own CTs (or images) to a served, exported model through the scripts of
chapters 10-15, each step a command. The script checks that every script it names is in this
checkout and that its --help lists every flag the command uses (each main is called with
--help in this process: nothing else runs), and prints the commands.
"""
import argparse
import contextlib
import importlib
import io
import re
from collections import namedtuple
from pathlib import Path

from common.data import REPO_ROOT
from common.errors import run_cli

# One step of the path: what it is for, the script and the flags its command uses, the command.
Step = namedtuple("Step", "purpose script flags command")
MINE, CT = "/data/mine", "/data/mine/scan.mhd"            # placeholders: your data, one CT
CLS = "runs/ch10/<run>/cls_mine.best.state"
SEG = "runs/ch13/<run>/seg_mine.best.state"
STEPS = (
    Step("see the layout your data must take (LUNA16's: subset*/ MetaImage CTs, candidates.csv, "
         "annotations.csv)", "ch10_luna/synthetic.py", ["--out"],
         "python ch10_luna/synthetic.py --out /tmp/layout/luna"),
    Step("check your converted folder before training", "ch10_luna/check_data.py",
         ["--data-dir"], f"python ch10_luna/check_data.py --data-dir {MINE}"),
    Step("train the candidate classifier on it (chapters 11-12)", "ch10_luna/train_cls.py",
         ["--data-dir", "--augmented", "--epochs"],
         f"python ch10_luna/train_cls.py --data-dir {MINE} --augmented --epochs 10 mine"),
    Step("train the segmentation U-Net (chapter 13)", "ch13_segment/train_seg.py",
         ["--data-dir", "--augmented", "--epochs"],
         f"python ch13_segment/train_seg.py --data-dir {MINE} --augmented --epochs 20 mine"),
    Step("find nodules in one CT of yours, a DICOM folder or a .mhd, with a picture per CT "
         "(chapter 14)", "ch13_segment/nodule_analysis.py",
         ["--ct", "--seg-model", "--cls-model", "--outputs"],
         f"python ch13_segment/nodule_analysis.py --ct {CT} --seg-model {SEG} --cls-model {CLS} "
         "--outputs runs/mine"),
    Step("score your held-out series as LUNA16 scores (FROC, CPM)",
         "ch13_segment/nodule_analysis.py", ["--run-validation", "--data-dir", "--submission"],
         f"python ch13_segment/nodule_analysis.py --run-validation --data-dir {MINE} "
         f"--seg-model {SEG} --cls-model {CLS} --submission runs/mine/submission.csv"),
    Step("serve the classifier over HTTP", "ch15_deploy/flask_server.py", ["--model"],
         f"python ch15_deploy/flask_server.py --model {CLS}"),
    Step("serve it with request batching", "ch15_deploy/batching_server.py",
         ["--cls-model", "--no-image"],
         f"python ch15_deploy/batching_server.py --cls-model {CLS} --no-image"),
    Step("export it for runtimes without Python's PyTorch (ONNX, AOTInductor, phones)",
         "ch15_deploy/export_onnx.py", ["--model"],
         f"python ch15_deploy/export_onnx.py --model {CLS}"),
    Step("", "ch15_deploy/export_aoti.py", ["--model"],
         f"python ch15_deploy/export_aoti.py --model {CLS}"),
    Step("", "ch15_deploy/export_mobile.py", ["--cls-model"],
         f"python ch15_deploy/export_mobile.py --cls-model {CLS}"),
    Step("an image competition instead (a Kaggle one): chapter 8's convnets and loop",
         "ch08_convnets/train.py", ["--model", "--epochs"],
         "python ch08_convnets/train.py --model res --epochs 20"),
)


def help_text(script):
    """What `python <script> --help` prints, from its main called in this process."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        module.main(["--help"])
    return out.getvalue()


def check_steps(root=REPO_ROOT, steps=STEPS):
    """Per step: whether its script exists under `root`, and the flags of its command that the
    script's --help does not list."""
    checked = []
    for s in steps:
        exists = (Path(root) / s.script).is_file()
        listed = help_text(s.script) if exists else ""
        missing = [f for f in s.flags        # whole flags only: --mode is not found in --model
                   if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", listed)]
        checked.append({"step": s, "exists": exists, "missing_flags": missing if exists else []})
    return checked


def exercise_1(root=REPO_ROOT):
    """15.1: the path from your own data to a served model, its entry points checked."""
    checked = check_steps(root)
    return {"steps": checked, "present": sum(c["exists"] and not c["missing_flags"]
                                             for c in checked), "total": len(checked)}


ANSWER = """\
Your own project: the pieces of chapters 10-15 carry over once your data takes LUNA16's form.
  - CTs: convert them to MetaImage (.mhd + .raw; SimpleITK writes it from DICOM) in subset*
    folders, with candidates.csv (centre, class) and annotations.csv (centre, diameter); then
    check_data.py, train_cls.py, train_seg.py and nodule_analysis.py take --data-dir as they
    take LUNA16. Without labels you can still run the trained pipeline on a CT: --ct.
  - What changes with the task: the crop size (ch10_luna/dsets.py CROP_IRC), the classes
    (LunaModel's n_classes, the label in the dataset), the mask rule for segmentation (dsets.py
    build_annotation_mask, a box grown from each centre) if you have outlines instead of centres.
  - Deployment does not change: any checkpoint in the book's dict format is served and exported
    by chapter 15's scripts (--model, or --cls-model where a script also takes other models).
  - Images instead (most Kaggle competitions): chapter 7-8's datasets and loop (ch08_convnets/
    models.py, train.py) are the starting point; the servers' request formats are in wire.py."""


def format_1(a):
    lines = [ANSWER, f"The path, step by step ({a['present']} of {a['total']} entry points "
                     "present with every flag used):"]
    purpose = ""
    for c in a["steps"]:
        s = c["step"]
        if s.purpose and s.purpose != purpose:
            lines.append(f"  {s.purpose}:")
            purpose = s.purpose
        status = ("" if c["exists"] and not c["missing_flags"] else
                  f"   [missing: {s.script}]" if not c["exists"] else
                  f"   [{s.script} defines no {', '.join(c['missing_flags'])}]")
        lines.append(f"      {s.command}{status}")
    lines.append(f"({MINE}, {CT} and the <run> folders stand for your own paths.)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=(1,), metavar="M",
                   help="exercise 15.M (chapter 15 has one: 1)")
    p.parse_args(argv)
    answer = exercise_1()
    print("Exercise 15.1: a project of your own")
    print(format_1(answer))
    return {1: answer}


if __name__ == "__main__":
    run_cli(main)
