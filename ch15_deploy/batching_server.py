"""Chapter 15: a request-batching model server with aiohttp and asyncio (book 15.4, 15.8).

    python ch15_deploy/batching_server.py --random-weights          # 127.0.0.1:8000
    python ch15_deploy/load_test.py --concurrency 10 --seconds 5    # in a second shell
    curl -X POST --data-binary @horse.jpg http://127.0.0.1:8000/image -o zebra.jpg

Two routes, each with its own queue and model runner:
- POST /predict: the classifier, exactly as flask_server.py takes it (wire.py: the book's
  multipart form with `meta` and `blob`, or raw float32 bytes with an X-Shape header) ->
  {"prob_malignant": p, "prob_nodule": p}; p is P(nodule) (see flask_server.py for the
  book's misleading name).
- POST or PUT /image: a JPEG or PNG (at most --max-image-bytes, 4 MiB as the book's 2**22, and
  12.6 megapixels, read from the file's header before anything is decoded: more is a 413)
  -> the CycleGAN's answer as a JPEG. Every image is resized to a fixed
  --image-size x --image-size square (228, the book's size; the aspect ratio is not kept, unlike
  horse2zebra.py, which keeps it) so that images from different clients stack into one batch.
- GET /stats: per route, requests and batches run so far, batches that failed as a batch,
  and the queue length.

How a request travels: the handler reads and checks the body (4xx with a JSON message if
anything is wrong), then puts the tensor and a future into its route's bounded asyncio.Queue (a
full queue answers 503 with Retry-After). The route's runner task takes the first waiting
request, then whatever else arrives within --max-wait-ms of it, up to --max-batch-size, and
runs one batched forward in a single-thread executor, off the event loop, so the server keeps
reading requests meanwhile. Each future then gets its own answer; a batch whose forward fails
is answered one request at a time, and the next one is batched again. A request not answered within
--timeout-s gets 504 (and is skipped if it was still queued). On Ctrl-C the server stops
accepting connections, answers 503 to requests that arrive on open connections, and answers
everything already queued before it exits.

The book wrote this with Sanic, a hand-made lock/event pair and MAX_QUEUE_SIZE 3,
MAX_BATCH_SIZE 2, MAX_WAIT 1 s; here aiohttp (Sanic's API of 2020 no longer runs), an
asyncio.Queue, and defaults for a CPU (16 per batch, 10 ms). `--max-batch-size 1` turns
batching off, for comparison (benchmark.py).

Models: the classifier from --cls-model (the book's checkpoint dict, weights_only=True; default
the book's file under the data root) or --random-weights; the generator from --cyclegan-weights
(default the book's horse2zebra_0.4.0.pth) or random with --random-weights; --no-image serves
the classifier only. `--jit FILE` / `--exported FILE` serve a TorchScript file (torch.jit.load)
or a torch.export .pt2 (torch.export.load(...).module()) in place of the eager classifier,
`--cyclegan-jit` / `--cyclegan-exported` in place of the generator (book 15.8); such a program
is run once on one sample and once on two at start-up: one that cannot take the route's input
is refused in one line, one with a fixed batch of 1 is served one request at a time. Nothing a
client sends is unpickled: crops are read as float32 bytes, images decoded by Pillow.
"""
import argparse
import asyncio
import io
import struct
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import aiohttp
import numpy as np
import torch
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image

from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.horse2zebra import to_image
from ch01_intro.preprocess import to_chw
from ch01_intro.weights import HORSE2ZEBRA_PTH, resolve_weights
from ch15_deploy.classifier import load_classifier, model_device, prepare, prob_nodule
from ch15_deploy.flags import at_least, server_arguments
from ch15_deploy.model_files import load_program, load_weights, probe
from ch15_deploy.wire import (
    CROP_SHAPE,
    DTYPE,
    LOOPBACK,
    MAX_BYTES,
    decode_crop,
    parse_form_parts,
    parse_shape_header,
    quoted,
)
from common.data import add_data_dir_argument
from common.device import add_device_argument, pick_device
from common.errors import DataError, run_cli

