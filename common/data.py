"""Data root and the registry of downloadable files: list, download, verify, unpack.

    python -m common.data list
    python -m common.data download wine dicom-ct
    python -m common.data download luna-subset0 --data-dir /big/disk/dlwpt

Files land under the data root (`--data-dir` > `$DLWPT_DATA` > `data/`) in the book repository's
layout. `$DLWPT_MIRROR` (a folder or a base URL) replaces the book repository as the source of
the book's files. Each file is written to `<dest>.part` (resumed with an HTTP Range request after
an interruption), checked against its size and checksum, then renamed into place.
"""
import argparse
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter, namedtuple
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from common.errors import DataError, one_line, run_cli
from common.files import output_dir, write_failure, write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOK_BASE_URL = "https://github.com/deep-learning-with-pytorch/dlwpt-code/raw/master/data/"
MIRROR_ENV = "DLWPT_MIRROR"
TIMEOUT_S = 60                      # a connection silent this long counts as dropped
ATTEMPTS = 5                        # resumes within one command, while each one makes progress
CHUNK = 1 << 20                     # bytes per read
USER_AGENT = "dlwpt-functional/0.1 (python urllib)"
VERIFIED_MARK = ".dlwpt-verified"   # written into a folder unpacked from a verified archive
BIG_FILE = 256 << 20                # checksumming a file this large shows a progress bar

# One downloadable file. url None: a book file, fetched from $DLWPT_MIRROR or from
# BOOK_BASE_URL + relpath. sha256 may be a prefix (torchvision names its weight files after the
# first 8 hex digits of their sha256). size / sha256 / md5 None: not known, never guessed.
FileSpec = namedtuple("FileSpec", "relpath url size sha256 md5")
# A registry name: its files, and for an archive (a single file) the folder it unpacks into.
Entry = namedtuple("Entry", "name about files extract_to")


