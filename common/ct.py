"""CT volumes in Hounsfield units, patient (xyz, mm) <-> voxel (irc) coordinates, and crops.

Book chapter 10. A `Ct` comes from a MetaImage file (`.mhd` + `.raw`, LUNA16's format) or a DICOM
series folder (chapter 4's CT). For an uncompressed `.raw` the voxels stay on disk behind
`np.memmap`, so a crop reads only its own bytes and training needs no crop cache.

    ct = load_ct("data/luna/subset0/1.3.6...mhd")
    crop, center_irc = ct.raw_candidate(center_xyz, (32, 48, 48))
"""
import functools
import hashlib
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common.errors import DataError

HU_MIN, HU_MAX = -1000.0, 1000.0       # the book clips: air below, bone and metal above

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
    """The MetaImage header as a dict of strings (keys as written, e.g. `ElementDataFile`)."""
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


def _memmap_voxels(mhd_path, header):
    """A read-only memmap of the .raw next to an .mhd, or None when the file is not plain raw."""
    dtype = _MET_DTYPES.get(header.get("ElementType", ""))
    data_file = header["ElementDataFile"]
    compressed = header.get("CompressedData", "False").lower() == "true"
    channels = int(header.get("ElementNumberOfChannels", "1"))
    header_size = int(header.get("HeaderSize", "0"))
    if dtype is None or compressed or channels != 1 or header_size < 0 \
            or data_file.upper() in ("LOCAL", "LIST") or "%" in data_file:
        return None
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False"))
    dtype = np.dtype(dtype).newbyteorder(">" if msb.lower() == "true" else "<")
    try:
        dims_xyz = [int(v) for v in header["DimSize"].split()]
    except ValueError:
        raise DataError(f"{mhd_path}: malformed DimSize {header['DimSize']!r}") from None
    if len(dims_xyz) != 3:
        return None
    raw_path = Path(mhd_path).parent / data_file
    if not raw_path.is_file():
        raise DataError(f"{mhd_path}: its voxel file {raw_path} is missing")
    expected = header_size + int(np.prod(dims_xyz)) * dtype.itemsize
    actual = raw_path.stat().st_size
    if actual < expected:
        raise DataError(f"{raw_path}: truncated ({actual:,} bytes, the header says {expected:,})")
    return np.memmap(raw_path, dtype=dtype, mode="r", offset=header_size,
                     shape=tuple(reversed(dims_xyz)))           # x fastest -> (I, R, C)


def _sitk_error(path, e):
    message = str(e).strip().splitlines()
    detail = next((m for m in message if "ERROR" in m or "Unable" in m),
                  message[-1] if message else "")
    return DataError(f"{path}: SimpleITK cannot read it ({detail.strip()[:200]})")


def load_mhd(mhd_path):
    """A MetaImage CT: geometry through SimpleITK, voxels memory-mapped when the file allows it."""
    mhd_path = Path(mhd_path)
    if not mhd_path.is_file():
        raise DataError(f"{mhd_path} not found")
    header = read_mhd_header(mhd_path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(mhd_path))
    voxels = _memmap_voxels(mhd_path, header)
    try:
        if voxels is not None:
            reader.ReadImageInformation()                   # header only: no voxel is read
            image = reader
        else:
            image = reader.Execute()                        # compressed etc.: read it all
            voxels = sitk.GetArrayFromImage(image)
    except RuntimeError as e:
        raise _sitk_error(mhd_path, e) from None
    return Ct(voxels, image.GetOrigin(), image.GetSpacing(), image.GetDirection(), mhd_path)


def load_dicom_series(folder):
    """The largest DICOM series in a folder; SimpleITK applies the rescale to HU."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of DICOM files")
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)
                     for s in series_ids), key=len, default=())
        if not files:
            raise DataError(f"{folder}: no DICOM series found")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    except RuntimeError as e:
        raise _sitk_error(folder, e) from None
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
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f".{npy.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, np.ascontiguousarray(voxels))
        os.replace(tmp, npy)
    return np.load(npy, mmap_mode="r")


def write_mhd(mhd_path, voxels, origin_xyz, spacing_xyz, direction=None):
    """Write an (I, R, C) array as MetaImage `.mhd` + uncompressed `.raw` (via SimpleITK)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    image.SetOrigin(tuple(map(float, origin_xyz)))
    image.SetSpacing(tuple(map(float, spacing_xyz)))
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(mhd_path), useCompression=False)
    return Path(mhd_path)
