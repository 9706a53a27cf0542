"""Fundus preprocessing: FOV crop -> circle crop -> FOV crop -> resize (the study's chain).

All functions take and return uint8 RGB arrays (H, W, 3). The 16 hospital
images with a white surround (labels.SPECIAL_IMAGES) are detected from their
corners and given a black surround first, so the same chain applies to them.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from odir_core.imageio import (  # load_image is re-exported (see __all__)
    ImageDecodeError,
    decode_image,
    header_size,
    is_jpeg,
    load_image,
    read_bytes,
    reduction_factor,
)

__all__ = [
    "PreprocessError",
    "blacken_background",
    "circle_crop",
    "fov_bounds",
    "fov_extract",
    "has_white_background",
    "load_image",
    "prepare_image",
    "preprocess_fundus",
    "resize_square",
]

WHITE_LEVEL = 200  # a background pixel of a white-surround image has every channel above this
MIN_FOV_FRACTION = 0.1  # a fundus narrower than this share of the photo's short side is not a fundus


class PreprocessError(ValueError):
    """An image that cannot be preprocessed (unreadable, black, no fundus); the message names it."""


def _check_rgb(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise PreprocessError(f"expected a uint8 RGB array (H, W, 3), got {got}; decode files with load_image")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise PreprocessError("empty image (zero height or width)")
    return img


def fov_bounds(img: np.ndarray, tol: int = 7) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the pixels whose grayscale > ``tol``.

    Raises PreprocessError when no pixel is brighter than ``tol`` (a black image).
    """
    gray = cv2.cvtColor(_check_rgb(img), cv2.COLOR_RGB2GRAY)
    mask = gray > tol
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise PreprocessError(f"image is black: no pixel brighter than {tol}; replace the file or leave the patient out")
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fov_extract(img: np.ndarray, tol: int = 7) -> np.ndarray:
    """Crop to the bounding rows and columns holding a pixel with grayscale (RGB2GRAY) > ``tol``.

    Equals the study's FOVExtraction (np.ix_ over rows/columns with any bright
    pixel) whenever no fully dark row or column lies inside the fundus.
    """
    top, bottom, left, right = fov_bounds(img, tol)
    return np.ascontiguousarray(img[top:bottom, left:right])


def circle_crop(img: np.ndarray) -> np.ndarray:
    """Zero every pixel outside the filled circle centred at (w//2, h//2) with radius min(h, w)//2."""
    h, w = _check_rgb(img).shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), min(h, w) // 2, 255, thickness=-1)
    return cv2.bitwise_and(img, img, mask=mask)


def has_white_background(img: np.ndarray, white_level: int = WHITE_LEVEL) -> bool:
    """True when most pixels in the four corner patches are near-white (every channel > ``white_level``)."""
    h, w = _check_rgb(img).shape[:2]
    k = max(1, min(h, w) // 20)
    corners = np.concatenate(
        [img[:k, :k], img[:k, w - k :], img[h - k :, :k], img[h - k :, w - k :]], axis=0
    ).reshape(-1, 3)
    return bool((corners.min(axis=1) > white_level).mean() > 0.5)


def blacken_background(img: np.ndarray, white_level: int = WHITE_LEVEL) -> np.ndarray:
    """Set to black the near-white regions connected to the image border (a white surround).

    Bright spots inside the fundus (optic disc, exudates) are not connected to
    the border through near-white pixels, so they are kept.
    """
    near_white = (_check_rgb(img).min(axis=2) > white_level).astype(np.uint8)
    _, labels = cv2.connectedComponents(near_white, connectivity=4)
    frame = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_labels = np.unique(frame[frame > 0])
    out = img.copy()
    out[np.isin(labels, border_labels)] = 0
    return out


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size): area averaging when shrinking, bicubic when enlarging."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interpolation = cv2.INTER_AREA if min(h, w) >= size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interpolation)


def preprocess_fundus(img: np.ndarray, size: int, tol: int = 7, notes: list[str] | None = None) -> np.ndarray:
    """The study's chain on an RGB photograph: FOV crop, circle crop, FOV crop, resize to size x size.

    A white surround is replaced by black first. ``notes``, when given, receives
    one line per repair made (white surround, upscaling). Raises PreprocessError
    for a black image or one with no fundus-sized bright region.
    """
    img = _check_rgb(img)
    if has_white_background(img):
        img = blacken_background(img)
        _note(notes, "white surround replaced by black")
    cropped = fov_extract(img, tol)
    short = min(cropped.shape[:2])
    if short < MIN_FOV_FRACTION * min(img.shape[:2]):
        raise PreprocessError(
            f"nearly black image: the pixels brighter than {tol} span only {cropped.shape[1]}x{cropped.shape[0]} px; "
            "replace the file or leave the patient out"
        )
    out = fov_extract(circle_crop(cropped), tol)
    if min(out.shape[:2]) < size:
        _note(notes, f"fundus {out.shape[1]}x{out.shape[0]} px upscaled to {size}")
    return resize_square(out, size)


def _note(notes: list[str] | None, line: str) -> None:
    if notes is not None:
        notes.append(line)


def prepare_image(
    source: str | os.PathLike | bytes, size: int, tol: int = 7, notes: list[str] | None = None
) -> np.ndarray:
    """Decode a photograph (path or encoded bytes) and run preprocess_fundus to size x size.

    JPEGs are decoded at the largest 1/2, 1/4, 1/8 scale whose FOV crop is still
    at least ``size`` px (retrying at a finer scale when the fundus turns out smaller).
    """
    try:
        data = source if isinstance(source, bytes) else read_bytes(source)
        factor = reduction_factor(*header_size(data), size) if is_jpeg(data) else 1
        while True:
            img = decode_image(data, factor)
            if factor == 1 or has_white_background(img):
                break
            top, bottom, left, right = fov_bounds(img, tol)
            if min(bottom - top, right - left) >= size:
                break
            factor //= 2
        return preprocess_fundus(img, size, tol, notes)
    except (ImageDecodeError, PreprocessError) as exc:
        raise PreprocessError(str(exc) if isinstance(source, bytes) else f"{source}: {exc}") from None
