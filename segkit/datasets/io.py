"""Reading images and masks from disk, with one documented rule for every format.

Images become ``H x W x 3`` ``uint8`` RGB arrays:

- 8-bit RGB: as is.
- Grayscale (``L``, 1-bit, 16-bit ``I;16``, single-band TIFF): replicated to 3 channels.
- Gray + alpha (2 bands): the gray band, replicated; RGBA: the alpha band is dropped, the colour
  values are kept (what ``PIL.Image.convert("RGB")``, OpenCV and torchvision do).
- Palette (``P``), CMYK, YCbCr, LAB, HSV images: converted to RGB by PIL.
- More than 3 bands (multispectral TIFF tiles): the first three bands, taken as R, G, B.
- ``uint16``: divided by 257 and rounded (65535 -> 255), the full-range scaling, so one value
  means the same brightness in every tile (12-bit data therefore looks dark but keeps its order).
  Other integer types: negatives clipped to 0, then scaled by ``255 / dtype max``.
- Floats: NaN/inf -> 0; if every value is <= 1 the image is taken as ``[0, 1]`` and multiplied by
  255, else values are taken as ``[0, 255]`` and clipped.

TIFF files are read with ``tifffile`` (16-bit, multi-band, planar layouts), falling back to PIL
for compressions tifffile cannot decode without ``imagecodecs`` (LZW, PackBits, JPEG); every other
format is read with PIL. EXIF orientation is ignored, like the masks it must match.

Masks become ``H x W`` integer arrays of class indices: palette PNGs give their indices (never
their colours), ``L``/16-bit give their values, an RGB(A) mask whose three channels are equal is
read as gray. A colour mask raises :class:`SampleError` (kind ``"colour-mask"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})


@dataclass(frozen=True)
class Problem:
    """One problem with one file: ``kind`` is a short tag, ``message`` names the file."""

    kind: str  # unpaired, undecodable, colour-mask, size-mismatch, out-of-range, ...
    path: str
    message: str
    values: tuple[int, ...] = ()  # offending mask values, for "out-of-range"
    hint: str = ""  # how to fix it (shared by every file with this problem)


class SampleError(ValueError):
    """A sample that cannot be used; the message names the file, the problem and the fix."""

    def __init__(
        self,
        kind: str,
        path: str | Path,
        message: str,
        values: tuple[int, ...] = (),
        hint: str = "",
    ):
        super().__init__(f"{message} {hint}".strip())
        self.problem = Problem(kind, str(path), message, values, hint)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB following the module's rule.

    Args:
        path: Image file (JPEG, PNG, TIFF, BMP, WebP, ...).

    Returns:
        ``H x W x 3`` ``uint8`` array.

    Raises:
        SampleError: ``"undecodable"`` when the file cannot be read, naming it and the reason.
    """
    path = Path(path)
    array = _decode(path, as_mask=False)
    try:
        return to_rgb8(array)
    except ValueError as err:
        raise SampleError("undecodable", path, f"cannot decode image '{path}': {err}") from err


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels.

    TIFF files are sized by ``tifffile`` from their first page (falling back to PIL, as
    :func:`read_image` does); every other format by ``PIL.Image.open(path).size``, which reads
    the header only. A file whose pixel data is damaged past the header passes.

    Raises:
        SampleError: ``"undecodable"`` when the file is missing or its header unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise SampleError("undecodable", path, f"cannot decode image '{path}': file not found")
    reasons = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        except Exception as err:  # any parser failure: try PIL, then report both reasons
            reasons.append(f"tifffile: {err}")
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error...)
        reasons.append(f"{'PIL: ' if reasons else ''}{err}")
    raise SampleError("undecodable", path, f"cannot decode image '{path}': {'; '.join(reasons)}")


