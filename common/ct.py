"""CT volumes in Hounsfield units, patient (xyz, mm) <-> voxel (irc) coordinates, and crops.

Book chapter 10. A `Ct` comes from a MetaImage file (`.mhd` + `.raw`, LUNA16's format) or a DICOM
series folder (chapter 4's CT). For an uncompressed `.raw` the voxels stay on disk behind
`np.memmap`, so a crop reads only its own bytes and training needs no crop cache.

    ct = load_ct("data/luna/subset0/1.3.6...mhd")
    crop, center_irc = ct.raw_candidate(center_xyz, (32, 48, 48))

A mapped file that shrinks under a running reader (truncated, or rewritten in place) is one
DataError naming it, not a silent death by SIGBUS (common/mapped.py).
"""
import functools
import hashlib
from collections import namedtuple
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common.errors import DataError
from common.files import atomic_path, write_text
from common.mapped import check_mapped, mapped, shrank

HU_MIN, HU_MAX = -1000.0, 1000.0       # the book clips: air below, bone and metal above

# What a CT can be. A header beyond these is damaged (a swapped line, a fuzzed digit), not a
# scan, and is refused before any array is made from it: a voxel step of 700 m once made the
# analysis' picture ask numpy for gigabytes.
SPACING_MM = (0.01, 50.0)    # a voxel step: micro-CT's 10 um up to slabs 5x any CT's 10 mm
MAX_ORIGIN_MM = 10_000.0     # |origin| on each axis: scanner coordinates lie within a few metres
#                              of the isocentre (a table travels about 2 m); 10 m is no scanner
MAX_SIZE = 16_384            # voxels along an axis: 512 to 2,048 across, a few thousand slices
DIRECTION_TOLERANCE = 1e-3   # largest |D^T D - I|: cosines written with 4 decimals or more pass,
#                              a scale or shear of 0.1% does not

# Frames kept apart by name (book ch10): patient xyz in mm (LPS), array index-row-column in voxels.
XyzTuple = namedtuple("XyzTuple", ["x", "y", "z"])
IrcTuple = namedtuple("IrcTuple", ["index", "row", "col"])

# MetaImage element types that map onto a plain NumPy dtype (the memmap fast path).
_MET_DTYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}


def xyz_to_irc(xyz, origin_xyz, spacing_xyz, direction, round_to_voxel=True):
    """Patient mm -> voxel (index, row, col). Right for any direction matrix and spacing.

    The voxel (c, r, i) sits at origin + D @ (spacing * (c, r, i)), so the inverse is
    (c, r, i) = D^-1 @ (xyz - origin) / spacing. The book wrote (xyz - origin) @ D^-1, which
    equals this only when D is symmetric (LUNA's identity matrices are).
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    offset = np.asarray(xyz, dtype=np.float64) - np.asarray(origin_xyz, dtype=np.float64)
    cri = np.linalg.solve(direction, offset) / np.asarray(spacing_xyz, dtype=np.float64)
    if round_to_voxel:
        cri = np.round(cri).astype(int)
        return IrcTuple(int(cri[2]), int(cri[1]), int(cri[0]))
    return IrcTuple(float(cri[2]), float(cri[1]), float(cri[0]))


def irc_to_xyz(irc, origin_xyz, spacing_xyz, direction):
    """Voxel (index, row, col), fractional allowed -> patient mm."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    cri = np.asarray(irc, dtype=np.float64)[::-1]
    xyz = direction @ (cri * np.asarray(spacing_xyz, dtype=np.float64))
    xyz += np.asarray(origin_xyz, dtype=np.float64)
    return XyzTuple(*(float(v) for v in xyz))


def crop_bounds(center_irc, width_irc, shape_irc):
    """Start/end per axis of a `width_irc` box around `center_irc`, shifted inward at the edges."""
    bounds = []
    for center, width, size in zip(center_irc, width_irc, shape_irc):
        start = int(round(center)) - width // 2
        start = max(0, min(start, size - width))
        bounds.append((start, min(start + width, size)))
    return bounds


