"""Decode fundus photographs to 8-bit RGB and write images atomically.

Every decoded image is a C-contiguous ``uint8`` array of shape (H, W, 3) in RGB
order, whatever the file held: grayscale, RGBA (composited on black), 16-bit,
or a JPEG with an EXIF orientation tag (applied, as OpenCV does by default).

A JPEG whose compressed data is damaged inside (zeroed or overwritten bytes,
with the end marker intact) still decodes in OpenCV, grey or garbled below the
damage, and libjpeg only prints a "Corrupt JPEG data" warning on stderr. JPEGs
are therefore decoded with that warning captured (``decode_jpeg``) and turned
into ImageDecodeError.

An image whose header declares more than MAX_PIXELS pixels is refused before its pixels are
decoded (``check_pixel_count``), so a small file that would decompress to gigabytes (a
decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from odir_core.atomic import atomic_write_bytes
from odir_core.errors import InputError

JPEG_MAGIC = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


# libjpeg warnings that mean the pixels are damaged (libjpeg-turbo's JWRN_* texts). Warnings about
# metadata (JFIF version, ICC or Adobe markers) are passed on to stderr.
JPEG_DAMAGE = re.compile(
    r"Corrupt JPEG data: (?!bad ICC)(?!\d+ extraneous)|Premature end of JPEG file|Invalid SOS parameters"
    r"|Inconsistent progression sequence"
)
# "N extraneous bytes before marker": a few padding bytes are a known harmless quirk of some
# cameras and encoders; a damaged scan leaves thousands
JPEG_EXTRANEOUS = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker")
MAX_EXTRANEOUS = 16
# Pixels an image may declare: Pillow's own decompression-bomb limit (about 89 megapixels, 268 MB decoded);
# the largest ODIR-5K photographs have about 18.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


class ImageDecodeError(InputError):
    """A file that is not a readable image (corrupt, truncated, empty or unknown format)."""


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts with the JPEG start-of-image marker."""
    return data[:2] == JPEG_MAGIC


def has_jpeg_end(data: bytes) -> bool:
    """True when an end-of-image marker follows the last start-of-scan in the last 64 KiB.

    Entropy-coded data never holds 0xFFD9, so a JPEG cut inside its scan lacks it
    (OpenCV would decode it anyway, greying out the missing rows).
    """
    tail = data[-65536:]
    return JPEG_EOI in tail[max(tail.rfind(b"\xff\xda"), 0) :]


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError as exc:
        raise _too_large(str(exc)) from None
    except Exception as exc:  # PIL raises several unrelated types for bad headers
        raise ImageDecodeError(f"unreadable image header ({exc})") from exc