def data_root(data_dir=None):
    """`--data-dir` > `$DLWPT_DATA` > `data/` in the repository."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("DLWPT_DATA")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def add_data_dir_argument(parser):
    """The `--data-dir` flag every script shares."""
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: $DLWPT_DATA, else data/ in the repository)")


def book_file(relpath, data_dir=None, name=None):
    """Path of a file under the data root; a missing one is a DataError naming the download."""
    path = data_root(data_dir) / relpath
    if not path.exists():
        hint = (f"; get it with:  python -m common.data download {name}" if name
                else "")
        raise DataError(f"{path} not found{hint}")
    return path


ABOUT = {
    "p1ch2": "ch2: bobby.jpg, horse.jpg, ImageNet class names, MNIST net",
    "horse2zebra": "ch2: CycleGAN horse->zebra generator weights",
    "resnet101": "ch2: torchvision ResNet-101 ImageNet weights",
    "p1ch3": "ch3: serialized tensors (torch and HDF5)",
    "image-dog": "ch4: one JPEG image",
    "image-cats": "ch4: a folder of three PNG images",
    "dicom-ct": "ch4: a 99-slice chest CT (DICOM)",
    "wine": "ch4: wine quality table (CSV)",
    "bikes": "ch4: bike sharing time series (CSV)",
    "jane-austen": "ch4: Pride and Prejudice (text)",
    "audio-chirp": "ch4: an audio clip (WAV)",
    "video-cockatoo": "ch4: a video clip (MP4)",
    "cifar10": "ch7-8: CIFAR-10, python pickles (unpacked)",
    "birds-vs-airplanes": "ch8: the book's trained birds-vs-airplanes Net",
    "cls-val-example": "ch15: a LUNA validation crop for the servers",
    "luna-csv": "ch10-14: the book's LUNA candidates/annotations CSVs",
    "luna-models": "ch11-14: the book's checkpoints; 3 of the 5 load (the cls_2019-06-23 and "
                   "alternate_cls_2019-06-16 classifiers are an older model layout)",
    "luna-annotations": "ch10: LUNA16's own annotations.csv and candidates.csv",
    "luna-subset": "ch10: LUNA16 CT scans, subset {i} (unpacked)",
    "luna-evaluation": "ch13: LUNA16's evaluation script: annotations_excluded.csv, "
                       "seriesuids.csv (unpacked)",
    "luna-candidates-v2": "ch13: LUNA16's candidates_V2.csv, the FP-reduction track (unpacked)",
}

# The CT's 99 slices are listed in a data file beside this one (name, size, sha256 per line).
DICOM_TABLE = Path(__file__).with_name("dicom_ct_files.txt")

# The book repository's files: name -> (folder under the data root, ((file, size, sha256), ...)
# or a file holding those rows).
# Sizes (bytes) and sha256 computed from a copy of the repository's data/ folder; None where the
# file was not in that copy (candidates.csv, horse2zebra): no checksum is known for those.
BOOK_FILES = {
    "p1ch2": ("p1ch2", (
        ("bobby.jpg", 75801, "71d4d4ae4f00f5febb1f178153673bc456d15f305f6d58517679340dcfbf5914"),
        ("horse.jpg", 385347, "478b2b255c74ad18547b6df158a08703d7c5961e89a5c46f2685f820122fff66"),
        ("imagenet_classes.txt", 21674, "a40d9be82eb4738becd1dd69991b89f87f309975e860a6f3f45395d8c06a7e0d"),  # noqa: E501
        ("mnist/mnist.pth", 88668, "afaf61b6023c2fa5b293597947939d54019744a6dc2b102f3b13dc7b6e3eb35a"),  # noqa: E501
    )),
    "horse2zebra": ("p1ch2", (
        ("horse2zebra_0.4.0.pth", None, None),
    )),
    "p1ch3": ("p1ch3", (
        ("ourpoints.t", 387, "12d47afb6dea9953d0314076bd81744e24f31b407d944d898fdca452f94b3568"),
        ("ourpoints.hdf5", 2096, "2409bab2edaf26e02aaa4c5048da2980bdfbe4efaf8819c1c8eedad1c940debb"),  # noqa: E501
    )),
    "image-dog": ("p1ch4/image-dog", (
        ("bobby.jpg", 75801, "71d4d4ae4f00f5febb1f178153673bc456d15f305f6d58517679340dcfbf5914"),
    )),
    "image-cats": ("p1ch4/image-cats", (
        ("cat1.png", 142028, "e87d082c3d9465126a0e66f95b0111be8d300223c24a7590604e622cba662699"),
        ("cat2.png", 144059, "5fe15f80c49c9ecb7c72dcdc276d43a04c0559dc9bf62d5de17c72c5b777283f"),
        ("cat3.png", 106468, "903322dcc2bb2930013d58cd39c6ae6f55c5b1b640ef3129b30c0000c6858c93"),
    )),
    "dicom-ct": ("p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083", DICOM_TABLE),   # 99 files
    "wine": ("p1ch4/tabular-wine", (
        ("winequality-white.csv", 264426, "76c3f809815c17c07212622f776311faeb31e87610d52c26d87d6e361b169836"),  # noqa: E501
    )),
    "bikes": ("p1ch4/bike-sharing-dataset", (
        ("Readme.txt", 5496, "6f5ca84b8e9495c6c1f4ce48c31a99f96bba9d952c7f694cbbce3cd82332d471"),
        ("day.csv", 56837, "537e98e2c8b8f53e3094d953f847788b1dc224764a4a1e538b3e1ec4e30dac8a"),
        ("fix_missing_hours.py", 1152, "c17818cf026791c357f0dbabf6496585c4724e74515e999a230bc336d5e7c55e"),  # noqa: E501
        ("hour-fixed.csv", 1148001, "ae5b1b828676fb7696ebfd838f105c71cda9c867aa752f75eed6fa6d0eacf991"),  # noqa: E501
        ("hour.csv", 1139356, "b03a2d02e8c10f435c43c7f0b358b7e34a003afea53dbc37f0183f2763295133"),
    )),
    "jane-austen": ("p1ch4/jane-austen", (
        ("1342-0.txt", 711298, "c96e628c6f84bf45d3cee2c2da66166ccbeda328ecb76bb9b2ab1bc91961d0d1"),
    )),
    "audio-chirp": ("p1ch4/audio-chirp", (
        ("1-100038-A-14.wav", 441044, "2faa39d8e59e8f292dfbdbe72bd8a00294f9535714b3c19b39904c2c17e14675"),  # noqa: E501
    )),
    "video-cockatoo": ("p1ch4/video-cockatoo", (
        ("cockatoo.mp4", 728751, "5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5"),  # noqa: E501
    )),
    "birds-vs-airplanes": ("p1ch6", (
        ("birds_vs_airplanes.pt", 73643, "82bbc255589220d8d9e37981be4149707ed9b7dab44ad045e2a8357475dd1eae"),  # noqa: E501
    )),
    "cls-val-example": ("p3ch15", (
        ("cls_val_example.pt", 295541, "8da92aea0dda53086e431f5885539e32f94c697cabe4a455f834294f04648225"),  # noqa: E501
    )),
    "luna-csv": ("part2/luna", (
        ("annotations.csv", 135799, "5ac2d735e7717b0ad508f3c760817a5c1b2fba1dee3a37b2d1974b41c8d11747"),  # noqa: E501
        ("annotations_with_malignancy.csv", 268015, "d29a49d0a72aecfacbcce91587691005f19dfb361708e72111e58d944f36ee2a"),  # noqa: E501
        ("candidates.csv", None, None),
    )),
    "luna-models": ("part2/models", (
        ("alternate_cls_2019-06-16_14.18.58_ch12-other-model.best.state", 901314, "d0d2ffd96b8f6dc0f3c0b2b8ac76316083e3a006a143dd0bb23e9fb32d2974d2"),  # noqa: E501
        ("cls_2019-06-23_14.57.45_redo.best.state", 1776153, "5d0fb82eb18d6a3621251ba8b59919a0d5c3515bbc2444ed4c2b87d0f7fe423f"),  # noqa: E501
        ("cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state", 893393, "0f2af10e3bb0f5159cb6ea0df97a2d9f4ac824e28d18a3f18746f39de5bb0727"),  # noqa: E501
        ("seg_2019-06-22_22.55.11_ch12-no-aug-bn-all-metrics-more-samples.750000.state", 1009424, "014fe6cef028d00999e731134161dc6ccd307acbfd9faacc37ba3f46e29bb10c"),  # noqa: E501
        ("seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_fn8-adam.best.state", 1451636, "cb3291697a78d99d347054d9236f43e6acd79646861864b03fc109af38ba88fb"),  # noqa: E501
    )),
}

CIFAR10 = FileSpec("cifar-10-python.tar.gz",
                   "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                   170_498_071, None, "c58f30108f718f92721af3b95e74349a")  # md5: the CIFAR page
RESNET101 = FileSpec("weights/resnet101-63fe2227.pth",
                     "https://download.pytorch.org/models/resnet101-63fe2227.pth",
                     None, "63fe2227", None)        # torchvision: sha256 starts with 63fe2227

# LUNA16 on Zenodo: part 1/2 (record 3723295) holds subsets 0-6 and the CSVs, part 2/2 (record
# 4121926) subsets 7-9. Size and md5 as Zenodo lists them for each file.
ZENODO_URL = "https://zenodo.org/records/{record}/files/{name}?download=1"
LUNA_SUBSETS = {  # subset: (record, size in bytes, md5)
    0: (3723295, 6_811_924_508, "1065b0f42b8c25cf29260fd924a3c3a2"),
    1: (3723295, 6_334_778_552, "2eda28bb123543074f5cd849499b87ff"),
    2: (3723295, 7_257_937_108, "685b484b085bcdb81c525f3b1bf97c51"),
    3: (3723295, 6_896_620_114, "54707e9e8954af29326eed60f38ea321"),
    4: (3723295, 6_856_144_330, "98225ccb1a41fc434631f63f4284796a"),
    5: (3723295, 6_610_460_097, "395ec714c4123cf213fb7b08f05ee9cc"),
    6: (3723295, 6_531_050_274, "d162df1444a6f2674ab8273c7f9e1520"),
    7: (4121926, 6_313_598_213, "e99b8921990d1414bb5e92130371e8a3"),
    8: (4121926, 6_025_767_505, "38260ca9a8741888997bcebedfabc3f1"),
    9: (4121926, 6_699_650_017, "e55c473bbeebd712eb2224a58998be8e"),
}
# LUNA's own CSVs, saved under luna/ (the book's copies are in part2/luna/): (file, size, md5).
LUNA_CSVS = (
    ("annotations.csv", 136_986, "f4404df491aee6445a4485061bfdffdd"),
    ("candidates.csv", None, None),
)


def read_file_table(path):
    """((file, size, sha256), ...) from a table file: `name size sha256` lines, # comments."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, size, sha256 = line.rsplit(" ", 2)
        if not (size.isdigit() and len(sha256) == 64):
            raise DataError(f"{path}: line {number} is not `name size sha256`")
        rows.append((name, int(size), sha256))
    return tuple(rows)


