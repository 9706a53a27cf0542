"""Raw-like fundus photographs drawn with OpenCV, and where the reference photographs live, for the image tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REAL_SAMPLES = REFERENCE / "real_samples"


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
