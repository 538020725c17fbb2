"""Chapter 15: a request-batching model server with aiohttp and asyncio (book 15.4, 15.8).

    python ch15_deploy/batching_server.py --random-weights          # 127.0.0.1:8000
    python ch15_deploy/cls_client.py                                # in a second shell
    python ch15_deploy/load_test.py --concurrency 10 --seconds 5
    curl -X POST --data-binary @horse.jpg http://127.0.0.1:8000/image -o zebra.jpg

Each request's tensor goes into its route's queue with a future (queue); the route's runner
takes the first waiting request and whatever else arrives within --max-wait-ms, up to
--max-batch-size (batch), runs one forward off the event loop (run) and gives every future its
own row (answer). POST /predict serves the classifier (the Flask server's request formats),
POST or PUT /image the CycleGAN (a JPEG back), GET /stats the counts. A full queue answers 503
with Retry-After; SIGTERM or Ctrl-C answers what is queued, then exits 0. More in NOTES.md.
"""
import asyncio
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from aiohttp import web

from ch15_deploy.aiohttp_serving import serve
from ch15_deploy.classifier import model_device, prob_nodule
from ch15_deploy.http_errors import bad_client_logging, dumps, json_error, json_errors, unavailable
from ch15_deploy.images import IMAGE_SIZE, MAX_IMAGE_BYTES, MAX_PIXELS, decode_image, encode_jpeg
from ch15_deploy.request_bodies import aiohttp_crop_parts, read_body
from ch15_deploy.served_models import load_cls_model, load_image_model
from ch15_deploy.server_flags import batching_server_args
from ch15_deploy.wire import CROP_SHAPE, LOOPBACK, MAX_BYTES, NOT_FINITE, decode_crop, quoted
from common.device import pick_device
from common.errors import run_cli

MAX_BATCH_SIZE = 16      # the book: 2, 1 s and 3, for a GPU demo; these suit a CPU (NOTES.md)
MAX_WAIT_MS = 10.0
MAX_QUEUE = 64
TIMEOUT_S = 30.0         # a request not answered in time gets 504

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


async def queue_and_wait(request, route, x):
    """Queue x on the route's batcher; the answer, or the 503/504 json response."""
    batcher, settings = request.app[BATCHERS][route], request.app[SETTINGS]
    if batcher["closing"]:
        return None, unavailable("shutting down")
    try:
        return await submit(batcher, x, settings["timeout_s"]), None
    except asyncio.QueueFull:
        return None, unavailable(f"too busy: {batcher['max_queue']} requests already queued; "
                                 "retry later")
    except TimeoutError:
        return None, json_error(504, f"no answer within {settings['timeout_s']} s")


async def predict(request):
    """POST /predict: one crop (multipart form or raw bytes + X-Shape) -> P(nodule) as JSON."""
    settings = request.app[SETTINGS]
    try:
        shape, dtype, blob = await aiohttp_crop_parts(request, settings["max_bytes"])
        crop = decode_crop(shape, dtype, blob, settings["crop_shape"])   # checked float32
    except ValueError as e:
        return json_error(400, str(e))
    p, error = await queue_and_wait(request, "predict", crop)
    if error is not None:
        return error
    if not math.isfinite(p):           # JSON has no NaN; the model passed its start-up try
        return json_error(422, NOT_FINITE)
    return web.json_response({"prob_malignant": p, "prob_nodule": p}, dumps=dumps)


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
    if not torch.isfinite(out).all():  # on a valid image: the model's fault
        return json_error(500, "the generator's output is not finite (NaN or Inf)")
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


def create_app(cls_model=None, image_model=None, *, max_batch_size=MAX_BATCH_SIZE,
               max_wait_ms=MAX_WAIT_MS, max_queue=MAX_QUEUE, timeout_s=TIMEOUT_S,
               max_bytes=MAX_BYTES, max_image_bytes=MAX_IMAGE_BYTES, image_size=IMAGE_SIZE,
               max_pixels=MAX_PIXELS, crop_shape=CROP_SHAPE, batch_limits=None):
    """The aiohttp app serving whichever models are given (eval-mode modules or callables).

    `batch_limits` ({"predict": 1, ...}) lowers max_batch_size for a route whose model takes
    only smaller batches (served_models finds that out by trying an exported program).
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


def main(argv=None):
    args = batching_server_args(argv, __doc__.split("\n\n")[0], MAX_BATCH_SIZE, MAX_WAIT_MS,
                                MAX_QUEUE, TIMEOUT_S)
    device = pick_device(args.device)
    cls_model, cls_batch = load_cls_model(classify_batch, args.cls_model, args.jit,
                                          args.exported, args.random_weights, args.data_dir,
                                          device, args.max_batch_size, compiled=args.compile)
    image_model, image_batch = (None, None) if args.no_image else load_image_model(
        generate_batch, args.cyclegan_weights, args.cyclegan_jit, args.cyclegan_exported,
        args.random_weights, args.data_dir, device, args.image_size, args.max_batch_size)
    app = create_app(cls_model, image_model, max_batch_size=args.max_batch_size,
                     max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                     timeout_s=args.timeout_s, max_bytes=args.max_bytes,
                     max_image_bytes=args.max_image_bytes, image_size=args.image_size,
                     batch_limits={"predict": cls_batch, "image": image_batch or 1})
    routes = "/predict" + (", /image" if image_model is not None else "") + ", /stats"

    def announce(port):                             # once listening: --port 0's port too
        print(f"serving {routes} on http://{args.host}:{port} (batches of up to "
              f"{args.max_batch_size}, waiting up to {args.max_wait_ms:g} ms); Ctrl-C stops",
              flush=True)
        if args.host not in LOOPBACK:
            print(f"note: bound to {args.host}: reachable from other machines")

    started = time.perf_counter()
    asyncio.run(serve(app, args.host, args.port, args.timeout_s, announce,   # SIGTERM, Ctrl-C:
                      handler_cancellation=True, logger=bad_client_logging()))  # a graceful stop
    print(f"stopped after {time.perf_counter() - started:.0f} s")
    return app


if __name__ == "__main__":
    run_cli(main)