class Ct:
    """A CT volume: `voxels` as stored (a memmap where possible), HU on demand, and geometry."""

    def __init__(self, voxels, origin_xyz, spacing_xyz, direction, path=None):
        self.voxels = voxels                                    # (I, R, C), stored dtype
        self.origin_xyz = XyzTuple(*map(float, origin_xyz))
        self.spacing_xyz = XyzTuple(*map(float, spacing_xyz))
        self.direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        self.path = Path(path) if path is not None else None

    @property
    def shape(self):
        return tuple(self.voxels.shape)

    @functools.cached_property
    def hu(self):
        """The whole volume as float32 HU clipped to [-1000, 1000] (reads every voxel once)."""
        check_mapped(self.voxels)
        return to_hu(self.voxels)

    def xyz_to_irc(self, xyz, round_to_voxel=True):
        return xyz_to_irc(xyz, self.origin_xyz, self.spacing_xyz, self.direction, round_to_voxel)

    def irc_to_xyz(self, irc):
        return irc_to_xyz(irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def crop_irc(self, center_irc, width_irc):
        """Float32 HU box of `width_irc` voxels around `center_irc`, shifted inside the volume.

        Only the box's bytes are read from a memmap. An axis shorter than the box is padded with
        air (-1000 HU) at its far end.
        """
        bounds = crop_bounds(center_irc, width_irc, self.shape)
        check_mapped(self.voxels)
        crop = to_hu(self.voxels[tuple(slice(a, b) for a, b in bounds)])
        if crop.shape != tuple(width_irc):
            padding = [(0, w - s) for w, s in zip(width_irc, crop.shape)]
            crop = np.pad(crop, padding, constant_values=HU_MIN)
        return crop

    def raw_candidate(self, center_xyz, width_irc):
        """The book's `getRawCandidate`: (HU crop, center_irc) for a centre in mm."""
        center_irc = self.xyz_to_irc(center_xyz)
        return self.crop_irc(center_irc, width_irc), center_irc


def to_hu(voxels):
    """Stored values -> float32 HU clipped to the book's [-1000, 1000]."""
    return np.clip(np.asarray(voxels, dtype=np.float32), HU_MIN, HU_MAX)


def read_mhd_header(mhd_path):
    """The MetaImage header as a dict of strings (keys as written, e.g. `ElementDataFile`),
    unchecked: `check_mhd` is the reader that validates it."""
    header = {}
    try:
        with open(mhd_path, "rb") as f:
            raw = f.read(64 * 1024)
    except OSError as e:
        raise DataError(f"{mhd_path}: cannot read ({e.strerror})") from None
    for line in raw.decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":                 # the last header line
            break
    if "DimSize" not in header or "ElementDataFile" not in header:
        raise DataError(f"{mhd_path}: not a MetaImage header (no DimSize/ElementDataFile)")
    return header


# What check_mhd returns: the header's fields parsed and validated. dims_xyz in voxels (x
# fastest), spacing_xyz in mm, direction a (3, 3) matrix whose columns are the x, y, z axes
# (the file's TransformMatrix is written column by column), dtype the .raw's NumPy dtype with
# its byte order, raw_path None where the voxels are not one external file (LOCAL, LIST, a
# pattern), data_offset the byte where the voxels start in raw_path (None: compressed).
MhdHeader = namedtuple("MhdHeader", "path dims_xyz spacing_xyz origin_xyz direction element_type "
                                    "dtype raw_path data_offset compressed fields")


def _numbers(where, field, text, count, kind=float):
    """`count` numbers from a header value; a DataError names the field otherwise."""
    try:
        values = [kind(v) for v in text.split()]
    except ValueError:
        values = None
    if values is None or len(values) != count:
        raise DataError(f"{where}: {field} {text!r}: expected {count} numbers")
    return values


def spacing_problem(spacing):
    """What is wrong with 3 voxel steps (mm) as a CT's, or None."""
    outside = [v for v in spacing if not SPACING_MM[0] <= v <= SPACING_MM[1]]
    if not outside:
        return None
    return (f"a voxel step of {outside[0]:g} mm is no CT's (each must lie between "
            f"{SPACING_MM[0]:g} and {SPACING_MM[1]:g} mm)")


def origin_problem(origin):
    """What is wrong with a CT's origin (mm), or None."""
    outside = [v for v in origin if not abs(v) <= MAX_ORIGIN_MM]
    if not outside:
        return None
    return (f"{outside[0]:g} mm from the scanner's origin is no CT's (each coordinate must lie "
            f"within {MAX_ORIGIN_MM:,.0f} mm)")


def direction_problem(matrix):
    """What is wrong with a (3, 3) direction matrix (columns: the x, y, z axes), or None."""
    matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    off = float(np.abs(matrix.T @ matrix - np.eye(3)).max())
    if off <= DIRECTION_TOLERANCE:
        return None
    return (f"not orthonormal (axes of length 1 at right angles: |D^T D - I| is {off:.2g}, "
            f"at most {DIRECTION_TOLERANCE:g})")


def size_problem(dims):
    """What is wrong with a CT's voxel counts per axis, or None."""
    if all(1 <= n <= MAX_SIZE for n in dims):
        return None
    return f"each size must lie between 1 and {MAX_SIZE:,} voxels"


def check_geometry(where, origin_xyz, spacing_xyz, direction, size_xyz=None):
    """A DataError naming `where` and the field unless the geometry is a CT's: spacing finite
    and within SPACING_MM, the origin finite and within MAX_ORIGIN_MM, the (3, 3) direction
    matrix finite, invertible (xyz_to_irc solves with it) and orthonormal, and the size (when
    given) within MAX_SIZE."""
    spacing = np.asarray(spacing_xyz, dtype=np.float64)
    if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise DataError(f"{where}: spacing {tuple(spacing.tolist())} mm: a CT needs 3 finite "
                        "spacings > 0")
    if problem := spacing_problem(spacing):
        raise DataError(f"{where}: spacing {tuple(spacing.tolist())} mm: {problem}")
    origin = np.asarray(origin_xyz, dtype=np.float64)
    if origin.shape != (3,) or not np.isfinite(origin).all():
        raise DataError(f"{where}: origin {tuple(origin.tolist())}: a CT needs 3 finite numbers")
    if problem := origin_problem(origin):
        raise DataError(f"{where}: origin {tuple(origin.tolist())} mm: {problem}")
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.size != 9 or not np.isfinite(matrix).all():
        raise DataError(f"{where}: direction matrix {matrix.ravel().tolist()}: expected 9 "
                        "finite numbers")
    if abs(np.linalg.det(matrix.reshape(3, 3))) < 1e-6:
        raise DataError(f"{where}: direction matrix {matrix.ravel().tolist()} is singular "
                        "(not invertible): voxel and patient coordinates cannot be converted")
    if problem := direction_problem(matrix):
        raise DataError(f"{where}: direction matrix {matrix.ravel().tolist()}: {problem}")
    if size_xyz is not None and (problem := size_problem(size_xyz)):
        raise DataError(f"{where}: size {tuple(size_xyz)} voxels: {problem}")


def _field(header, *names, default=None):
    """(name, value) of the first of `names` present (MetaImage has synonyms), else default."""
    for name in names:
        if name in header:
            return name, header[name]
    return names[0], default


def check_mhd(mhd_path):
    """The validated header of a MetaImage CT, reading no voxel: an MhdHeader, or a DataError
    naming the file and the field that is wrong. 3-D only; geometry a CT's (check_geometry's
    bounds: DimSize, spacing, origin, an orthonormal direction); one channel of a supported
    ElementType; an uncompressed .raw exactly as long as the header says (longer is as wrong as
    shorter); a compressed one as long as its CompressedDataSize, when given."""
    mhd_path = Path(mhd_path)
    if mhd_path.is_dir():
        raise DataError(f"{mhd_path}: a folder, not a MetaImage .mhd file")
    if not mhd_path.is_file():
        raise DataError(f"{mhd_path} not found")
    header = read_mhd_header(mhd_path)
    where = str(mhd_path)
    ndims = header.get("NDims", "3")
    if ndims.strip() != "3":
        raise DataError(f"{where}: NDims {ndims!r}: a CT volume must be 3-D")
    try:
        dims = [int(v) for v in header["DimSize"].split()]
    except ValueError:
        raise DataError(f"{where}: malformed DimSize {header['DimSize']!r}") from None
    if len(dims) != 3:
        raise DataError(f"{where}: DimSize {header['DimSize']!r}: a CT volume must be 3-D "
                        f"(found {len(dims)} sizes)")
    if min(dims) < 1:
        raise DataError(f"{where}: DimSize {header['DimSize']!r}: every size must be positive")
    if problem := size_problem(dims):
        raise DataError(f"{where}: DimSize {header['DimSize']!r}: {problem}")
    name, text = _field(header, "ElementSpacing", "ElementSize", default="1 1 1")
    spacing = _numbers(where, name, text, 3)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise DataError(f"{where}: {name} {text!r}: spacings must be finite and > 0 (mm)")
    if problem := spacing_problem(spacing):
        raise DataError(f"{where}: {name} {text!r}: {problem}")
    name, text = _field(header, "Offset", "Origin", "Position", default="0 0 0")
    origin = _numbers(where, name, text, 3)
    if not all(np.isfinite(o) for o in origin):
        raise DataError(f"{where}: {name} {text!r}: the origin must be finite (mm)")
    if problem := origin_problem(origin):
        raise DataError(f"{where}: {name} {text!r}: {problem}")
    name, text = _field(header, "TransformMatrix", "Rotation", "Orientation",
                        default="1 0 0 0 1 0 0 0 1")
    direction = np.array(_numbers(where, name, text, 9)).reshape(3, 3).T  # written by columns
    if not np.isfinite(direction).all() or abs(np.linalg.det(direction)) < 1e-6:
        raise DataError(f"{where}: {name} {text!r}: the direction matrix must be finite and "
                        "invertible")
    if problem := direction_problem(direction):
        raise DataError(f"{where}: {name} {text!r}: the direction matrix is {problem}")
    element_type = header.get("ElementType", "")
    if element_type not in _MET_DTYPES:
        raise DataError(f"{where}: ElementType {element_type!r} is not supported (one of "
                        f"{', '.join(_MET_DTYPES)})")
    channels = header.get("ElementNumberOfChannels", "1")
    if channels.strip() != "1":
        raise DataError(f"{where}: ElementNumberOfChannels {channels!r}: a CT has one value "
                        "per voxel")
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
    dtype = np.dtype(_MET_DTYPES[element_type]).newbyteorder(
        ">" if msb.strip().lower() == "true" else "<")
    compressed = header.get("CompressedData", "False").strip().lower() == "true"
    try:
        header_size = int(header.get("HeaderSize", "0"))
    except ValueError:
        header_size = None
    if header_size is None or header_size < -1:
        raise DataError(f"{where}: HeaderSize {header.get('HeaderSize')!r}: expected a whole "
                        "number >= -1")
    data_file = header["ElementDataFile"]
    geometry = dict(path=mhd_path, dims_xyz=tuple(dims), spacing_xyz=XyzTuple(*spacing),
                    origin_xyz=XyzTuple(*origin), direction=direction,
                    element_type=element_type, dtype=dtype, compressed=compressed,
                    fields=header)
    if data_file.upper() in ("LOCAL", "LIST") or "%" in data_file or " " in data_file.strip():
        return MhdHeader(raw_path=None, data_offset=None, **geometry)   # SimpleITK reads these
    raw_path = mhd_path.parent / data_file
    if not raw_path.is_file():
        raise DataError(f"{mhd_path}: its voxel file {raw_path} is missing")
    actual = raw_path.stat().st_size
    if compressed:
        declared = header.get("CompressedDataSize")
        if declared is not None and declared.strip().isdigit() and int(declared) != actual:
            raise DataError(f"{raw_path}: {actual:,} bytes, the header's CompressedDataSize "
                            f"says {int(declared):,}")
        return MhdHeader(raw_path=raw_path, data_offset=None, **geometry)
    nbytes = int(np.prod(dims)) * dtype.itemsize
    expected = nbytes if header_size == -1 else header_size + nbytes
    what = f"DimSize {' '.join(map(str, dims))} of {element_type}"
    if actual < expected:
        raise DataError(f"{raw_path}: truncated ({actual:,} bytes, the header says "
                        f"{expected:,}: {what})")
    if actual > expected and header_size != -1:
        raise DataError(f"{raw_path}: {actual:,} bytes, the header says {expected:,} ({what}):"
                        " not the file this header describes")
    offset = actual - nbytes if header_size == -1 else header_size   # -1: the last bytes
    return MhdHeader(raw_path=raw_path, data_offset=offset, **geometry)


def _sitk_error(path, e):
    message = str(e).strip().splitlines()
    detail = next((m for m in message if "ERROR" in m or "Unable" in m),
                  message[-1] if message else "")
    return DataError(f"{path}: SimpleITK cannot read it ({detail.strip()[:200]})")


def _check_image(where, image, shape_irc=None):
    """A SimpleITK image that is one 3-D CT: one component, the expected size, sane geometry."""
    if image.GetDimension() != 3:
        raise DataError(f"{where}: a {image.GetDimension()}-D image, a CT volume must be 3-D")
    components = (image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image)
                  else image.GetNumberOfComponents())       # an Image, or a reader's header
    if components != 1:
        raise DataError(f"{where}: {components} values per voxel, a CT has one")
    if shape_irc is not None and tuple(reversed(image.GetSize())) != tuple(shape_irc):
        raise DataError(f"{where}: {image.GetSize()} voxels read, the header says "
                        f"{tuple(reversed(shape_irc))}")
    check_geometry(where, image.GetOrigin(), image.GetSpacing(), image.GetDirection(),
                   image.GetSize())