def registry():
    """Every downloadable name -> Entry: the book's files, then other sources (built on call)."""
    entries = {name: Entry(name, ABOUT[name], tuple(
        FileSpec(f"{folder}/{file}", None, size, sha256, None)
        for file, size, sha256 in (read_file_table(files) if isinstance(files, Path) else files)),
        None) for name, (folder, files) in BOOK_FILES.items()}
    entries["resnet101"] = Entry("resnet101", ABOUT["resnet101"], (RESNET101,), None)
    entries["cifar10"] = Entry("cifar10", ABOUT["cifar10"], (CIFAR10,), "cifar-10-batches-py")
    entries["luna-annotations"] = Entry("luna-annotations", ABOUT["luna-annotations"], tuple(
        FileSpec(f"luna/{file}", ZENODO_URL.format(record=3723295, name=file), size, None, md5)
        for file, size, md5 in LUNA_CSVS), None)
    # The challenge's evaluation files, unpacked where find_luna and evaluate_luna look. Zenodo
    # lists their sizes and md5s, but no copy was at hand to confirm them: unverified, their
    # sha256 printed, and each still checked for being a zip.
    for name, file, folder in (("luna-evaluation", "evaluationScript.zip", "evaluationScript"),
                               ("luna-candidates-v2", "candidates_V2.zip", "candidates_V2")):
        entries[name] = Entry(name, ABOUT[name], (FileSpec(
            f"luna/{file}", ZENODO_URL.format(record=3723295, name=file), None, None, None),),
            f"luna/{folder}")
    for i, (record, size, md5) in LUNA_SUBSETS.items():
        url = ZENODO_URL.format(record=record, name=f"subset{i}.zip")
        entries[f"luna-subset{i}"] = Entry(f"luna-subset{i}", ABOUT["luna-subset"].format(i=i), (
            FileSpec(f"luna/subset{i}.zip", url, size, None, md5),), f"luna/subset{i}")
    return entries