def decode_label_array(path: str | Path) -> np.ndarray:
    """Read a mask file as stored: ``H x W`` indices, or ``H x W x 3`` for a colour mask.

    Folder datasets with a palette file use the colour form; everything else wants
    :func:`read_mask`, which rejects colour masks.
    """
    path = Path(path)
    array = _decode(path, as_mask=True)
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # drop alpha
            array = array[..., : array.shape[2] - 1]
        if array.shape[2] == 1 or (array == array[..., :1]).all():
            array = array[..., 0]  # gray saved as RGB
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise SampleError("undecodable", path, f"mask '{path}' has unsupported shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise SampleError(
                "undecodable", path, f"mask '{path}' holds non-integer float values; "
                "save masks as 8-bit index PNGs",
            )  # fmt: skip
        array = array.astype(np.int64)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """Read an index mask (palette PNG indices, ``L`` values, 16-bit values).

    Returns:
        ``H x W`` integer array (dtype as stored, usually ``uint8``).

    Raises:
        SampleError: ``"undecodable"``, or ``"colour-mask"`` for an RGB mask with distinct
            channels.
    """
    array = decode_label_array(path)
    if array.ndim == 3:
        raise SampleError(
            "colour-mask",
            path,
            f"mask '{path}' is a colour (RGB) image, but an index mask (mode L or P, one class "
            "index per pixel) is expected",
            hint="Fix: for the folder dataset give the class colours with a palette file "
            "(--palette-file FILE), or convert the masks; `segkit doctor` checks them all",
        )
    return array


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Apply the band and dtype rule to a decoded array (``H x W`` or ``H x W x C``).

    Returns:
        ``H x W x 3`` ``uint8`` contiguous array.
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] == 0 or min(array.shape[:2]) == 0:
        raise ValueError(f"unsupported image shape {array.shape}")
    if array.shape[2] < 3:  # gray or gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    out = np.ascontiguousarray(_to_uint8(array[..., :3]))
    return out if out.flags.writeable else out.copy()  # arrays over PIL buffers are read-only


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype.kind in "iu":
        top = float(np.iinfo(array.dtype).max)
        return np.round(np.clip(array, 0, None) * (255.0 / top)).astype(np.uint8)
    if array.dtype.kind == "f":
        array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if array.max(initial=0.0) <= 1.0:
            array = array * 255.0
        return np.round(np.clip(array, 0, 255)).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {array.dtype}")


def _decode(path: Path, *, as_mask: bool) -> np.ndarray:
    kind = "mask" if as_mask else "image"
    if not path.is_file():
        raise SampleError("undecodable", path, f"cannot decode {kind} '{path}': file not found")
    reasons = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            return _decode_tifffile(path, as_mask=as_mask)
        except Exception as err:  # any decoder failure: try PIL, then report both reasons
            reasons.append(f"tifffile: {err}")
    try:
        return _decode_pil(path, as_mask=as_mask)
    except Exception as err:  # decoders raise many types (OSError, SyntaxError, struct.error...)
        reasons.append(f"{'PIL: ' if reasons else ''}{err}")
    hint = ""
    if any("imagecodecs" in r for r in reasons):
        hint = " (pip install imagecodecs to read this TIFF compression)"
    raise SampleError(
        "undecodable", path, f"cannot decode {kind} '{path}': {'; '.join(reasons)}{hint}"
    )


def pil_to_rgb8(image: Image.Image) -> np.ndarray:
    """A PIL image as ``H x W x 3`` ``uint8`` RGB by the module's rule: what :func:`read_image`
    returns for a file PIL decodes to ``image``.

    Raises:
        ValueError: a shape or pixel type the rule does not cover.
    """
    return to_rgb8(_pil_array(image, as_mask=False))


def _decode_pil(path: Path, *, as_mask: bool) -> np.ndarray:
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here
        return _pil_array(image, as_mask=as_mask)


def _pil_array(image: Image.Image, *, as_mask: bool) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L")) // (255 if as_mask else 1)
    if as_mask and mode in ("P", "PA"):
        return np.asarray(image)[..., 0] if mode == "PA" else np.asarray(image)
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La"):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if mode.startswith("I;16"):
        return array.astype(np.uint16)
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.uint16)  # 16-bit PNGs open as 32-bit "I" in some Pillow versions
    return array


def _decode_tifffile(path: Path, *, as_mask: bool) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not as_mask and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE:
            raise ValueError("palette TIFF image: left to PIL, which applies the colour map")
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
    # Keep Y, X and the band axis (S = samples, C = channels); take the first of anything else
    # (pages, time, z), then put the bands last: H x W x C.
    band = "S" if "S" in axes else ("C" if "C" in axes else None)
    for axis in reversed(range(len(axes))):
        if axes[axis] not in ("Y", "X", band):
            array = array.take(0, axis=axis)
    kept = [a for a in axes if a in ("Y", "X", band)]
    order = [kept.index("Y"), kept.index("X")] + ([kept.index(band)] if band else [])
    return np.ascontiguousarray(np.transpose(array, order))
