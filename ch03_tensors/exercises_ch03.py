"""Chapter 3 exercises (book section 3.14): size, offset and stride; math on an integer tensor.

    python ch03_tensors/exercises_ch03.py                # 3.1 and 3.2
    python ch03_tensors/exercises_ch03.py --exercise 1

3.1: `a = torch.tensor(list(range(9)))`, `b = a.view(3, 3)`, `c = b[1:, 1:]` (storage_views.py's
exercise_views): each layout predicted from the rules (a view of a contiguous tensor gets
row-major strides; a slice moves the offset by start x stride) and printed beside the measured
one, and the storage they share. 3.2: `torch.sqrt` and `torch.cos` on `a`: the error the book
expects, what torch does today, the float dtype that makes it work, and the in-place versions.
"""
import argparse
import math

import torch

from ch03_tensors.dtypes import sqrt_of_integers
from ch03_tensors.storage_views import exercise_views, layout, storage_ptr
from common.errors import run_cli

EXERCISES = (1, 2)
# What torch 1.x printed for torch.sqrt / torch.cos of an int64 tensor on the CPU, as readers of
# the first edition saw it: integer tensors had no sqrt or cos kernel then.
BOOK_ERRORS = {"sqrt": "sqrt_vml_cpu not implemented for 'Long'",
               "cos": "cos_vml_cpu not implemented for 'Long'"}


def contiguous_strides(shape):
    """Row-major strides of `shape`: the last dimension 1, each other the product of those after."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def predict_slice(size, offset, stride, slices):
    """(size, offset, stride) after basic slicing with one slice per leading dimension (steps
    >= 1): the offset moves by start x stride, each size is the slice's length, each stride is
    multiplied by the step; the storage is not touched."""
    new_size, new_stride = list(size), list(stride)
    for dim, s in enumerate(slices):
        start, stop, step = s.indices(size[dim])
        offset += start * stride[dim]
        new_size[dim] = len(range(start, stop, step))
        new_stride[dim] = stride[dim] * step
    return tuple(new_size), offset, tuple(new_stride)


def exercise_1():
    """3.1: predicted and measured layouts of a, b and c, and the storage they share."""
    a, b, c = exercise_views()
    predicted_a = ((a.numel(),), 0, contiguous_strides((a.numel(),)))  # a fresh tensor
    predicted_b = ((3, 3), 0, contiguous_strides((3, 3)))      # a view keeps a's storage and offset
    predicted_c = predict_slice(*predicted_b, (slice(1, None), slice(1, None)))
    rows = {}
    for name, t, predicted in (("a", a, predicted_a), ("b", b, predicted_b),
                               ("c", c, predicted_c)):
        measured = layout(t)
        rows[name] = {"predicted": predicted,
                      "measured": (measured["size"], measured["offset"], measured["stride"]),
                      "contiguous": measured["contiguous"],
                      "shares_a_storage": storage_ptr(t) == storage_ptr(a)}
        rows[name]["match"] = rows[name]["predicted"] == rows[name]["measured"]
    b[1, 1] = 100                                  # one storage: the edit shows in a and c
    return {"rows": rows, "after_edit": {"a": a.tolist(), "c": c.tolist()},
            "c_bytes_from_a": c.data_ptr() - a.data_ptr(), "element_size": a.element_size()}


def math_on(a, name):
    """`torch.<name>(a)` out of place, then `a.<name>_()` on a copy: (result, in-place error)."""
    out = getattr(torch, name)(a)
    try:
        getattr(a.clone(), f"{name}_")()
    except RuntimeError as e:
        return out, str(e)
    return out, None


def exercise_2():
    """3.2: sqrt and cos of the int64 0..8, out of place and in place, and of a float copy."""
    a = torch.tensor(list(range(9)))
    answer = {"dtype": a.dtype, "default_dtype": torch.get_default_dtype(), "functions": {}}
    for name in ("sqrt", "cos"):
        if name == "sqrt":
            out, in_place_error = sqrt_of_integers()     # chapter 3's own check, dtypes.py
        else:
            out, in_place_error = math_on(a, name)
        f = a.float()
        before = f.data_ptr()
        returned = getattr(f, f"{name}_")()              # float: in place works
        answer["functions"][name] = {
            "out_dtype": out.dtype, "out": out.tolist(), "in_place_error": in_place_error,
            "float_in_place": f.tolist(),
            "float_same_object": returned is f, "float_same_storage": f.data_ptr() == before,
            "matches_math": all(math.isclose(v, getattr(math, name)(i), abs_tol=1e-6)
                                for i, v in enumerate(f.tolist())),
            "book_error": BOOK_ERRORS[name]}
    return answer


def fmt_layout(size, offset, stride):
    return f"size {size}, offset {offset}, stride {stride}"


def print_exercise_1(a):
    print("Exercise 3.1: a = torch.tensor(list(range(9))); b = a.view(3, 3); c = b[1:, 1:]")
    print(f"  {'':4}{'predicted (rules)':<42}{'measured':<42}right?")
    for name, row in a["rows"].items():
        print(f"  {name:4}{fmt_layout(*row['predicted']):<42}{fmt_layout(*row['measured']):<42}"
              f"{'yes' if row['match'] else 'NO'}")
    rows = a["rows"]
    print("  a. what does view do?   a new size and stride over the same storage, nothing copied:"
          f" b shares a's storage: {rows['b']['shares_a_storage']}; c too: "
          f"{rows['c']['shares_a_storage']} (c starts {a['c_bytes_from_a']} bytes = offset "
          f"{rows['c']['measured'][1]} x {a['element_size']} bytes into it)")
    print(f"     b[1, 1] = 100 -> a = {a['after_edit']['a']}, c = {a['after_edit']['c']}")
    print(f"  b. c: {fmt_layout(*rows['c']['measured'])}; contiguous: "
          f"{rows['c']['contiguous']} (rows 3 apart in storage, 2 long)")


def print_exercise_2(a):
    print(f"Exercise 3.2: sqrt and cos of a ({a['dtype']}, 0..8)")
    for name, f in a["functions"].items():
        print(f"  torch.{name}(a):")
        print(f"    a. the error the book expects: RuntimeError: {f['book_error']} (torch 1.x had "
              f"no integer kernel); torch {torch.__version__} promotes instead: {f['out_dtype']} "
              f"(the default float dtype, {a['default_dtype']}), no error")
        print(f"    b. what makes it work: a float dtype: a.float() (or dtype=torch.float64); "
              f"{name} of a.float() agrees with math.{name}: {f['matches_math']}")
        in_place = ("works" if f["in_place_error"] is None
                    else f"RuntimeError: {f['in_place_error']}")
        print(f"    c. in place: a.{name}_() on the int64 a: {in_place}; on a float tensor: "
              f"returns itself {f['float_same_object']}, same storage "
              f"{f['float_same_storage']}: the result must fit the tensor's own dtype")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="exercise number, repeatable (default: all)")
    args = p.parse_args(argv)
    answers = {}
    for number in sorted(set(args.exercise or EXERCISES)):
        answers[number] = exercise_1() if number == 1 else exercise_2()
        (print_exercise_1 if number == 1 else print_exercise_2)(answers[number])
    return answers


if __name__ == "__main__":
    run_cli(main)