def human_size(n):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def digests(path, md5=False):
    """(sha256, md5 or None) hex digests of a file, read in chunks."""
    sha = hashlib.sha256()
    other = hashlib.md5(usedforsecurity=False) if md5 else None
    size = path.stat().st_size
    with open(path, "rb") as f, _progress(f"checksum {path.name}", size, 0,
                                          disable=size < BIG_FILE) as bar:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            if other:
                other.update(chunk)
            bar.update(len(chunk))
    return sha.hexdigest(), other.hexdigest() if other else None


def verify(spec, path):
    """(True | False | None, sha256 or None, why): None when there is no checksum to check."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return False, None, f"size {size} bytes, expected {spec.size}"
    sha256, md5 = digests(path, md5=spec.md5 is not None)
    if spec.sha256 and not sha256.startswith(spec.sha256):
        return False, sha256, f"sha256 {sha256[:16]}..., expected {spec.sha256[:16]}..."
    if spec.md5 and md5 != spec.md5:
        return False, sha256, f"md5 {md5}, expected {spec.md5}"
    if not (spec.sha256 or spec.md5):
        return None, sha256, "no published checksum"
    return True, sha256, ""


def source(spec, mirror=None):
    """A URL, or a Path in a mirror folder: the file's own URL, else the mirror or the book repo."""
    if spec.url:
        return spec.url
    quoted = urllib.parse.quote(spec.relpath)          # the DICOM folder holds spaces
    if not mirror:
        return BOOK_BASE_URL + quoted
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + quoted
    return Path(mirror).expanduser() / spec.relpath


def _size(path):
    return path.stat().st_size if path.exists() else 0


