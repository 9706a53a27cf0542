"""Dual-eye augmentation on uint8 RGB (H, W, 3) pairs, with torchvision's definitions, in OpenCV/numpy.

Modes (``augment_pair``):

- ``dual``: rotation by an independent integer angle in [-30, 30] per eye
  (nearest, black fill, same size); random crop of ``crop_size`` per eye
  (independent offsets); horizontal flip (p=0.5) of both eyes that also swaps
  left and right; vertical flip (p=0.5) of both; colour jitter (brightness,
  contrast, saturation 0.2, hue 0.1) with one draw applied to both eyes.
- ``independent``: each eye rotated, flipped (no swap) and jittered with its
  own draws; no random crop.
- ``none``: unchanged.

Colour jitter applies brightness, contrast, saturation, hue in that fixed order,
as the study's ColorJitterDual did (torchvision's ColorJitter shuffles the order
per call). Each op follows torchvision.transforms.functional.adjust_* on uint8
tensors (float32 blend, truncation to uint8): brightness and contrast are
identical, saturation and hue differ by 1 grey level on under 0.05% of values
(float rounding of OpenCV's kernels); rotation is identical except on exact
half-pixel ties. In ``independent`` and ``none``
mode a given ``crop_size`` is a centre crop, so every mode yields the same shape.

Random draws, in order: dual: angle left, angle right, crop (top, left) left,
crop (top, left) right, hflip, vflip, brightness, contrast, saturation, hue;
independent: per eye (left first) angle, hflip, vflip, then the four factors.
"""

from __future__ import annotations

import cv2
import numpy as np

from odir_core.data.normalization import IMAGENET_MEAN, IMAGENET_STD

MODES = ("none", "dual", "independent")
MAX_ROTATION = 30
BRIGHTNESS = CONTRAST = SATURATION = 0.2
HUE = 0.1
_GRAY_KERNEL = np.array([[0.2989, 0.587, 0.114]], np.float32)  # torchvision's rgb_to_grayscale weights
_LEVELS = np.arange(256, dtype=np.float32)
_NORM_SCALE = tuple((1.0 / (255.0 * IMAGENET_STD)).tolist()) + (0.0,)  # per-channel scalars for cv2
_NORM_OFFSET = tuple((IMAGENET_MEAN / IMAGENET_STD).tolist()) + (0.0,)


