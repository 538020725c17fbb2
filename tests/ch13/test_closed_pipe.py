"""A reader that stops reading stdout (`evaluate_luna.py ... | head -1`) does not stop the run:
the submission CSV its flags ask for is still written, whole."""
import os
import subprocess
import sys

from common.data import REPO_ROOT
from tests.ch13.test_evaluate_luna import case, flags  # noqa: F401 (case: the fixture)

SCRIPT = str(REPO_ROOT / "ch13_segment" / "evaluate_luna.py")


def test_the_submission_csv_is_written_after_the_reader_went_away(case, tmp_path):  # noqa: F811
    argv = [sys.executable, SCRIPT, str(case / "analysis.json"), *flags(case)]
    whole = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = (case / "out" / "analysis_submission.csv").read_bytes()
    (case / "out" / "analysis_submission.csv").unlink()
    # Unbuffered, as on a terminal: each line is written when printed, so the lines after the
    # first meet a closed pipe (the figure takes long enough for the reader to be gone).
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    first = process.stdout.readline()
    process.stdout.close()                                  # `head -1` exits
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0, err[-2000:]
    assert first.startswith("CPM 0.380952 ")
    assert err == ""
    assert (case / "out" / "analysis_submission.csv").read_bytes() == expected
    assert (case / "out" / "froc_analysis.png").is_file()
