"""Chapter 7: CIFAR-10's python files: their names, a reader that runs nothing, and a writer.

The python version of CIFAR-10 is seven pickles in cifar-10-batches-py/: data_batch_1..5,
test_batch and batches.meta. Unpickling can run code, so read_cifar_pickle uses a restricted
unpickler that builds only dicts, lists, bytes, str, numbers and numeric numpy arrays (see
NOTES.md for what it admits and why). write_batch and write_meta write the same format, for the
synthetic sample. No command of its own: cifar.py and synthetic.py import it.
"""
import pickle
from pathlib import Path

import numpy as np

from common.errors import DataError, one_line

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
CIFAR_DIR = "cifar-10-batches-py"                  # the folder inside cifar-10-python.tar.gz
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
BATCH_FILES = TRAIN_BATCHES + (TEST_BATCH, META_FILE)
IMAGE_SHAPE = (3, 32, 32)                          # each row of b'data': 1024 R, 1024 G, 1024 B
DOWNLOAD_COMMAND = "python -m common.data download cifar10"

# What a CIFAR pickle may hold: the numpy globals its arrays need (the real files name the
# numpy 1 module, files written here the numpy 2 one) and arrays of plain numbers only (never
# object arrays); read_batch then insists on uint8 images.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]       # numpy's own _reconstruct
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
                  ("numpy", "ndarray"): np.ndarray}
_CIFAR_DTYPES = frozenset({"u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "b", "b1",
                           "f2", "f4", "f8"})


def _cifar_dtype(spec, *args):
    """numpy.dtype for the unpickler: numbers only (an object array would hold objects)."""
    name = spec.decode("latin-1") if isinstance(spec, bytes) else spec
    if not isinstance(name, str) or name.lstrip("<>|=") not in _CIFAR_DTYPES:
        raise pickle.UnpicklingError(f"refusing an array of dtype {name!r}")
    return np.dtype(name, *args)


def _latin1_bytes(text, encoding, *rest):
    """_codecs.encode for the unpickler: Python 3 stores bytes in a protocol-2 pickle as
    _codecs.encode(str, 'latin1'). Exactly that call is admitted, nothing else of _codecs."""
    if rest or not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode of {type(text).__name__} "
                                     f"with {one_line(repr(encoding), 40)}")
    return text.encode("latin1")      # a str outside latin-1 raises: not a readable file


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that builds only dicts, lists, bytes, str, numbers and numeric numpy
    arrays: any other global (a function to call, a class to build) is refused, so a crafted
    file cannot run code."""

    def find_class(self, module, name):
        if (module, name) == ("numpy", "dtype"):
            return _cifar_dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in _CIFAR_GLOBALS:
            return _CIFAR_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def _plain(value):
    """True when `value` holds only what a CIFAR file holds (checked after unpickling)."""
    if isinstance(value, dict):
        return all(isinstance(k, (bytes, str)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iubf"
    return value is None or isinstance(value, (bytes, str, int, float))


def read_cifar_pickle(path):
    """The dict stored in one CIFAR file (keys are bytes), through _CifarUnpickler: a file that
    asks for anything but plain data and numeric arrays is a DataError naming it, and nothing
    in it runs."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a CIFAR-10 file")
    if not path.is_file():
        raise DataError(f"{path} not found; get CIFAR-10 with:  {DOWNLOAD_COMMAND}")
    try:
        with open(path, "rb") as f:
            # The python version of CIFAR-10 is a Python 2 pickle: encoding="bytes" keeps its
            # str keys as bytes.
            entry = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        why = str(e)
        if why.startswith("refusing"):
            raise DataError(f"{path}: not a CIFAR-10 file: it asks for more than plain data "
                            f"({one_line(why, 80)}; refused, nothing in it was run)") from None
        raise DataError(f"{path}: not a readable CIFAR-10 file ({one_line(why, 80)})") from None
    except Exception as e:  # a corrupt pickle can fail in many ways: any of them is bad input
        raise DataError(f"{path}: not a readable CIFAR-10 file ({type(e).__name__}: "
                        f"{one_line(e, 80)})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: expected a dict, found {type(entry).__name__}")
    if not _plain(entry):
        raise DataError(f"{path}: not a CIFAR-10 file: it holds objects other than plain data")
    return entry


def read_batch(path):
    """One batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,)), checked."""
    entry = read_cifar_pickle(path)
    missing = [key for key in (b"data", b"labels") if key not in entry]
    if missing:
        raise DataError(f"{path}: not a CIFAR-10 batch (no {', '.join(map(repr, missing))} key)")
    data, labels = entry[b"data"], entry[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == int(np.prod(IMAGE_SHAPE))):
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise DataError(f"{path}: b'data' should be uint8 of shape (N, 3072), found {got}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: b'labels' should be {len(data)} integers, found "
                        f"{labels.dtype} {labels.shape}")
    if len(labels) and not (0 <= labels.min() and labels.max() < len(CLASS_NAMES)):
        raise DataError(f"{path}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_meta(path):
    """batches.meta -> the 10 class names, as str."""
    entry = read_cifar_pickle(path)
    names = entry.get(b"label_names")
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES):
        raise DataError(f"{path}: b'label_names' should list {len(CLASS_NAMES)} names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def write_batch(path, images, labels, batch_label, filenames):
    """Write uint8 images (N, 3, 32, 32) and labels as a CIFAR-10 batch (read_batch's inverse)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    entry = {b"batch_label": batch_label.encode(),
             b"labels": [int(x) for x in labels],
             b"data": images.reshape(len(images), -1),
             b"filenames": [name.encode() for name in filenames]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=4)


def write_meta(path, num_cases_per_batch):
    """Write batches.meta with the same three keys as the real file."""
    entry = {b"num_cases_per_batch": num_cases_per_batch,
             b"label_names": [name.encode() for name in CLASS_NAMES],
             b"num_vis": int(np.prod(IMAGE_SHAPE))}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=4)