def _progress(name, total, initial, disable=False):
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True,
                unit_divisor=1024, leave=False, dynamic_ncols=True, disable=disable)


def _cannot_write(part, e, kept=True):
    """The DataError for a failed write of a download (full disk, read-only folder)."""
    have = _size(part)
    tail = (f"; {have:,} bytes kept in {part}: free space and run the same command again to "
            "resume" if kept and have else "")
    return DataError(f"{part}: cannot write{write_failure(e)}{tail}")


def _fetch_once(url, part, size, timeout):
    """Append the rest of `url` to `part`; None when complete, else why the transfer stopped.

    With a known `size` no byte past it is stored: a server that offers or sends more is
    refused and the partial file deleted (never a .part filled past the registry's size)."""
    have = _size(part)
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return None
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:                     # nothing past the end: the .part is whole
            return None
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        return f"{getattr(e, 'reason', None) or e}"
    with response:
        if have:
            content_range = response.headers.get("Content-Range", "")
            if getattr(response, "status", None) != 206 or not content_range:
                tqdm.write(f"{part.name}: the server ignored the resume request; starting over")
                have = 0
            elif not content_range.startswith(f"bytes {have}-"):
                raise DataError(f"{url}: the server resumed at {content_range!r}, not byte {have};"
                                f" delete {part} and run the command again")
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None and length.isdigit() else size
        if size is not None and expected is not None and expected > size:
            _remove_part(part)
            raise DataError(f"{url}: the server offers {expected:,} bytes, the registry lists "
                            f"{size:,}: not the file expected, nothing kept")
        left = None if size is None else size - have       # bytes still to store
        try:
            with open(part, "ab" if have else "wb") as f, \
                    _progress(part.name, expected, have) as bar:
                while True:
                    try:
                        chunk = response.read(CHUNK if left is None else min(CHUNK, left + 1))
                    except (OSError, http.client.HTTPException) as e:  # reset, timeout, ...
                        return f"{type(e).__name__}: {e}"
                    if not chunk:
                        break
                    if left is not None and len(chunk) > left:     # past the registry's size
                        f.close()
                        _remove_part(part)
                        raise DataError(f"{url}: the server sent more than the {size:,} bytes "
                                        "the registry lists: not the file expected, nothing kept")
                    f.write(chunk)
                    bar.update(len(chunk))
                    if left is not None:
                        left -= len(chunk)
        except OSError as e:                              # the disk: full, read-only
            raise _cannot_write(part, e) from None
    if expected is not None and _size(part) < expected:
        return f"connection closed after {_size(part)} of {expected} bytes"
    return None


def _remove_part(part):
    try:
        part.unlink()
    except OSError:
        pass


def fetch(url, part, size=None, timeout=TIMEOUT_S):
    """Download `url` into `part`, resuming what is there; retries while each try makes progress."""
    for attempt in range(1, ATTEMPTS + 1):
        before = _size(part)
        why = _fetch_once(url, part, size, timeout)
        if why is None:
            return part
        if _size(part) <= before or attempt == ATTEMPTS:
            kept = (f"; {_size(part)} bytes kept in {part}: run the same command again to resume"
                    if _size(part) else "")
            raise DataError(f"{url}: {why}{kept}")
        tqdm.write(f"{part.name}: {why}; resuming at byte {_size(part)}")


def copy_local(src, part, size=None):
    """Copy a file from a mirror folder into `part`, resuming what is there. With a known
    `size`, a source larger than it is refused before any byte is copied; a failed write
    (a full disk) removes the partial file: a local copy is cheap to start again."""
    if not src.is_file():
        raise DataError(f"{src} not found in the mirror folder (${MIRROR_ENV})")
    total, have = src.stat().st_size, _size(part)
    if size is not None and total > size:
        raise DataError(f"{src}: {total:,} bytes in the mirror folder, the registry lists "
                        f"{size:,}: not the file expected")
    if have > total:
        have = 0
    try:
        with open(src, "rb") as fin, open(part, "ab" if have else "wb") as fout, \
                _progress(part.name, total, have) as bar:
            fin.seek(have)
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                bar.update(len(chunk))
    except OSError as e:
        error = _cannot_write(part, e, kept=False)
        _remove_part(part)
        raise error from None
    return part


