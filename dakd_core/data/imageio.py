"""The one place images and label maps are decoded and encoded.

Decoding checks the bytes first: an empty file, a PNG without its closing IEND chunk or a JPEG
without its end-of-image marker is truncated (libjpeg would otherwise return a grey-filled image
with only a warning). Images are RGB uint8; a 16-bit file where 8 bits are expected is an error,
never a silent down-conversion. Palette PNG labels (GTA5, Mapillary) are read as their indices:
OpenCV can only expand palettes to colours, so those go through Pillow.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np

from dakd_core.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# zlib level 1: several times faster than the default and within a few % of its size on photos
# and label maps; the encoding stays lossless.
PNG_COMPRESSION = 1
_PNG_COLOR_PALETTE = 3
_PNG_COLOR_RGB = 2


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit_depth, colour_type) from a PNG's IHDR, or None if not a PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    return width, height, bit_depth, colour_type


def is_png_rgb8(data: bytes) -> bool:
    """True for an 8-bit RGB (no alpha, no palette) PNG: bytes that can be stored as they are."""
    header = png_header(data)
    return header is not None and header[2] == 8 and header[3] == _PNG_COLOR_RGB


def _check_complete(data: bytes, name: str) -> str:
    """Reject empty and truncated files; return 'png', 'jpeg' or 'other'."""
    if len(data) == 0:
        raise DataError(f"{name}: empty file (0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        if not data.rstrip(b"\x00").endswith(_PNG_IEND):
            raise DataError(f"{name}: truncated PNG (no IEND chunk at the end)")
        return "png"
    if data.startswith(_JPEG_SOI):
        # Some cameras pad after the end marker; allow a little trailing slack.
        if _JPEG_EOI not in data[-64:]:
            raise DataError(f"{name}: truncated JPEG (no end-of-image marker)")
        return "jpeg"
    return "other"


def _imdecode(data: bytes, name: str) -> np.ndarray:
    # IMREAD_UNCHANGED keeps the stored bit depth (so 16-bit can be refused) and ignores EXIF
    # rotation, keeping image pixels on the same grid as their label's.
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{name}: not a decodable image (corrupt or unsupported format)")
    return array


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB. Grey and alpha images are converted to RGB."""
    _check_complete(data, name)
    array = _imdecode(data, name)
    if array.dtype != np.uint8:
        raise DataError(f"{name}: {array.dtype} image where 8-bit is expected")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    channels = array.shape[2]
    if channels == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    if channels == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2RGB)
    raise DataError(f"{name}: image with {channels} channels, expected 1, 3 or 4")


def _decode_palette_indices(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode != "P":
                raise DataError(f"{name}: palette PNG decoded as mode {img.mode}, expected 'P'")
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"{name}: corrupt palette PNG ({e})") from None


def decode_label(data: bytes, name: str, bits: int = 8) -> np.ndarray:
    """Encoded label bytes -> HxW id map.

    bits=8: single-channel 8-bit PNG, or palette PNG read as indices -> uint8.
    bits=16: 16-bit PNG whose first channel (R of RGB, the only one of grey) holds the id -> uint16
    (SYNTHIA GT/LABELS). Any other depth or channel count is an error naming the file.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    kind = _check_complete(data, name)
    header = png_header(data) if kind == "png" else None
    if bits == 8 and header is not None and header[3] == _PNG_COLOR_PALETTE:
        return _decode_palette_indices(data, name)
    array = _imdecode(data, name)
    expected = np.uint8 if bits == 8 else np.uint16
    if array.dtype != expected:
        raise DataError(f"{name}: {array.dtype} label where {bits}-bit is expected")
    if array.ndim == 3:
        if bits == 8:
            raise DataError(
                f"{name}: {array.shape[2]}-channel label; expected single-channel ids or a palette PNG "
                "(colour-coded labels are not id maps)"
            )
        # OpenCV returns BGR(A): the PNG's first channel is the last colour channel here.
        array = array[:, :, 2] if array.shape[2] >= 3 else array[:, :, 0]
    return np.ascontiguousarray(array)


def encode_png(array: np.ndarray) -> bytes:
    """HxW (grey / ids) or HxWx3 RGB uint8 -> PNG bytes (lossless)."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png takes uint8 arrays, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim != 2:
        raise ValueError(f"encode_png takes HxW or HxWx3 arrays, got shape {array.shape}")
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