def check_pixel_count(data: bytes, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse encoded image bytes whose header declares more than ``max_pixels`` pixels, before decoding.

    A format Pillow cannot parse is left to OpenCV, which has its own limit (2**30 pixels)."""
    try:
        with warnings.catch_warnings():  # Pillow warns between its limit and twice it; the check below refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise _too_large(str(exc), max_pixels) from None
    except Exception:  # not a format Pillow reads: decode_image decides
        return
    if width * height > max_pixels:
        raise _too_large(f"{width}x{height} px, {width * height:,} pixels", max_pixels)


def _too_large(detail: str, max_pixels: int = MAX_PIXELS) -> ImageDecodeError:
    return ImageDecodeError(f"image too large to decode ({detail}): over the limit of {max_pixels:,} pixels "
                            "(a decompression bomb?); use the photograph as the camera wrote it")


def reduction_factor(width: int, height: int, target_size: int | None) -> int:
    """Largest JPEG DCT reduction (1, 2, 4 or 8) leaving the short side >= ``target_size``."""
    if not target_size:
        return 1
    short = min(width, height)
    factor = 1
    for candidate in (2, 4, 8):
        if short // candidate >= target_size:
            factor = candidate
    return factor


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Normalise an OpenCV-decoded array (BGR/BGRA/gray, 8 or 16 bit, or float) to uint8 RGB."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.uint16)
        rgb = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB).astype(np.uint16)
        return ((rgb * alpha + 127) // 255).astype(np.uint8)  # composite on black
    raise ImageDecodeError(f"unsupported channel count {channels}")


_CAPTURE_LOCK = threading.Lock()
_CAPTURE: dict = {}  # pid -> a temporary file that receives fd 2 during a JPEG decode


def _reset_after_fork() -> None:
    global _CAPTURE_LOCK
    _CAPTURE_LOCK = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _capture_file() -> int:
    fd = _CAPTURE.get(os.getpid())
    if fd is None:  # one per process: a forked child must not share its parent's file offset
        fd = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the life of the process)
        _CAPTURE.clear()
        _CAPTURE[os.getpid()] = fd
    return fd.fileno()


def jpeg_damage(message: str) -> str | None:
    """The first line of libjpeg output ``message`` that means damaged pixels, else None."""
    for line in message.splitlines():
        extraneous = JPEG_EXTRANEOUS.search(line)
        if (extraneous and int(extraneous.group(1)) > MAX_EXTRANEOUS) or JPEG_DAMAGE.search(line):
            return line.strip()
    return None


def decode_jpeg(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, str]:
    """cv2.imdecode of JPEG bytes, and what libjpeg printed on stderr meanwhile (its warnings).

    libjpeg prints warnings with fprintf(stderr), so file descriptor 2 is pointed at a temporary
    file for the call (serialised by a lock: fd 2 is shared by the process's threads); the few
    microseconds this costs are nothing next to the decode. Anything else written to stderr in
    that window is passed on. Without a usable fd 2 the decode runs uncaptured.
    """
    with _CAPTURE_LOCK:
        try:
            sys.stderr.flush()
            capture = _capture_file()
            os.lseek(capture, 0, os.SEEK_SET)
            os.ftruncate(capture, 0)
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return cv2.imdecode(buf, flags), ""
        try:
            os.dup2(capture, 2)
            img = cv2.imdecode(buf, flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        size = os.lseek(capture, 0, os.SEEK_END)
        if not size:
            return img, ""
        os.lseek(capture, 0, os.SEEK_SET)
        text = os.read(capture, size).decode("utf-8", "replace")
    passed_on = [line for line in text.splitlines(keepends=True) if not jpeg_damage(line)]
    if passed_on:
        os.write(2, "".join(passed_on).encode())
    return img, text


def decode_image(data: bytes, reduce: int = 1) -> np.ndarray:
    """Decode encoded image bytes to uint8 RGB; ``reduce`` (2, 4, 8) uses JPEG DCT scaling.

    JPEGs go through OpenCV's colour path, which applies EXIF orientation; other
    formats are read unchanged (keeping 16-bit, gray and alpha) and normalised.
    Raises ImageDecodeError for empty, undecodable or truncated JPEG data, for a JPEG
    whose compressed data libjpeg reports as corrupt (see decode_jpeg), and for an image
    declaring more than MAX_PIXELS pixels (check_pixel_count).
    """
    if not data:
        raise ImageDecodeError("empty file")
    check_pixel_count(data)
    buf = np.frombuffer(data, np.uint8)
    if is_jpeg(data):
        if not has_jpeg_end(data):
            raise ImageDecodeError("truncated JPEG (no end-of-image marker); re-download or replace the file")
        img, warnings = decode_jpeg(buf, REDUCED_FLAGS[reduce])
        damage = jpeg_damage(warnings)
        if damage:
            raise ImageDecodeError(
                f"corrupt JPEG (libjpeg: {damage}): its pixels are damaged; re-download or replace the file"
            )
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageDecodeError("not a decodable image (corrupt or unknown format)")
    return to_rgb8(img)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The raw bytes of a file (works with non-ASCII paths, unlike cv2.imread on Windows)."""
    return Path(path).read_bytes()


def load_image(path: str | os.PathLike, target_size: int | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3).

    With ``target_size``, a JPEG whose short side is at least twice that is
    decoded at 1/2, 1/4 or 1/8 scale (the largest keeping the short side
    >= ``target_size``), which is several times faster than a full decode.
    """
    data = read_bytes(path)
    try:
        factor = reduction_factor(*header_size(data), target_size) if is_jpeg(data) else 1
        return decode_image(data, factor)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from None


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode uint8 RGB as PNG or JPEG bytes."""
    fmt = fmt.lower().lstrip(".")
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'png' or 'jpg'")
    if not ok:
        raise ImageDecodeError(f"OpenCV could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def save_image(img: np.ndarray, path: str | os.PathLike, quality: int = 95) -> None:
    """Encode ``img`` by the suffix of ``path`` (.png, .jpg) and write it atomically."""
    atomic_write_bytes(path, encode_image(img, Path(path).suffix, quality))