MAX_IMAGE_BYTES = 1 << 22           # the book's cap on an uploaded image (4 MiB)
MAX_PIXELS = 4096 * 3072            # larger images are refused from their header, undecoded
IMAGE_SIZE = 228                    # the book's 228 x 228; a multiple of 4 for the generator
MAX_BATCH_SIZE = 16
MAX_WAIT_MS = 10.0
MAX_QUEUE = 64
TIMEOUT_S = 30.0
RETRY_AFTER_S = 1
CHUNK = 1 << 16
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

BATCHERS = web.AppKey("batchers", dict)        # route name -> batcher dict (below)
SETTINGS = web.AppKey("settings", dict)


def new_batcher(forward, max_batch_size, max_wait_ms, max_queue):
    """The state of one route's batching: its model call, limits, queue and counters.

    `forward(batch)` runs in the executor thread and returns one answer per sample. The queue
    and the runner task are made at startup, inside the event loop.
    """
    return {"forward": forward, "max_batch_size": max_batch_size,
            "max_wait_s": max_wait_ms / 1000, "max_queue": max_queue, "queue": None,
            "task": None, "closing": False, "requests": 0, "batches": 0, "failed_batches": 0}


async def submit(batcher, x, timeout_s):
    """Queue one sample and wait for its answer; QueueFull -> 503, TimeoutError -> 504."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    batcher["queue"].put_nowait((x, future, loop.time()))
    # wait_for cancels the future on timeout (or when the client goes away and aiohttp cancels
    # the handler): the runner skips cancelled futures that are still queued.
    return await asyncio.wait_for(future, timeout_s)


async def next_batch(batcher):
    """The first queued item, then whatever else comes within max_wait of its arrival."""
    loop, queue = asyncio.get_running_loop(), batcher["queue"]
    items = [await queue.get()]
    deadline = items[0][2] + batcher["max_wait_s"]   # counted from when the first one arrived
    while len(items) < batcher["max_batch_size"]:
        if not queue.empty():
            items.append(queue.get_nowait())
            continue
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            items.append(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            break
    return items


async def run_batches(batcher, executor):
    """The runner task of one route: batch, forward in the executor, answer; forever."""
    while True:
        taken = await next_batch(batcher)
        try:
            await answer_batch(batcher, executor, [it for it in taken if not it[1].done()])
        finally:
            for _ in taken:                      # queue.join() at shutdown waits for these
                batcher["queue"].task_done()


async def answer_batch(batcher, executor, items):
    """One forward for the items' samples; each future gets its answer (or the exception)."""
    if not items:
        return
    loop = asyncio.get_running_loop()
    batch = torch.stack([x for x, _, _ in items])
    try:
        answers = await loop.run_in_executor(executor, batcher["forward"], batch)
    except Exception as e:
        if len(items) == 1:
            answers = [e]
        else:      # this batch only: answer its requests one by one, keep batching after
            if not batcher["failed_batches"]:
                print(f"note: a batch of {len(items)} failed ({type(e).__name__}: "
                      f"{quoted(str(e), 120)}); its requests are answered one by one "
                      "(/stats counts such batches)", file=sys.stderr)
            batcher["failed_batches"] += 1
            answers = [await run_one(loop, executor, batcher["forward"], x)
                       for x, _, _ in items]
    batcher["batches"] += 1
    batcher["requests"] += len(items)
    for (_, future, _), result in zip(items, answers, strict=True):
        if future.done():                  # timed out or abandoned while running
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


async def run_one(loop, executor, forward, x):
    try:
        return (await loop.run_in_executor(executor, forward, x.unsqueeze(0)))[0]
    except Exception as e:
        return e


def classify_batch(model, crops):
    """(N, 1, 32, 48, 48) HU -> N values of P(nodule); eager, TorchScript or exported model."""
    return prob_nodule(model, crops, channels_last=True).tolist()


def generate_batch(model, images):
    """(N, 3, S, S) in [0, 1] -> N generator outputs (3, S, S) in [-1, 1]."""
    with torch.inference_mode():
        out = model(images.to(model_device(model)))
    if not isinstance(out, torch.Tensor) or out.shape != images.shape:
        raise ValueError(f"the generator answered {type(out).__name__} "
                         f"{list(getattr(out, 'shape', []))} for {list(images.shape)} images")
    return list(out.float().cpu())


