"""Raw-like fundus photographs drawn with OpenCV, for the image tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np



def draw_fundus(height: int, width: int, seed: int = 0, texture: bool = True) -> np.ndarray:
    """A uint8 RGB raw-like photograph: orange textured disc with vessels and an optic disc on black."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    cx, cy = width // 2 + int(rng.integers(-3, 4)), height // 2
    r = int(min(height, width) * 0.47)
    cv2.circle(img, (cx, cy), r, (200, 90, 40), thickness=-1)
    if texture:  # smooth retina-like mottling plus sensor-like pixel noise
        coarse = rng.normal(0, 12, (height // 16 + 1, width // 16 + 1)).astype(np.float32)
        noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 3, (height, width))
        img = np.clip(img + (img > 0) * noise[:, :, None], 0, 255).astype(np.uint8)
        for _ in range(8):
            pts = (rng.uniform(-1, 1, (2, 2)) * r * 0.9 + (cx, cy)).astype(int)
            cv2.line(img, tuple(map(int, pts[0])), tuple(map(int, pts[1])), (120, 30, 20), max(1, r // 60))
    cv2.circle(img, (cx - r // 3, cy), max(2, r // 8), (250, 220, 150), thickness=-1)
    return img


def write_jpeg(path: Path, img: np.ndarray, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def noise_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """Uniform random RGB noise: no field of view, grey on average."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def landscape_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """An ordinary photo: a blue sky gradient over green ground, with sensor noise and no dark surround."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = np.array([90.0, 150.0, 230.0]) * (1 - 0.4 * y)
    ground = np.array([60.0, 140.0, 50.0]) * (0.7 + 0.3 * y)
    img = np.where(y < 0.55, sky, ground) * np.ones((1, width, 1)) + rng.normal(0, 8, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def zero_middle_of_scan(data: bytes) -> bytes:
    """A JPEG with the middle third of its compressed data (after the start-of-scan header) zeroed.

    The end-of-image marker stays intact, so only decoding notices the damage.
    """
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    third = (len(data) - start) // 3
    return data[: start + third] + bytes(third) + data[start + 2 * third :]