# What the first bytes of a file of each suffix are (torch: a zip, or a legacy pickle).
MAGIC = {".pth": (0, (b"PK\x03\x04", b"\x80")), ".pt": (0, (b"PK\x03\x04", b"\x80")),
         ".t": (0, (b"PK\x03\x04", b"\x80")), ".state": (0, (b"PK\x03\x04", b"\x80")),
         ".zip": (0, (b"PK\x03\x04", b"PK\x05\x06")), ".gz": (0, (b"\x1f\x8b",)),
         ".jpg": (0, (b"\xff\xd8\xff",)), ".png": (0, (b"\x89PNG\r\n\x1a\n",)),
         ".hdf5": (0, (b"\x89HDF\r\n\x1a\n",)), ".wav": (0, (b"RIFF",)),
         ".dcm": (128, (b"DICM",)), ".mp4": (4, (b"ftyp",))}
TEXT_SUFFIXES = (".csv", ".txt", ".py")


def wrong_kind(path, name=None):
    """Why `path` cannot be the file its name (or `name`, for a .part) says ('' when it can): an
    HTML error page saved as a .pth, a .csv that is not text. The check for files with no
    published checksum."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    suffix = Path(name or path).suffix.lower()
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html", b"<head")):
        return f"an HTML page, not a {suffix} file"
    if not head:
        return "empty"
    if suffix in MAGIC:
        offset, starts = MAGIC[suffix]
        if not head[offset:].startswith(starts):
            return f"does not start like a {suffix} file"
    if suffix in TEXT_SUFFIXES:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:                  # not just a character cut at the end
                return f"not text (a {suffix} file), byte {e.start} is not UTF-8"
    return ""


def get_file(spec, root, mirror=None, timeout=TIMEOUT_S):
    """Make root/relpath a verified copy of the file; returns what happened, in words.

    A file with no published checksum is still checked for being the kind its name says
    (wrong_kind): an HTML error page saved as a .pth is deleted, its sha256 printed."""
    dest = root / spec.relpath
    if dest.exists():
        ok, _, why = verify(spec, dest)
        if ok is None and wrong_kind(dest):
            ok, why = False, wrong_kind(dest)
        if ok:
            return "already present and verified"
        if ok is None:
            return "already present, no checksum to verify"
        tqdm.write(f"{spec.relpath}: present but {why}; downloading it again")
    output_dir(dest.parent, "data folder")
    part = dest.with_name(dest.name + ".part")
    src = source(spec, mirror)
    if isinstance(src, Path):
        copy_local(src, part, spec.size)
    else:
        fetch(src, part, spec.size, timeout)
    ok, sha256, why = verify(spec, part)
    if ok is False:
        part.unlink()
        raise DataError(f"{spec.relpath}: checksum failed ({why}); deleted the partial file {part}")
    kind = wrong_kind(part, spec.relpath) if ok is None else ""
    if kind:
        got = _size(part)
        part.unlink()
        raise DataError(f"{spec.relpath}: the download is {kind} (no checksum is published; got "
                        f"{got:,} bytes, sha256 {sha256}); deleted it")
    try:
        os.replace(part, dest)
    except OSError as e:
        raise DataError(f"{dest}: cannot rename the download into place ({e.strerror or e})"
                        ) from None
    if ok is None:
        print(f"{spec.relpath}: could not be verified (no published checksum); "
              f"got {_size(dest)} bytes, sha256 {sha256}")
        return "downloaded, not verified"
    return "downloaded and verified"


def _member_path(staging, name, archive):
    """Where an archive member lands; a name that escapes the destination is a DataError."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    bad = name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")
    path = staging.joinpath(*parts).resolve()
    if bad or not path.is_relative_to(staging.resolve()):
        raise DataError(f"{archive.name}: refusing member {name!r}: it would land outside"
                        f" {staging}")
    return path


