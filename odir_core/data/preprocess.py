"""Fundus preprocessing: FOV crop -> circle crop -> FOV crop -> resize (the study's chain).

All functions take and return uint8 RGB arrays (H, W, 3). The 16 hospital
images with a white surround (labels.SPECIAL_IMAGES) are detected from their
corners and given a black surround first, so the same chain applies to them.

Before cropping, ``preprocess_fundus`` checks that the photograph looks like a
colour fundus photograph (see ``fundus_problems``): random noise or an ordinary
photograph raises NotFundusError, a blank (e.g. all-white) frame PreprocessError,
naming what is wrong. A fundus that would be enlarged more than MAX_UPSCALE times to
the output size is refused as too small (PreprocessError).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from odir_core.data.imageio import (  # load_image is re-exported (see __all__)
    ImageDecodeError,
    decode_image,
    header_size,
    is_jpeg,
    load_image,
    read_bytes,
    reduction_factor,
)
from odir_core.errors import InputError

__all__ = [
    "FundusStats",
    "NotFundusError",
    "PreprocessError",
    "blacken_background",
    "check_fundus_size",
    "check_not_blank",
    "circle_crop",
    "fov_bounds",
    "fov_extract",
    "fundus_problems",
    "fundus_stats",
    "has_white_background",
    "load_image",
    "prepare_image",
    "preprocess_fundus",
    "resize_square",
]

WHITE_LEVEL = 200  # a background pixel of a white-surround image has every channel above this
MIN_FOV_FRACTION = 0.1  # a fundus narrower than this share of the photo's short side is not a fundus
# A fundus may be enlarged at most this many times to the output size: e.g. at least 16 px for 64 px model inputs,
# 56 px for 224, 128 px for 512 (the study's size; the real samples' raw photographs have 160+ px fundi).
# Below that a photograph (a thumbnail, an icon) holds too little detail to classify.
MAX_UPSCALE = 4


# The fundus check (fundus_stats / fundus_problems), on a copy shrunk to CHECK_SIZE px (long side).
# Measured on the 46 + 3 real photographs of ../shared/reference/real_samples: surround <= 0.08,
# fill >= 0.99, R/G >= 1.10, B/min(R, G) <= 0.73; on 1200 synthetic eyes (raw frames and crops):
# surround <= 0.03, fill >= 0.97, R/G >= 0.95, B/min(R, G) <= 0.78.
CHECK_SIZE = 128
MAX_SURROUND = 0.25  # share of the frame outside the fitted circle brighter than tol (noise, a landscape: ~1)
MIN_FILL = 0.8  # share of the fitted circle (within the frame) covered by the bright field of view
MIN_DIAMETER = 0.25  # field-of-view diameter, as a share of the frame's short side
MIN_RED_GREEN = 0.8  # mean R / mean G in the field of view: a retina is red/orange (grey or green scenes fail)
MAX_BLUE = 0.9  # mean B / min(mean R, mean G) in the field of view: blue is the weakest channel of a retina
BLANK_STD = 2.0  # grey-level standard deviation below which a frame is blank (one flat colour)


class PreprocessError(InputError):
    """An image that cannot be preprocessed (unreadable, black, no fundus); the message names it."""


class NotFundusError(PreprocessError):
    """A readable image failing the fundus check (noise, an ordinary photo, a grey image); see fundus_problems."""


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


def _shrink(img: np.ndarray, size: int = CHECK_SIZE) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return img
    step = max(h, w) // (4 * size)  # subsample very large frames first: the resize then reads far fewer pixels
    if step > 1:
        img = np.ascontiguousarray(img[::step, ::step])
        h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def check_not_blank(img: np.ndarray, tol: int = 7) -> None:
    """Raise PreprocessError when the image is one flat colour brighter than ``tol`` (e.g. all white).

    A black frame is left to fov_bounds, which reports it as black.
    """
    gray = cv2.cvtColor(_shrink(_check_rgb(img)), cv2.COLOR_RGB2GRAY)
    mean, std = float(gray.mean()), float(gray.std())
    if std >= BLANK_STD or mean <= tol:
        return
    what = "all white" if mean > WHITE_LEVEL else f"one flat grey level, {mean:.0f}"
    raise PreprocessError(f"image is blank ({what}), not a fundus photograph; replace the file or leave the patient out")


@dataclass(frozen=True)
class FundusStats:
    """What the fundus check measures on a photograph shrunk to CHECK_SIZE px (long side).

    The field of view (FOV) is the largest 8-connected region of pixels with grey level > tol;
    the fitted circle has the centre of its bounding box and the diameter of its longer side
    (a FOV cut at the top and bottom by the frame keeps its full width).
    """

    diameter: float  # FOV circle diameter / the frame's short side
    surround: float  # share of the frame outside the circle that is brighter than tol
    fill: float  # share of the circle, within the FOV's bounding box, that the FOV covers
    mean_rgb: tuple[float, float, float]  # mean colour of the FOV

    def problems(self) -> list[str]:
        """One phrase per failed criterion; empty for a plausible fundus photograph."""
        found = []
        if self.surround > MAX_SURROUND:
            found.append(
                f"no dark surround around a round field of view ({self.surround:.0%} of the frame outside the "
                f"circle is bright; a fundus photograph has at most {MAX_SURROUND:.0%})"
            )
        elif self.fill < MIN_FILL:
            found.append(f"the bright region is not round (it fills {self.fill:.0%} of its circle, "
                         f"a fundus at least {MIN_FILL:.0%})")
        if self.diameter < MIN_DIAMETER:
            found.append(f"the bright region is only {self.diameter:.0%} of the frame's short side wide "
                         f"(a fundus at least {MIN_DIAMETER:.0%})")
        r, g, b = self.mean_rgb
        if r < MIN_RED_GREEN * g or b > MAX_BLUE * min(r, g):
            found.append(
                f"colours are not a retina's (mean R,G,B {r:.0f},{g:.0f},{b:.0f}; a retina is red/orange: "
                f"R >= {MIN_RED_GREEN} G and B <= {MAX_BLUE} min(R, G))"
            )
        return found


def fundus_stats(img: np.ndarray, tol: int = 7) -> FundusStats:
    """Measure a (black-surround) photograph for the fundus check; see FundusStats.

    Raises PreprocessError when no pixel is brighter than ``tol``.
    """
    small = _shrink(_check_rgb(img))
    bright = (cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) > tol).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if count < 2:
        raise PreprocessError(f"image is black: no pixel brighter than {tol}; replace the file or leave the patient out")
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[k, :4])
    fov = labels == k
    height, width = bright.shape
    cx, cy, radius = x + w / 2, y + h / 2, max(w, h) / 2
    yy, xx = np.ogrid[:height, :width]
    disk = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2
    outside = ~disk
    surround = float(bright[outside].mean()) if outside.any() else 1.0
    in_box = disk[y : y + h, x : x + w]
    fill = float(fov[y : y + h, x : x + w][in_box].mean()) if in_box.any() else 0.0
    mean_rgb = tuple(float(v) for v in small[fov].mean(axis=0))
    return FundusStats(2 * radius / min(height, width), surround, fill, mean_rgb)


def fundus_problems(img: np.ndarray, tol: int = 7) -> list[str]:
    """Why ``img`` (uint8 RGB, black surround) is not a plausible colour fundus photograph; [] when it is.

    Criteria (thresholds are module constants; measured margins in the comment above them):
    a dark surround (at most MAX_SURROUND of the frame outside the fitted circle brighter than
    ``tol``) around a round field of view (filling at least MIN_FILL of its circle) at least
    MIN_DIAMETER of the short side wide, whose mean colour is red/orange (R >= MIN_RED_GREEN * G,
    B <= MAX_BLUE * min(R, G)). A circle inscribed in a square frame with black corners (an
    already-cropped fundus) passes. Works on a CHECK_SIZE px copy: well under a millisecond
    after the resize.
    """
    return fundus_stats(img, tol).problems()


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size): area averaging when shrinking, bicubic when enlarging."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interpolation = cv2.INTER_AREA if min(h, w) >= size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interpolation)


def check_fundus_size(fundus_hw: tuple[int, int], size: int) -> None:
    """Raise PreprocessError when a fundus of (height, width) px would be enlarged more than MAX_UPSCALE
    times to ``size`` px."""
    height, width = fundus_hw
    need = -(-size // MAX_UPSCALE)
    if min(height, width) < need:
        raise PreprocessError(
            f"photograph too small: the fundus is {width}x{height} px, and enlarging it to {size} px would be more "
            f"than {MAX_UPSCALE}x (at least {need} px needed); use the full-size photograph"
        )


def preprocess_fundus(
    img: np.ndarray,
    size: int,
    tol: int = 7,
    notes: list[str] | None = None,
    check_fundus: bool = True,
    check_size: bool = True,
) -> np.ndarray:
    """The study's chain on an RGB photograph: FOV crop, circle crop, FOV crop, resize to size x size.

    A white surround is replaced by black first. ``notes``, when given, receives
    one line per repair made (white surround, upscaling). Raises PreprocessError
    for a black, blank (e.g. all white) image or one with no fundus-sized bright region,
    and its subclass NotFundusError for one failing the fundus check (fundus_problems).
    With ``check_fundus=False`` a failing image is processed anyway, with a note. A fundus too small
    for ``size`` (check_fundus_size) raises PreprocessError unless ``check_size=False`` (a copy for display).
    """
    img = _check_rgb(img)
    check_not_blank(img, tol)
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
    if check_size:
        check_fundus_size(cropped.shape[:2], size)
    problems = fundus_problems(img, tol)
    if problems and check_fundus:
        raise NotFundusError(
            f"not a fundus photograph: {'; '.join(problems)}; use a colour fundus photograph or leave the patient out"
        )
    if problems:
        _note(notes, f"kept although not like a fundus photograph: {'; '.join(problems)}")
    out = fov_extract(circle_crop(cropped), tol)
    if min(out.shape[:2]) < size:
        _note(notes, f"fundus {out.shape[1]}x{out.shape[0]} px upscaled to {size}")
    return resize_square(out, size)


def _note(notes: list[str] | None, line: str) -> None:
    if notes is not None:
        notes.append(line)


def prepare_image(
    source: str | os.PathLike | bytes,
    size: int,
    tol: int = 7,
    notes: list[str] | None = None,
    check_fundus: bool = True,
    check_size: bool = True,
) -> np.ndarray:
    """Decode a photograph (path or encoded bytes) and run preprocess_fundus to size x size.

    Raises PreprocessError (NotFundusError for a non-fundus image) naming the file.

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
        return preprocess_fundus(img, size, tol, notes, check_fundus, check_size)
    except (ImageDecodeError, PreprocessError) as exc:
        kind = NotFundusError if isinstance(exc, NotFundusError) else PreprocessError
        raise kind(str(exc) if isinstance(source, bytes) else f"{source}: {exc}") from None