async def read_body(request, max_bytes):
    """The whole body, refusing (413) one over max_bytes before or while it streams in."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes,
                                            actual_size=request.content_length)
    body = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(body))
    return bytes(body)


async def read_form(request, max_bytes):
    """(shape, dtype, blob) from the book's multipart form, at most max_bytes of parts."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes,
                                            actual_size=request.content_length)
    parts, total = {}, 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart bodies are not accepted")
            data = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=total)
                data += chunk
            parts[part.name] = bytes(data)
    except (ValueError, AssertionError, RuntimeError, LookupError, HttpProcessingError) as e:
        # aiohttp's reader on a bad body or part header (HttpProcessingError: a header line
        # without a colon, too long, too many; LookupError: an unknown charset)
        detail = e.message if isinstance(e, HttpProcessingError) else str(e)
        raise ValueError(f"malformed multipart body ({type(e).__name__}: "
                         f"{quoted(detail, 80)})") from None
    return parse_form_parts(parts.get("meta"), parts.get("blob"))


def image_header(data):
    """(format, width, height) from a PNG's IHDR or a JPEG's frame header, before any decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("the PNG has no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:2] != b"\xff\xd8":
        raise ValueError("the body is not a JPEG or PNG image")
    pos = 2
    while pos + 4 <= len(data):              # walk the markers up to the frame header (SOFn)
        if data[pos] != 0xFF:
            raise ValueError("the JPEG's markers are corrupt")
        marker = data[pos + 1]
        if marker == 0xFF:                   # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:    # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return "JPEG", width, height
        if marker == 0xDA or length < 2:     # image data before any frame header
            break
        pos += 2 + length
    raise ValueError("the JPEG has no frame header with its size")


def decode_image(data, size=IMAGE_SIZE, max_pixels=MAX_PIXELS):
    """JPEG or PNG bytes -> (3, size, size) float32 in [0, 1].

    ValueError says what is wrong with the image; OverflowError that it has too many pixels
    (read from the header, so a decompression bomb is never decoded).
    """
    _, width, height = image_header(data)
    if width * height > max_pixels:
        raise OverflowError(f"image is {width}x{height}; at most {max_pixels:,} pixels accepted")
    if width == 0 or height == 0:
        raise ValueError(f"image is {width}x{height}")
    try:
        image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])   # the header only
        image.draft("RGB", (size, size))              # JPEG: decode at 1/2..1/8 scale if enough
        image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except Exception as e:       # truncated or corrupt data: Pillow's errors are not one type
        raise ValueError(f"cannot decode the image ({type(e).__name__}: {quoted(str(e), 80)})") \
            from None
    return to_chw(np.array(image)) / 255.0               # a writable copy for torch


def encode_jpeg(out, quality=90):
    """(3, S, S) generator output in [-1, 1] -> JPEG bytes, through horse2zebra's to_image."""
    buffer = io.BytesIO()
    Image.fromarray(to_image(out.unsqueeze(0))).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def json_error(status, message, headers=None):
    return web.json_response({"error": message}, status=status, headers=headers)


async def queue_and_wait(request, route, x):
    """Queue x on the route's batcher; the answer, or the 503/504 json response."""
    batcher, settings = request.app[BATCHERS][route], request.app[SETTINGS]
    if batcher["closing"]:
        return None, json_error(503, "shutting down", {"Retry-After": str(RETRY_AFTER_S)})
    try:
        return await submit(batcher, x, settings["timeout_s"]), None
    except asyncio.QueueFull:
        return None, json_error(503, f"too busy: {batcher['max_queue']} requests already "
                                     "queued; retry later", {"Retry-After": str(RETRY_AFTER_S)})
    except TimeoutError:
        return None, json_error(504, f"no answer within {settings['timeout_s']} s")


