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
    asked = []                                         # GradScaler(device, enabled) as asked

    class RecordingScaler(torch.amp.GradScaler):
        def __init__(self, device="cuda", enabled=True, **kwargs):
            asked.append((device, enabled))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")        # no CUDA here: it disables itself
                super().__init__(device, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                # nor autocast on CUDA
        amp = mixed_precision(torch.device("cuda"), True)
    assert amp.dtype == torch.float16 and asked[-1] == ("cuda", True)
    bf16 = mixed_precision("cpu", True)                                 # bf16 needs none:
    assert bf16.dtype == torch.bfloat16 and asked[-1] == ("cpu", False)  # a pass-through one
    off = mixed_precision("cpu", False)
    assert off.dtype == torch.float32 and not off.scaler.is_enabled()
    assert isinstance(off.context, contextlib.nullcontext)


def test_a_disabled_scaler_is_plain_backward_and_step():
    torch.manual_seed(0)
    results = []
    for use_scaler in (False, True):
        model = torch.nn.Linear(3, 1)
        model.load_state_dict({"weight": torch.ones(1, 3), "bias": torch.zeros(1)})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(torch.arange(6.0).reshape(2, 3)).square().mean()
        if use_scaler:
            scaler = mixed_precision("cpu", False).scaler
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        results.append(model.weight.detach().clone())
    assert torch.equal(results[0], results[1])


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
