"""The one place images and label maps are decoded and encoded.

Decoding checks the bytes first: an empty file, a PNG without its closing IEND chunk or a JPEG
without its end-of-image marker is truncated (libjpeg would otherwise return a grey-filled image
with only a warning). Only PNG and JPEG are accepted, and the bytes' signature must match the
name's extension (`.png`, `.jpg`/`.jpeg`): a JPEG saved as `*_labelIds.png` has lossy ids at every
edge. Labels must be PNG whatever their name. The size declared in the header (PNG IHDR, JPEG
SOF) is checked before decoding: an empty image or one over `MAX_PIXELS` is refused without
allocating its pixels. Images are RGB uint8; a 16-bit file where 8 bits are expected is an error,
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
# Largest width x height decoded (134 Mpx, 3x the largest Mapillary photos); a header declaring more
# would make OpenCV/Pillow allocate gigabytes (or raise their own untyped errors) before failing.
MAX_PIXELS = 1 << 27
_KIND_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit_depth, colour_type) from a PNG's IHDR, or None if not a PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    return width, height, bit_depth, colour_type


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, or None if there is none."""
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header before it
            return None
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


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


def _suffix(name: str) -> str:
    """The extension of the name's last path segment ('' for names like 'shard.bin#id/label')."""
    leaf = name.rsplit("/", 1)[-1]
    return leaf[leaf.rfind("."):] if "." in leaf else ""


def _check_bytes(data: bytes, name: str) -> str:
    """Every check that needs no decoding; returns 'png' or 'jpeg'."""
    kind = _check_complete(data, name)
    if kind == "other":
        raise DataError(f"{name}: not a decodable image (neither a PNG nor a JPEG signature)")
    suffix = _suffix(name)
    expected = _KIND_OF_SUFFIX.get(suffix.lower())
    if expected is not None and expected != kind:
        raise DataError(f"{name}: {kind.upper()} bytes under a {suffix} name: the file's signature does not "
                        "match its type")
    if kind == "png":
        header = png_header(data)
        size = header[:2] if header is not None else None
    else:
        size = jpeg_size(data)
    if size is None:
        raise DataError(f"{name}: not a decodable image (no {kind.upper()} header with the image size)")
    width, height = size
    if width == 0 or height == 0:
        raise DataError(f"{name}: header declares an empty {width}x{height} image")
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{name}: header declares {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), more than "
            f"the {MAX_PIXELS / 1e6:.0f} Mpx limit; refused before decoding"
        )
    return kind


def _imdecode(data: bytes, name: str) -> np.ndarray:
    # IMREAD_UNCHANGED keeps the stored bit depth (so 16-bit can be refused) and ignores EXIF
    # rotation, keeping image pixels on the same grid as their label's.
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{name}: not a decodable image (corrupt or unsupported format)")
    return array


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB. Grey and alpha images are converted to RGB."""
    _check_bytes(data, name)
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
    (SYNTHIA GT/LABELS). Any other depth or channel count, and any other format than PNG, is an
    error naming the file.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if _check_bytes(data, name) != "png":
        raise DataError(f"{name}: JPEG label; labels must be lossless PNG id maps (JPEG changes ids at every edge)")
    header = png_header(data)
    if bits == 8 and header[3] == _PNG_COLOR_PALETTE:
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