def load_mhd(mhd_path):
    """A MetaImage CT, its header validated by check_mhd: geometry through SimpleITK, voxels
    memory-mapped when the file allows it."""
    header = check_mhd(mhd_path)
    mhd_path = header.path
    shape_irc = tuple(reversed(header.dims_xyz))                 # x fastest -> (I, R, C)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(mhd_path))
    try:
        if header.data_offset is not None:
            reader.ReadImageInformation()                   # header only: no voxel is read
            image, voxels = reader, None
        else:
            image = reader.Execute()                        # compressed etc.: read it all
            voxels = sitk.GetArrayFromImage(image)
    except RuntimeError as e:
        raise _sitk_error(mhd_path, e) from None
    _check_image(mhd_path, image, shape_irc)
    if voxels is None:
        voxels = _memmap_raw(header, shape_irc)
    return Ct(voxels, image.GetOrigin(), image.GetSpacing(), image.GetDirection(), mhd_path)


def _memmap_raw(header, shape_irc):
    """The .raw that check_mhd measured, memory-mapped; gone or shorter by now (deleted or cut
    while a run goes on) is a DataError naming it."""
    needed = header.data_offset + int(np.prod(shape_irc)) * header.dtype.itemsize
    try:
        return mapped(np.memmap(header.raw_path, dtype=header.dtype, mode="r",
                                offset=header.data_offset, shape=shape_irc))
    except FileNotFoundError:
        raise DataError(f"{header.path}: its voxel file {header.raw_path} is missing (deleted "
                        "while in use?)") from None
    except (OSError, ValueError) as e:       # ValueError: shorter than the mapping by now
        try:
            size = header.raw_path.stat().st_size
        except OSError:
            size = None
        if size is None or size < needed:
            raise DataError(shrank(header.raw_path, size, needed)) from None
        raise DataError(f"{header.raw_path}: cannot map it ({e})") from None


