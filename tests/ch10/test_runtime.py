"""ch10_luna/runtime.py and the trainers' use of it: mixed precision with its grad scaler,
memory formats, and the augmentation's random draws staying on the host."""
import contextlib
import warnings

import pytest
import torch

from ch10_luna import runtime
from ch10_luna.augment import BOOK_AUGMENTATION, augment_batch
from ch10_luna.runtime import Amp, memory_format, mixed_precision


def test_fp16_where_bf16_is_missing_comes_with_a_grad_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                # no CUDA here: the scaler disables itself
        amp = mixed_precision(torch.device("cuda"), True)
    assert amp.dtype == torch.float16 and isinstance(amp.scaler, torch.amp.GradScaler)
    assert mixed_precision("cpu", True).scaler is None                 # bf16 needs none
    assert mixed_precision("cpu", True).dtype == torch.bfloat16
    off = mixed_precision("cpu", False)
    assert (off.scaler, off.dtype) == (None, torch.float32)
    assert isinstance(off.context, contextlib.nullcontext)


def test_memory_formats_follow_the_device_and_the_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert memory_format(cpu, False) == torch.channels_last_3d
    assert memory_format(cpu, False, 2) == torch.channels_last
    assert memory_format(cuda, False, 2) == torch.contiguous_format
    assert memory_format(cuda, True, 2) == torch.channels_last


class CountingScaler(torch.amp.GradScaler):
    """A CPU GradScaler that counts its steps."""

    def __init__(self):
        super().__init__("cpu")
        self.steps = 0

    def step(self, optimizer, *args, **kwargs):
        self.steps += 1
        return super().step(optimizer, *args, **kwargs)


def test_train_malignancy_steps_through_the_grad_scaler_fp16_needs(monkeypatch, tmp_path):
    """The bug: train_malignancy --amp on a GPU without bf16 trained fp16 without a scaler."""
    from ch10_luna.synthetic import generate_sample
    from ch13_segment import train_malignancy

    folder = generate_sample(tmp_path / "luna", n_series=4, seed=5, n_subsets=2,
                             negatives=(10, 15), progress=False)
    scaler = CountingScaler()
    fp16 = Amp(contextlib.nullcontext(), scaler, torch.float16)   # as mixed_precision on such a GPU
    monkeypatch.setattr(train_malignancy, "mixed_precision", lambda device, enabled: fp16)
    train_malignancy.main(["--data-dir", str(folder.parent), "--val-stride", "4",
                           "--batch-size", "4", "--epoch-size", "8", "--amp", "--run-dir",
                           str(tmp_path / "run")])
    assert scaler.steps == 2                                       # 8 samples, batches of 4


@pytest.mark.gpu
def test_augmentation_does_not_wait_for_the_gpu(cuda):
    x = torch.randn(8, 1, 32, 48, 48, device=cuda) * 300
    generator = torch.Generator(device=cuda).manual_seed(3)
    augment_batch(x, BOOK_AUGMENTATION, generator)                 # warm-up: pins, allocates
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment_batch(x, BOOK_AUGMENTATION, generator.manual_seed(4))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_describe_names_the_processes_and_the_precision():
    proc = runtime.Proc(torch.device("cpu"), 0, 2, print)
    assert runtime.describe(proc, mixed_precision("cpu", True)) == (
        "device cpu x 2 processes; amp (bfloat16)")
    assert runtime.describe(proc._replace(world=1), mixed_precision("cpu", False)) == "device cpu"