def _archive_members(archive, handle, staging):
    """[(path, size, open_member or None for a folder)], every path checked before any write.
    Links (a symlink in a zip is a member whose mode says S_IFLNK) and special files are
    refused, in a zip as in a tar."""
    if isinstance(handle, zipfile.ZipFile):
        members = []
        for i in handle.infolist():
            kind = stat.S_IFMT(i.external_attr >> 16)      # the Unix file type, when stored
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(f"{archive.name}: refusing member {i.filename!r}: links and "
                                "special files are not extracted")
            members.append((_member_path(staging, i.filename, archive), i.file_size,
                            None if i.is_dir() else (lambda i=i: handle.open(i))))
        return members
    members = []
    for m in handle.getmembers():
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{archive.name}: refusing member {m.name!r}: links and special files"
                            " are not extracted")
        members.append((_member_path(staging, m.name, archive), m.size,
                        None if m.isdir() else (lambda m=m: handle.extractfile(m))))
    return members


def _check_tar_end(archive, handle):
    """A tar ends with two zero blocks; Python's tarfile reads one cut at a member boundary as
    a shorter archive, so the end is checked here: a truncated tar is an error."""
    handle.fileobj.seek(handle.offset)
    end = handle.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.strip(b"\0"):
        raise DataError(f"{archive}: truncated (the tar ends without its end-of-archive "
                        "blocks); download it again")


def _unpack(archive, handle, staging):
    """Every member of an open archive into `staging`; returns how many files were written."""
    members = _archive_members(archive, handle, staging)
    if isinstance(handle, tarfile.TarFile):
        _check_tar_end(archive, handle)
    files = [(path, opener) for path, _, opener in members if opener]
    if not files:
        raise DataError(f"{archive}: holds no files (an empty or truncated archive)")
    total = sum(size for _, size, opener in members if opener)
    with _progress(f"unpack {archive.name}", total, 0) as bar:
        for path, _, opener in members:
            if opener is None:
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with opener() as fin, open(path, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
                    bar.update(len(chunk))
    return len(files)


def extract_archive(archive, target):
    """Unpack a .zip or .tar(.gz) into the folder `target`, refusing members outside it; a
    damaged, truncated or empty archive, or a full disk, is one DataError and leaves nothing."""
    staging = target.with_name(f".{target.name}.extracting")
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        is_zip = zipfile.is_zipfile(archive)
        with (zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)) as handle:
            _unpack(archive, handle, staging)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        shutil.rmtree(staging, ignore_errors=True)
        kind = "zip" if zipfile.is_zipfile(archive) else "zip or tar"
        raise DataError(f"{archive}: cannot unpack: a damaged or truncated {kind} archive "
                        f"({one_line(e, 100)})") from None
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{archive}: cannot unpack into {target.parent}"
                        f"{write_failure(e)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    inside = list(staging.iterdir())       # an archive holding one folder named like the target
    src = inside[0] if len(inside) == 1 and inside[0].is_dir() and inside[0].name == target.name \
        else staging
    if target.exists():
        shutil.rmtree(target)              # an earlier unpacking that was never marked verified
    os.replace(src, target)
    if src != staging:
        staging.rmdir()
    return target


def _checksum(spec):
    return f"md5 {spec.md5}" if spec.md5 else f"sha256 {spec.sha256}" if spec.sha256 else None


def archive_verified(spec, target):
    """True when `target` was unpacked from an archive that matched this spec's checksum."""
    mark = target / VERIFIED_MARK
    return mark.is_file() and _checksum(spec) is not None and \
        mark.read_text().split("  ")[0] == _checksum(spec)


def fetch_archive(entry, root, mirror=None, keep_archive=False, timeout=TIMEOUT_S):
    """Download, verify and unpack an archive entry; returns the folder it unpacked into."""
    spec, target = entry.files[0], root / entry.extract_to
    if archive_verified(spec, target):
        print(f"{entry.name}: {target} already unpacked from a verified archive")
        return target
    what = get_file(spec, root, mirror, timeout)
    archive = root / spec.relpath
    extract_archive(archive, target)
    write_text(target / VERIFIED_MARK, f"{_checksum(spec) or 'unverified'}  {archive.name}\n",
               "mark")
    if keep_archive:
        kept = f"kept the archive {archive}"
    else:
        archive.unlink()
        kept = f"deleted the archive {archive.name} (--keep-archive keeps it)"
    print(f"{entry.name}: {what}, unpacked into {target}; {kept}")
    return target