def _check_dicom_header(where, header, n_files):
    """The first file's header of a DICOM series (a reader after ReadImageInformation), before
    any pixel is read: its rows and columns, the slice count, the in-plane spacing
    (PixelSpacing), position and orientation within check_geometry's bounds. The slices'
    spacing comes from their positions, so it is checked once the series is read."""
    names = (("size", "Columns, Rows and files", size_problem,
              (*header.GetSize()[:2], n_files)),
             ("spacing", "PixelSpacing", spacing_problem, header.GetSpacing()[:2]),
             ("origin", "ImagePositionPatient", origin_problem, header.GetOrigin()),
             ("direction", "ImageOrientationPatient", direction_problem, header.GetDirection()))
    for field, tags, problem_of, values in names:
        values = tuple(float(v) if field != "size" else int(v) for v in values)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: {field} {values} ({tags}): not finite numbers")
        if problem := problem_of(values):
            raise DataError(f"{where}: {field} {values} ({tags}): {problem}")


def load_dicom_series(folder):
    """The largest DICOM series in a folder; SimpleITK applies the rescale to HU. The first
    file's header is checked before the series is read, the series' geometry after."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of DICOM files")
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)
                     for s in series_ids), key=len, default=())
        if not files:
            raise DataError(f"{folder}: no DICOM series found")
        where = f"{folder} (DICOM series of {len(files)} files)"
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.ReadImageInformation()                   # one file's header: no pixel is read
        _check_dicom_header(where, header, len(files))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    except RuntimeError as e:
        raise _sitk_error(folder, e) from None
    _check_image(where, image)
    return Ct(sitk.GetArrayFromImage(image), image.GetOrigin(), image.GetSpacing(),
              image.GetDirection(), folder)


def load_ct(path, npy_cache=None):
    """A CT from an `.mhd` file or a DICOM series folder.

    With `npy_cache` (a folder), voxels that cannot be memory-mapped where they are (compressed
    MetaImage, DICOM) are written there once as `.npy` and memory-mapped from then on.
    """
    path = Path(path)
    if path.is_dir():
        ct = load_dicom_series(path)
    elif path.suffix.lower() == ".mhd":
        ct = load_mhd(path)
    elif not path.exists():
        raise DataError(f"{path} not found")
    else:
        raise DataError(f"{path}: expected an .mhd file or a DICOM series folder")
    if npy_cache is not None and not isinstance(ct.voxels, np.memmap):
        ct.voxels = _npy_memmap(ct.voxels, path, Path(npy_cache))
    return ct


def _npy_memmap(voxels, source, cache_dir):
    """`voxels` saved once as .npy (keyed by the source's path, size and time), then memmapped."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    npy = cache_dir / f"{source.stem}-{key.hexdigest()[:12]}.npy"
    if not npy.exists():
        with atomic_path(npy, "CT cache") as tmp:
            np.save(tmp, np.ascontiguousarray(voxels))
    try:
        return mapped(np.load(npy, mmap_mode="r"))
    except (OSError, ValueError) as e:
        raise DataError(f"CT cache {npy}: cannot read it ({e}); delete it to rebuild it") \
            from None


def write_mhd(mhd_path, voxels, origin_xyz, spacing_xyz, direction=None):
    """Write an (I, R, C) array as MetaImage `.mhd` + uncompressed little-endian `.raw`.

    Each file goes through the atomic writer, the .raw first and the header last, so a failure
    (a full disk: one CannotWrite naming the file) leaves neither half a volume nor a stray
    file."""
    mhd_path = Path(mhd_path)
    voxels = np.asarray(voxels)
    kinds = {v: k for k, v in _MET_DTYPES.items()}
    element_type = kinds.get(f"{voxels.dtype.kind}{voxels.dtype.itemsize}")
    if voxels.ndim != 3 or element_type is None:
        raise DataError(f"CT {mhd_path}: cannot store a {voxels.ndim}-D {voxels.dtype} array "
                        "as a MetaImage CT (3-D, one of " + ", ".join(_MET_DTYPES.values()) + ")")
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    numbers = lambda values: " ".join(repr(float(v)) for v in np.ravel(values))  # noqa: E731
    raw_path = mhd_path.with_suffix(".raw")
    header = "".join(f"{key} = {value}\n" for key, value in (
        ("ObjectType", "Image"), ("NDims", 3), ("BinaryData", "True"),
        ("BinaryDataByteOrderMSB", "False"), ("CompressedData", "False"),
        ("TransformMatrix", numbers(direction.T)),   # by columns: the x, y, z axes in turn
        ("Offset", numbers(origin_xyz)), ("CenterOfRotation", "0 0 0"),
        ("ElementSpacing", numbers(spacing_xyz)),
        ("DimSize", " ".join(map(str, voxels.shape[::-1]))),      # x fastest
        ("ElementType", element_type), ("ElementDataFile", raw_path.name)))
    with atomic_path(raw_path, "CT") as tmp, open(tmp, "wb") as f:
        f.write(np.ascontiguousarray(voxels, dtype=voxels.dtype.newbyteorder("<")).data)
    try:
        write_text(mhd_path, header, "CT")
    except BaseException:
        raw_path.unlink(missing_ok=True)                 # no voxels without their header
        raise
    return mhd_path
