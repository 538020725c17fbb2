"""Chapter 15: the models the servers serve, loaded and tried once before the server listens.

The classifier comes from the book's checkpoint (classifier.py), seeded random weights, or a
TorchScript / torch.export program; the CycleGAN generator from the book's weights, random
ones, or a program. Each is run at start-up on the input it will be served: the example crop
(the book's, or its HU-like stand-in) for the classifier, a grey image for the generator. A
model that cannot take that input, or answers NaN or Inf, is refused in one line naming its
file; a program that runs one sample but not two (exported with a fixed batch) is served one
request at a time.
"""
import math

import torch

from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.weights import HORSE2ZEBRA_PTH, resolve_weights
from ch15_deploy.classifier import BOOK_CHECKPOINT, example_crop, load_classifier, prepare
from ch15_deploy.model_files import load_program, load_weights
from common.data import book_file, data_root
from common.errors import DataError, one_line

GREY_SIDE = 32          # the eager generator's start-up input: 3 x 32 x 32 of 0.5


def finite(answers):
    """True when every answer (floats, or tensors) is a finite number."""
    if isinstance(answers, torch.Tensor):
        return bool(torch.isfinite(answers).all())
    return all(finite(a) if isinstance(a, (torch.Tensor, list, tuple)) else math.isfinite(a)
               for a in answers)


def try_model(model, forward, batch, where):
    """forward(model, batch) once; a DataError naming `where` when it raises or is not finite."""
    try:
        answers = forward(model, batch)
    except Exception as e:                           # whatever the model or program raises
        raise DataError(f"{where}: cannot run a {list(batch.shape)} input "
                        f"({type(e).__name__}: {one_line(e, 100)})") from None
    if not finite(answers):
        raise DataError(f"{where}: the model's output on the example input is not finite "
                        "(NaN or Inf): broken weights?")
    return answers


def batch_limit(model, forward, sample, max_batch_size, where, announce):
    """The largest batch an exported program serves: max_batch_size if it runs two samples,
    else 1 (said once through `announce`)."""
    if max_batch_size < 2:
        return max_batch_size
    try:
        forward(model, torch.stack([sample, sample]))
        return max_batch_size
    except Exception as e:                           # whatever the program raises
        announce(f"note: {where} runs one sample but not two ({type(e).__name__}); "
                 "that route serves one request at a time")
        return 1


def load_cls_model(forward, path=None, jit=None, exported=None, random_weights=False,
                   data_dir=None, device="cpu", max_batch_size=16, announce=print,
                   flag="--cls-model", channels_last=True, compiled=False):
    """(classifier ready to serve, the batch size it takes): a checkpoint (`flag`), random, or a
    program, tried on the example crop through forward(model, crops); with `compiled`, an eager
    one compiled ahead of time (precision.prepare, any batch size), kept under the data root."""
    crop, _ = example_crop(data_dir)
    program = jit or exported
    if program:
        where = f"{'--jit' if jit else '--exported'} {program}"
        model = load_program(program, jit=bool(jit), flag=where.split()[0]).to(device)
        try_model(model, forward, crop.unsqueeze(0), where)
        return model, batch_limit(model, forward, crop, max_batch_size, where, announce)
    if random_weights and not path:
        model, where = load_classifier(random_weights=True, device=device), "--random-weights"
    else:
        path = path or book_file(BOOK_CHECKPOINT, data_dir, name="luna-models")
        model, where = load_classifier(path, device=device, flag=flag), f"{flag} {path}"
    model = prepare(model, channels_last=channels_last)
    if compiled:
        from ch13_segment import precision

        model = precision.prepare(model, "fp32", batch_size=None, compiled=True,
                                  cache_dir=data_root(data_dir) / "cache" / "programs")
        model.device = torch.device(device)              # where prob_nodule sends the crops
    try_model(model, forward, crop.unsqueeze(0), where)
    return model, max_batch_size


def load_image_model(forward, weights=None, jit=None, exported=None, random_weights=False,
                     data_dir=None, device="cpu", image_size=228, max_batch_size=16,
                     announce=print):
    """(generator ready to serve, the batch size it takes): the book's weights, random, or a
    TorchScript / torch.export program (tried at --image-size)."""
    program = jit or exported
    if program:
        where = f"{'--cyclegan-jit' if jit else '--cyclegan-exported'} {program}"
        model = load_program(program, jit=bool(jit), flag=where.split()[0]).to(device)
        sample = torch.full((3, image_size, image_size), 0.5)
        try_model(model, forward, sample.unsqueeze(0), where)
        return model, batch_limit(model, forward, sample, max_batch_size, where, announce)
    path = resolve_weights(weights, random_weights and not weights, HORSE2ZEBRA_PTH,
                           "horse2zebra", data_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = ResNetGenerator()
    where = f"--cyclegan-weights {path}"
    if path is not None:
        load_weights(generator, path, "--cyclegan-weights")
        for name, tensor in generator.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise DataError(f"{where}: tensor {name!r} holds NaN or Inf values")
    generator = generator.to(device).eval().requires_grad_(False)
    try_model(generator, forward, torch.full((1, 3, GREY_SIDE, GREY_SIDE), 0.5),
              where if path is not None else "--random-weights")
    return generator, max_batch_size