async def predict(request):
    """POST /predict: one crop (multipart form or raw bytes + X-Shape) -> P(nodule) as JSON."""
    settings = request.app[SETTINGS]
    try:
        if request.content_type == "multipart/form-data":
            shape, dtype, blob = await read_form(request, settings["max_bytes"])
        elif request.content_type == "application/octet-stream":
            shape = parse_shape_header(request.headers.get("X-Shape"))
            dtype = request.headers.get("X-Dtype", DTYPE)
            blob = await read_body(request, settings["max_bytes"])
        else:
            return json_error(415, f"unsupported content type {quoted(request.content_type)}: send "
                                   "multipart/form-data (meta + blob) or "
                                   "application/octet-stream with X-Shape")
        crop = decode_crop(shape, dtype, blob, settings["crop_shape"])
    except ValueError as e:
        return json_error(400, str(e))
    p, error = await queue_and_wait(request, "predict", crop)
    if error is not None:
        return error
    return web.json_response({"prob_malignant": p, "prob_nodule": p})


async def image(request):
    """POST/PUT /image: a JPEG or PNG -> the generator's output as a JPEG (S x S)."""
    settings = request.app[SETTINGS]
    loop = asyncio.get_running_loop()
    data = await read_body(request, settings["max_image_bytes"])
    try:                                               # decoding in a worker thread
        x = await loop.run_in_executor(None, decode_image, data, settings["image_size"],
                                       settings["max_pixels"])
    except OverflowError as e:
        return json_error(413, str(e))
    except ValueError as e:
        return json_error(400, str(e))
    out, error = await queue_and_wait(request, "image", x)
    if error is not None:
        return error
    jpeg = await loop.run_in_executor(None, encode_jpeg, out)
    return web.Response(body=jpeg, content_type="image/jpeg")


async def stats(request):
    """GET /stats: requests answered, batches run, queue length and limits per route."""
    return web.json_response({
        route: {"requests": b["requests"], "batches": b["batches"],
                "queued": b["queue"].qsize() if b["queue"] else 0,
                "failed_batches": b["failed_batches"], "max_batch_size": b["max_batch_size"],
                "max_queue": b["max_queue"]}
        for route, b in request.app[BATCHERS].items()})


@web.middleware
async def json_errors(request, handler):
    """404, 405, 413, ... and unexpected failures as JSON {"error": ...}, never HTML."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Retry-After", "Allow")}
        detail = e.text if e.text and not e.text.startswith(f"{e.status}:") else ""
        return json_error(e.status, f"{e.reason}: {detail}" if detail else e.reason, headers)
    except (ConnectionError, asyncio.CancelledError):   # the client went away mid-request
        raise
    except Exception as e:
        request.app.logger.exception("error in %s", request.path)
        return json_error(500, f"internal error ({type(e).__name__})")


def create_app(cls_model=None, image_model=None, *, max_batch_size=MAX_BATCH_SIZE,
               max_wait_ms=MAX_WAIT_MS, max_queue=MAX_QUEUE, timeout_s=TIMEOUT_S,
               max_bytes=MAX_BYTES, max_image_bytes=MAX_IMAGE_BYTES, image_size=IMAGE_SIZE,
               max_pixels=MAX_PIXELS, crop_shape=CROP_SHAPE, batch_limits=None):
    """The aiohttp app serving whichever models are given (eval-mode modules or callables).

    `batch_limits` ({"predict": 1, ...}) lowers max_batch_size for a route whose model takes
    only smaller batches (load_models finds that out by probing an exported program).
    """
    app = web.Application(middlewares=[json_errors],
                          client_max_size=max(max_bytes, max_image_bytes))
    app[SETTINGS] = {"timeout_s": timeout_s, "max_bytes": max_bytes,
                     "max_image_bytes": max_image_bytes, "image_size": image_size,
                     "max_pixels": max_pixels, "crop_shape": tuple(crop_shape)}
    app[BATCHERS] = {}
    batch_limits = batch_limits or {}
    limits = lambda route: (min(max_batch_size, batch_limits.get(route, max_batch_size)),
                            max_wait_ms, max_queue)
    if cls_model is not None:
        app[BATCHERS]["predict"] = new_batcher(partial(classify_batch, cls_model),
                                               *limits("predict"))
        app.router.add_post("/predict", predict)
    if image_model is not None:
        app[BATCHERS]["image"] = new_batcher(partial(generate_batch, image_model),
                                             *limits("image"))
        app.router.add_post("/image", image)
        app.router.add_put("/image", image)         # the book's method
    app.router.add_get("/stats", stats)
    app.cleanup_ctx.append(batching_context)
    app.on_shutdown.append(stop_accepting)
    return app


async def batching_context(app):
    """Startup: queues and runner tasks; cleanup: let the runners empty their queues, stop."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")  # one forward
    for batcher in app[BATCHERS].values():                                  # at a time
        batcher["queue"] = asyncio.Queue(batcher["max_queue"])
        batcher["task"] = asyncio.create_task(run_batches(batcher, executor))
    yield
    for batcher in app[BATCHERS].values():
        batcher["closing"] = True
        try:
            await asyncio.wait_for(batcher["queue"].join(), app[SETTINGS]["timeout_s"])
        except TimeoutError:
            pass
        batcher["task"].cancel()
    await asyncio.gather(*(b["task"] for b in app[BATCHERS].values()), return_exceptions=True)
    executor.shutdown(wait=True)


