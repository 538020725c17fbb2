"""exercises_ch15.py: the commands of 15.1's answer exist with their flags; main and a bad flag."""
from ch15_deploy import exercises_ch15 as ex
from tests.common.cli import assert_one_error_line, run_main


def test_every_command_of_the_answer_runs_a_script_that_takes_its_flags():
    checked = ex.check_steps()
    assert [c["step"].script for c in checked if not c["exists"]] == []
    assert {c["step"].script: c["missing_flags"] for c in checked if c["missing_flags"]} == {}
    for step in ex.STEPS:                                     # the command uses what is checked
        assert step.command.startswith(f"python {step.script} ")
        assert all(flag in step.command.split() for flag in step.flags), step.command


def test_a_missing_script_or_flag_is_reported(tmp_path):
    (tmp_path / "ch15_deploy").mkdir()
    (tmp_path / "ch15_deploy" / "export_onnx.py").write_text("")
    steps = [ex.Step("gone", "ch15_deploy/no_such_script.py", ["--model"], "python ..."),
             ex.Step("onnx", "ch15_deploy/export_onnx.py", ["--model", "--mode", "--no-flag"],
                     "python ...")]
    gone, onnx = ex.check_steps(tmp_path, steps)
    assert (gone["exists"], gone["missing_flags"]) == (False, [])
    assert (onnx["exists"], onnx["missing_flags"]) == (True, ["--mode", "--no-flag"])
    text = ex.format_1({"steps": [gone, onnx], "present": 0, "total": 2})
    assert "[missing: ch15_deploy/no_such_script.py]" in text
    assert "[ch15_deploy/export_onnx.py defines no --mode, --no-flag]" in text


def test_main_prints_the_answer_and_its_commands(capsys):
    answers = ex.main([])
    out = capsys.readouterr().out
    assert list(answers) == [1]
    assert answers[1]["present"] == answers[1]["total"] == len(ex.STEPS)
    for words in ("Exercise 15.1", "nodule_analysis.py --ct", "flask_server.py --model",
                  "export_onnx.py --model", f"{len(ex.STEPS)} of {len(ex.STEPS)} entry points"):
        assert words in out, words


def test_a_bad_exercise_number_is_one_line(capsys):
    code, err = run_main(ex.main, ["--exercise", "2"], capsys)
    assert_one_error_line(code, err, "--exercise", "invalid choice: 2")
