"""Chapter 3's exercises: layouts predicted by rule equal torch's; math on integer tensors."""
import math
import random

import pytest
import torch

from ch03_tensors import exercises_ch03 as ex
from tests.common.cli import assert_one_error_line, run_main


def test_contiguous_strides_are_torchs():
    for shape in [(9,), (3, 3), (2, 3, 4), (5, 1, 7), (1,)]:
        assert ex.contiguous_strides(shape) == torch.empty(shape).stride()


def test_predicted_slices_match_torch_on_random_slicings():
    rng = random.Random(0)
    for _ in range(200):
        shape = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3)))
        t = torch.arange(math.prod(shape)).view(shape)
        slices = tuple(slice(rng.randint(0, n), rng.choice([None, rng.randint(0, n)]),
                             rng.randint(1, 3)) for n in shape)
        view = t[slices]
        predicted = ex.predict_slice(shape, 0, t.stride(), slices)
        assert predicted == (tuple(view.shape), view.storage_offset(), view.stride()), slices


def test_exercise_1_predictions_and_shared_storage():
    answer = ex.exercise_1()
    rows = answer["rows"]
    assert all(row["match"] for row in rows.values())
    assert rows["c"]["measured"] == ((2, 2), 4, (3, 1)) and not rows["c"]["contiguous"]
    assert rows["b"]["shares_a_storage"] and rows["c"]["shares_a_storage"]
    assert answer["c_bytes_from_a"] == 4 * answer["element_size"] == 32
    assert answer["after_edit"] == {"a": [0, 1, 2, 3, 100, 5, 6, 7, 8], "c": [[100, 5], [7, 8]]}


def test_exercise_2_promotes_out_of_place_and_refuses_integers_in_place():
    answer = ex.exercise_2()
    for name, f in answer["functions"].items():
        assert f["out_dtype"] == torch.get_default_dtype() == torch.float32
        expected = [getattr(math, name)(i) for i in range(9)]
        assert f["out"] == pytest.approx(expected, abs=1e-6)
        assert f["float_in_place"] == pytest.approx(expected, abs=1e-6) and f["matches_math"]
        assert "Long" in f["in_place_error"]
        assert f["float_same_object"] and f["float_same_storage"]


def test_exercise_2_follows_the_default_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        answer = ex.exercise_2()
    finally:
        torch.set_default_dtype(old)
    assert answer["default_dtype"] == torch.float64
    assert {f["out_dtype"] for f in answer["functions"].values()} == {torch.float64}


def test_math_on_a_float_tensor_raises_nothing():
    out, error = ex.math_on(torch.arange(4.0), "cos")
    assert error is None and out.dtype == torch.float32


def test_main_answers_both(capsys):
    answers = ex.main([])
    out = capsys.readouterr().out
    assert sorted(answers) == [1, 2]
    for label in ("Exercise 3.1", "predicted (rules)", "a. what does view do?",
                  "b. c: size (2, 2), offset 4, stride (3, 1)", "Exercise 3.2",
                  "sqrt_vml_cpu not implemented for 'Long'", "b. what makes it work",
                  "c. in place: a.cos_()"):
        assert label in out


def test_a_bad_exercise_number_is_one_line(capsys):
    code, err = run_main(ex.main, ["--exercise", "5"], capsys)
    assert_one_error_line(code, err, "--exercise", "invalid choice: 5")