async def stop_accepting(app):
    """on_shutdown: new requests get 503; queued ones are still answered (aiohttp waits)."""
    for batcher in app[BATCHERS].values():
        batcher["closing"] = True


def probe_batches(model, forward, sample, max_batch_size, flag, path, announce):
    """Run an exported program on one sample, then on two; the batch size it can serve.

    One that cannot take a single sample is refused now (a DataError), not with a 500 at the
    first request; one exported with a fixed batch of 1 is served one request at a time.
    """
    probe(model, forward, sample.unsqueeze(0), flag, path)
    if max_batch_size < 2:
        return max_batch_size
    try:
        forward(model, torch.stack([sample, sample]))
        return max_batch_size
    except Exception as e:                           # whatever the program raises
        announce(f"note: {flag} {path} runs one sample but not two ({type(e).__name__}); "
                 "that route serves one request at a time")
        return 1


def load_cls_model(path=None, jit=None, exported=None, random_weights=False, data_dir=None,
                   device="cpu", max_batch_size=MAX_BATCH_SIZE, announce=print):
    """(classifier ready to serve, the batch size it takes): a checkpoint, random, or a program."""
    program = jit or exported
    if program:
        flag = "--jit" if jit else "--exported"
        model = load_program(program, jit=bool(jit), flag=flag).to(device)
        sample = torch.zeros(CROP_SHAPE, dtype=torch.float32)
        return model, probe_batches(model, classify_batch, sample, max_batch_size, flag,
                                    program, announce)
    model = load_classifier(path, data_dir, random_weights=random_weights and not path,
                            device=device, flag="--cls-model")
    return prepare(model, channels_last=True), max_batch_size