def _warp(img: np.ndarray, angle: float, top: int = 0, left: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = img.shape[:2]
    out_h, out_w = size or (h, w)
    if angle == 0:
        return np.ascontiguousarray(img[top : top + out_h, left : left + out_w])
    m = cv2.getRotationMatrix2D(((w - 1) * 0.5, (h - 1) * 0.5), float(angle), 1.0)
    m[:, 2] -= (left, top)  # sample the crop window of the rotated image directly
    return cv2.warpAffine(img, m, (out_w, out_h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def rotate(img: np.ndarray, angle: float) -> np.ndarray:
    """Rotate counter-clockwise by ``angle`` degrees about the centre: nearest, black fill, same size."""
    return _warp(img, angle)


def rotate_crop(img: np.ndarray, angle: float, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``crop(rotate(img, angle), top, left, height, width)`` in one warp."""
    return _warp(img, angle, top, left, (height, width))


def crop(img: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The window [top, top+height) x [left, left+width) (must lie inside the image)."""
    h, w = img.shape[:2]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop {height}x{width} at ({top}, {left}) does not fit a {h}x{w} image")
    return np.ascontiguousarray(img[top : top + height, left : left + width])


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Central size x size window, offsets rounded as torchvision's CenterCrop (round half to even)."""
    h, w = img.shape[:2]
    if size > h or size > w:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} image; prepare larger images")
    return crop(img, int(round((h - size) / 2.0)), int(round((w - size) / 2.0)), size, size)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return cv2.flip(img, 1)


def vflip(img: np.ndarray) -> np.ndarray:
    """Mirror top-bottom."""
    return cv2.flip(img, 0)


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.transform(img.astype(np.float32), _GRAY_KERNEL).astype(np.uint8)  # truncation, as torch


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)  # truncation, as torch's .to(uint8)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_brightness: trunc(clip(factor * x))."""
    return cv2.LUT(img, _to_uint8(np.float32(factor) * _LEVELS))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_contrast: blend with the mean of the (truncated) grayscale image."""
    mean = np.float32(_gray(img).mean(dtype=np.float64))
    return cv2.LUT(img, _to_uint8(np.float32(factor) * _LEVELS + np.float32(1.0 - factor) * mean))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_saturation: per-pixel blend with the (truncated) grayscale image."""
    gray = cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)
    return _to_uint8(cv2.addWeighted(img, factor, gray, 1.0 - factor, 0.0, dtype=cv2.CV_32F))


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision adjust_hue: shift HSV hue by ``factor`` turns (|factor| <= 0.5), float32 HSV."""
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor {factor} is not in [-0.5, 0.5]")
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees, V in 0..255
    hsv[:, :, 0] += np.float32((factor * 360.0) % 360.0)  # OpenCV wraps hues in [0, 720) itself
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return _to_uint8(rgb * np.float32(255.999 / 255.0))  # torchvision's float -> uint8: x * 255.999, trunc


def jitter_params(
    rng: np.random.Generator, brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION, hue=HUE
) -> tuple[float, float, float, float]:
    """One draw of (brightness, contrast, saturation, hue) factors as ColorJitter.get_params."""
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    s = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    h = rng.uniform(-hue, hue)
    return float(b), float(c), float(s), float(h)


def color_jitter(img: np.ndarray, params: tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, saturation, hue, in that order, with the given factors."""
    b, c, s, h = params
    return adjust_hue(adjust_saturation(adjust_contrast(adjust_brightness(img, b), c), s), h)


def _angle(rng: np.random.Generator) -> int:
    return int(rng.integers(-MAX_ROTATION, MAX_ROTATION + 1))


def _crop_offsets(rng: np.random.Generator, img: np.ndarray, size: int) -> tuple[int, int]:
    h, w = img.shape[:2]
    if size > h or size > w:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image; prepare larger images")
    return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))


def _check_pair(left: np.ndarray, right: np.ndarray) -> None:
    for name, img in (("left", left), ("right", right)):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")


def augment_pair(
    left: np.ndarray,
    right: np.ndarray,
    rng: np.random.Generator,
    mode: str = "dual",
    crop_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one patient's (left, right) uint8 RGB pair; returns (left, right) uint8.

    In ``dual`` mode a horizontal flip swaps the eyes: the returned "left" is the
    mirrored right eye (a mirrored right eye looks like a left eye), so the
    patient's labels stay valid. See the module docstring for each mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; use one of {MODES}")
    _check_pair(left, right)
    if mode == "dual":
        angles = _angle(rng), _angle(rng)
        if crop_size:
            windows = [(*_crop_offsets(rng, img, crop_size), crop_size, crop_size) for img in (left, right)]
        else:
            windows = [(0, 0, *img.shape[:2]) for img in (left, right)]
        left, right = (rotate_crop(img, a, *win) for img, a, win in zip((left, right), angles, windows))
        if rng.random() < 0.5:
            left, right = hflip(right), hflip(left)
        if rng.random() < 0.5:
            left, right = vflip(left), vflip(right)
        params = jitter_params(rng)
        return color_jitter(left, params), color_jitter(right, params)
    if mode == "independent":
        left, right = (_augment_one(img, rng) for img in (left, right))
    if crop_size:
        left, right = center_crop(left, crop_size), center_crop(right, crop_size)
    return left, right


def _augment_one(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = rotate(img, _angle(rng))
    if rng.random() < 0.5:
        img = hflip(img)
    if rng.random() < 0.5:
        img = vflip(img)
    return color_jitter(img, jitter_params(rng))


def normalize(img: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 ((x / 255) - IMAGENET_MEAN) / IMAGENET_STD, same layout."""
    return cv2.subtract(cv2.multiply(img.astype(np.float32), _NORM_SCALE), _NORM_OFFSET)