def download_entry(entry, root, mirror=None, keep_archive=False, timeout=TIMEOUT_S):
    """Every file of one entry under `root`; returns their paths (or the unpacked folder)."""
    if entry.extract_to:
        return [fetch_archive(entry, root, mirror, keep_archive, timeout)]
    outcomes = Counter(get_file(spec, root, mirror, timeout) for spec in entry.files)
    summary = ", ".join(f"{n} {what}" for what, n in outcomes.items())
    print(f"{entry.name}: {summary}")
    return [root / spec.relpath for spec in entry.files]


def download(names, data_dir=None, mirror=None, keep_archive=False, timeout=TIMEOUT_S):
    """Fetch, verify and place the named entries under the data root; returns the paths."""
    entries = registry()
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise DataError(f"unknown data name {', '.join(unknown)}; the names are listed by:"
                        "  python -m common.data list")
    root = output_dir(data_root(data_dir), "--data-dir" if data_dir else "data root")
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    print(f"data root: {root}" + (f"  (book files from ${MIRROR_ENV}={mirror})" if mirror else ""))
    paths = []
    for name in dict.fromkeys(names):
        paths += download_entry(entries[name], root, mirror, keep_archive, timeout)
    return paths


def entry_status(entry, root):
    """Whether an entry is under `root` and verified, in a few words (hashes every file)."""
    if entry.extract_to:
        spec, target = entry.files[0], root / entry.extract_to
        archive = root / spec.relpath
        if archive_verified(spec, target):
            return "verified (unpacked)"
        if archive.exists():
            return "archive present, not unpacked"
        if archive.with_name(archive.name + ".part").exists():
            return "partial download"
        return "present, not verified" if target.is_dir() else "missing"
    found = Counter()
    for spec in entry.files:
        path = root / spec.relpath
        ok = verify(spec, path)[0] if path.is_file() else "missing"
        if ok is None and wrong_kind(path):
            ok = "wrong kind"
        found[{True: "verified", False: "mismatch", None: "unverifiable"}.get(ok, ok)] += 1
    n = len(entry.files)
    if found["mismatch"]:
        return f"CHECKSUM MISMATCH ({found['mismatch']} of {n})"
    if found["wrong kind"]:
        return f"WRONG KIND OF FILE ({found['wrong kind']} of {n})"
    if found["missing"] == n:
        return "missing"
    if found["missing"]:
        return f"incomplete ({n - found['missing']} of {n} present)"
    if found["unverifiable"] == n:
        return "present, not verifiable"
    if found["unverifiable"]:
        return f"verified ({found['unverifiable']} without checksum)"
    return "verified"


def list_data(data_dir=None):
    """Print every name: files, total size, status under the data root; returns the rows."""
    root = data_root(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"{'--data-dir' if data_dir else 'data root'} {root}: a file, not a folder")
    rows = []
    for entry in registry().values():
        sizes = [spec.size for spec in entry.files]
        known, unknown = sum(s for s in sizes if s is not None), None in sizes
        size = "?" if unknown and not known else human_size(known) + ("+" if unknown else "")
        rows.append({"name": entry.name, "files": len(entry.files), "size": size,
                     "status": entry_status(entry, root), "about": entry.about})
    print(f"data root: {root}")
    print(f"{'NAME':<20}{'FILES':>5}  {'SIZE':>11}  {'STATUS':<32}ABOUT")
    for r in rows:
        print(f"{r['name']:<20}{r['files']:>5}  {r['size']:>11}  {r['status']:<32}{r['about']}")
    print("get one with:  python -m common.data download NAME [NAME...]")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m common.data",
                                description="List and download the data the chapters read.")
    sub = p.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="every name: files, size, present and verified or not")
    add_data_dir_argument(p_list)
    p_get = sub.add_parser("download", help="download, verify (and unpack) the named data")
    p_get.add_argument("names", nargs="+", metavar="NAME", help="registry names, see `list`")
    p_get.add_argument("--keep-archive", action="store_true",
                       help="keep .zip/.tar.gz archives after unpacking them (default: delete)")
    add_data_dir_argument(p_get)
    args = p.parse_args(argv)
    if args.command == "list":
        return list_data(args.data_dir)
    return download(args.names, args.data_dir, keep_archive=args.keep_archive)


if __name__ == "__main__":
    run_cli(main)