def load_image_model(weights=None, jit=None, exported=None, random_weights=False,
                     data_dir=None, device="cpu", image_size=IMAGE_SIZE,
                     max_batch_size=MAX_BATCH_SIZE, announce=print):
    """(generator ready to serve, the batch size it takes): the book's weights, random, or a
    TorchScript / torch.export program (probed at --image-size: a few seconds on a CPU)."""
    program = jit or exported
    if program:
        flag = "--cyclegan-jit" if jit else "--cyclegan-exported"
        model = load_program(program, jit=bool(jit), flag=flag).to(device)
        sample = torch.full((3, image_size, image_size), 0.5)
        return model, probe_batches(model, generate_batch, sample, max_batch_size, flag,
                                    program, announce)
    path = resolve_weights(weights, random_weights and not weights, HORSE2ZEBRA_PTH,
                           "horse2zebra", data_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = ResNetGenerator()
    if path is not None:
        load_weights(generator, path, "--cyclegan-weights")
    return generator.to(device).eval().requires_grad_(False), max_batch_size


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[server_arguments()])
    p.add_argument("--max-batch-size", type=at_least(int, 1), default=MAX_BATCH_SIZE,
                   help="most requests in one forward; 1 turns batching off (default: "
                        "%(default)s)")
    p.add_argument("--max-wait-ms", type=at_least(float, 0), default=MAX_WAIT_MS,
                   help="how long the first request of a batch waits for more (default: "
                        "%(default)s)")
    p.add_argument("--max-queue", type=at_least(int, 1), default=MAX_QUEUE,
                   help="requests waiting per route before 503 (default: %(default)s)")
    p.add_argument("--timeout-s", type=at_least(float, 0.001), default=TIMEOUT_S,
                   help="504 for a request not answered in time (default: %(default)s)")
    p.add_argument("--max-bytes", type=at_least(int, 1), default=MAX_BYTES,
                   help="largest /predict body (default: %(default)s)")
    p.add_argument("--max-image-bytes", type=at_least(int, 1), default=MAX_IMAGE_BYTES,
                   help="largest /image body (default: %(default)s)")
    p.add_argument("--image-size", type=at_least(int, 4), default=IMAGE_SIZE,
                   help="side of the square every image is resized to, a multiple of 4 "
                        "(default: %(default)s)")
    p.add_argument("--cls-model", default=None,
                   help="classifier checkpoint (book dict; default: the book's under the data "
                        "root)")
    p.add_argument("--random-weights", action="store_true",
                   help="untrained models where no file is given")
    p.add_argument("--cyclegan-weights", default=None,
                   help=f"generator state_dict (default: {HORSE2ZEBRA_PTH} under the data root)")
    p.add_argument("--no-image", action="store_true", help="serve the classifier only")
    cls_export = p.add_mutually_exclusive_group()
    cls_export.add_argument("--jit", default=None, help="TorchScript classifier to serve")
    cls_export.add_argument("--exported", default=None, help="torch.export .pt2 classifier")
    gen_export = p.add_mutually_exclusive_group()
    gen_export.add_argument("--cyclegan-jit", default=None, help="TorchScript generator")
    gen_export.add_argument("--cyclegan-exported", default=None, help="torch.export generator")
    add_data_dir_argument(p)
    add_device_argument(p, default="cpu")
    args = p.parse_args(argv)
    if args.image_size % 4:
        p.error(f"--image-size {args.image_size}: must be a multiple of 4 (the generator's two "
                "stride-2 stages)")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    # aiohttp warns once per odd Content-Disposition a client sends: their header, not news
    warnings.filterwarnings("ignore", category=aiohttp.BadContentDispositionHeader)
    warnings.filterwarnings("ignore", category=aiohttp.BadContentDispositionParam)
    cls_model, cls_batch = load_cls_model(args.cls_model, args.jit, args.exported,
                                          args.random_weights, args.data_dir, device,
                                          args.max_batch_size)
    image_model, image_batch = (None, None) if args.no_image else load_image_model(
        args.cyclegan_weights, args.cyclegan_jit, args.cyclegan_exported, args.random_weights,
        args.data_dir, device, args.image_size, args.max_batch_size)
    app = create_app(cls_model, image_model, max_batch_size=args.max_batch_size,
                     max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                     timeout_s=args.timeout_s, max_bytes=args.max_bytes,
                     max_image_bytes=args.max_image_bytes, image_size=args.image_size,
                     batch_limits={"predict": cls_batch, "image": image_batch or 1})
    routes = "/predict" + (", /image" if image_model is not None else "") + ", /stats"
    print(f"serving {routes} on http://{args.host}:{args.port} (batches of up to "
          f"{args.max_batch_size}, waiting up to {args.max_wait_ms:g} ms); Ctrl-C stops",
          flush=True)
    if args.host not in LOOPBACK:
        print(f"note: bound to {args.host}: reachable from other machines")
    started = time.perf_counter()
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, handle_signals=True,
                    shutdown_timeout=args.timeout_s, handler_cancellation=True)
    except OSError as e:
        raise DataError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); pick "
                        "another --port or --host") from None
    print(f"stopped after {time.perf_counter() - started:.0f} s")
    return app


if __name__ == "__main__":
    run_cli(main)
