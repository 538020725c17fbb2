"""Chapter 15: the command lines of the two servers, flask_server.py and batching_server.py."""
import argparse

from ch01_intro.weights import HORSE2ZEBRA_PTH
from ch15_deploy.classifier import model_arguments
from ch15_deploy.flags import at_least, server_arguments
from ch15_deploy.images import IMAGE_SIZE, MAX_IMAGE_BYTES
from ch15_deploy.wire import MAX_BYTES
from ch15_deploy.wsgi_serving import MAX_QUEUE, THREADS
from common.data import add_data_dir_argument
from common.device import add_device_argument


def flask_server_args(argv, description):
    """flask_server.py's flags: the model, --host/--port, --max-bytes, waitress's --threads and
    --max-queue, --device."""
    p = argparse.ArgumentParser(description=description,
                                parents=[model_arguments(), server_arguments()])
    p.add_argument("--max-bytes", type=at_least(int, 1), default=MAX_BYTES,
                   help="largest request body accepted (default: %(default)s)")
    p.add_argument("--threads", type=at_least(int, 1), default=THREADS,
                   help="requests run at once (default: %(default)s)")
    p.add_argument("--max-queue", type=at_least(int, 0), default=MAX_QUEUE,
                   help="requests waiting for a thread before 503 (default: %(default)s)")
    add_device_argument(p, default="cpu")
    return p.parse_args(argv)


def batching_server_args(argv, description, max_batch_size, max_wait_ms, max_queue, timeout_s):
    """batching_server.py's flags; the batching defaults are the server's own constants."""
    p = argparse.ArgumentParser(description=description, parents=[server_arguments()])
    p.add_argument("--max-batch-size", type=at_least(int, 1), default=max_batch_size,
                   help="most requests in one forward; 1 turns batching off (default: "
                        "%(default)s)")
    p.add_argument("--max-wait-ms", type=at_least(float, 0), default=max_wait_ms,
                   help="how long the first request of a batch waits for more (default: "
                        "%(default)s)")
    p.add_argument("--max-queue", type=at_least(int, 1), default=max_queue,
                   help="requests waiting per route before 503 (default: %(default)s)")
    p.add_argument("--timeout-s", type=at_least(float, 0.001), default=timeout_s,
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
