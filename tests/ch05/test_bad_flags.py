"""A flag value a script cannot use is one line naming the flag, exit 2, before any work
(ch01-ch08 scripts; ch07's shared trainer flags are in tests/ch07/test_train_fc.py)."""
import importlib

import pytest

from tests.common.cli import assert_one_error_line, files_under, run_main

CASES = [   # (module, argv, the one line)
    ("ch01_intro.mnist_net", ["--steps", "-1"], "--steps -1: must be at least 0"),
    ("ch01_intro.mnist_net", ["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ("ch01_intro.mnist_net", ["--n-test", "0"], "--n-test 0: must be at least 1"),
    ("ch01_intro.alexnet", ["--batch", "0"], "--batch 0: must be at least 1"),
    ("ch01_intro.classify_resnet", ["--top", "0"], "--top 0: must be between 1 and the 1000"),
    ("ch01_intro.classify_resnet", ["--top", "1001"], "--top 1001: must be between 1"),
    ("ch01_intro.horse2zebra", ["--size", "2"], "--size 2: must be at least 4 pixels"),
    ("ch01_intro.horse2zebra", ["--out", "z.bmp"], "--out z.bmp: use a .jpg or .png"),
    ("ch04_data.video", ["--max-frames", "0"], "--max-frames 0: must be at least 1"),
    ("ch05_learning.autograd_fit", ["--epochs", "0"], "--epochs 0: must be at least 1"),
    ("ch05_learning.grad_descent", ["--epochs", "0"], "--epochs 0: must be at least 1"),
    ("ch05_learning.nn_fit", ["--epochs", "-3"], "--epochs -3: must be at least 1"),
    ("ch05_learning.subclassing", ["--epochs", "0"], "--epochs 0: must be at least 1"),
    ("ch05_learning.nn_linear", ["--val-epochs", "0"], "--val-epochs 0: must be at least 1"),
    ("ch05_learning.optimizers", ["--adam-epochs", "0"], "--adam-epochs 0: must be at least 1"),
    ("ch05_learning.optimizers", ["--val-epochs", "-2"], "--val-epochs -2: must be at least 1"),
    ("ch05_learning.nn_linear", ["--epochs", "0"], "--epochs 0: must be at least 1"),
    ("ch08_convnets.train", ["--epochs", "-1"], "--epochs -1: must be at least 0"),
    ("ch08_convnets.train", ["--n-blocks", "0"], "--n-blocks 0: must be at least 1"),
    ("ch08_convnets.train", ["--n-chans1", "0"], "--n-chans1 0: must be at least 1"),
    ("ch08_convnets.train", ["--l2", "-1"], "--l2 -1.0: must be 0 or more"),
    ("ch08_convnets.train", ["--model", "width", "--load", "book"], "use it with --model net"),
    ("ch08_convnets.compare", ["--n-blocks", "0"], "--n-blocks 0: must be at least 1"),
    ("ch08_convnets.compare", ["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ("ch08_convnets.compare", ["--epoch-size", "0"], "--epoch-size 0: must be at least 1"),
    ("ch08_convnets.train", ["--num-workers", "-1"], "--num-workers -1: must be at least 0"),
    ("ch03_tensors.devices", ["--device", "tpu"], "--device tpu: unknown device; use auto"),
    ("ch03_tensors.devices", ["--device", "meta"], "--device meta: unsupported device"),
]


@pytest.mark.parametrize("module, argv, message", CASES,
                         ids=[f"{m.split('.')[1]} {' '.join(a)}" for m, a, _ in CASES])
def test_a_bad_flag_value_is_one_line_before_any_work(module, argv, message, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    code, err = run_main(main, [*argv, "--data-dir", tmp_path / "data"]
                         if "--data-dir" in _flags(main, capsys) else argv, capsys)
    assert_one_error_line(code, err, message)
    assert files_under(tmp_path) == []                      # nothing created, not even data/


def _flags(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    return capsys.readouterr().out


def test_require_at_least_names_the_flag_and_refuses_nan():
    from common.errors import DataError, require_at_least

    assert require_at_least("--epochs", 3, 1) == 3 and require_at_least("--steps", 0, 0) == 0
    assert require_at_least("--max-frames", None, 1) is None          # an unset optional flag
    with pytest.raises(DataError, match=r"^--epochs 0: must be at least 1$"):
        require_at_least("--epochs", 0, 1)
    with pytest.raises(DataError, match=r"^--rate nan: must be at least 0.5$"):
        require_at_least("--rate", float("nan"), 0.5)
