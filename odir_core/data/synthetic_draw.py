"""Drawing of synthetic fundus photographs with OpenCV and NumPy.

An eye is drawn at its output resolution on a square of the field-of-view
(FOV) diameter: every size is a fraction of the FOV radius R, so the same
eye drawn at 64 px and at 2000 px shows the same anatomy and lesions.
Coordinates below are in units of R with the origin at the FOV centre
(x to the right, y down). Images are float32 RGB in [0, 1] until the end.

Signs (keys of ``signs``, each with a strength, 1 = typical):
``dr`` microaneurysms, blot haemorrhages, hard exudates (+ new vessels from 1.8);
``cup`` enlarged optic cup; ``haze`` cataract veil; ``drusen`` macular drusen;
``wet_amd`` subretinal macular lesion; ``hypertensive`` narrow straight
arteries, cotton-wool spots, flame haemorrhages; ``myopic`` tessellation and
peripapillary atrophy; ``erm`` macular sheen; ``mnf`` myelinated fibres;
``laser`` laser scars; ``floaters``; ``media`` partial media opacity;
``atrophy`` chorioretinal atrophy; ``rvo`` vein occlusion haemorrhages;
``pigment`` bone-spicule pigment; ``disc_edema``; ``white_vessel``;
``spots`` small white spots.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

_SHIFT = 4  # fixed-point bits for sub-pixel cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Camera:
    """One patient's camera: exposure, colour cast and optics, shared by both eyes."""

    gain: float
    gamma: float
    cast: tuple[float, float, float]
    blur: float  # Gaussian sigma in units of R
    noise: float
    vignette: float


def random_camera(rng: np.random.Generator) -> Camera:
    """Draw a camera (exposure, colour cast, blur, noise, vignetting)."""
    return Camera(
        gain=float(rng.uniform(0.7, 1.3)),
        gamma=float(rng.uniform(0.85, 1.2)),
        cast=tuple(float(v) for v in 1.0 + rng.normal(0.0, 0.07, 3)),
        blur=float(rng.uniform(0.0, 0.006)),
        noise=float(rng.uniform(0.004, 0.02)),
        vignette=float(rng.uniform(0.3, 0.65)),
    )


@lru_cache(maxsize=8)
def _grid(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (units of R) and r^2 on a d x d square; cached per size."""
    c = (d - 1) / 2.0
    ax = ((np.arange(d, dtype=np.float32) - c) / (d / 2.0)).astype(np.float32)
    x, y = np.meshgrid(ax, ax)
    x.setflags(write=False)
    y.setflags(write=False)
    r2 = x * x + y * y
    r2.setflags(write=False)
    return x, y, r2


class _Canvas:
    """A d x d float image plus helpers that draw in units of R."""

    def __init__(self, d: int):
        self.d = d
        self.R = d / 2.0
        self.img = np.zeros((d, d, 3), np.float32)

    def px(self, p) -> tuple[int, int]:
        """Fixed-point pixel coordinates of a point in units of R."""
        return (int(round((p[0] + 1.0) * self.R * _ONE)), int(round((p[1] + 1.0) * self.R * _ONE)))

    def mask(self) -> np.ndarray:
        return np.zeros((self.d, self.d), np.uint8)

    def dots(self, mask, pts, radii, value=255):
        """Filled anti-aliased discs; below one pixel they dim with their area so small lesions fade, not vanish."""
        for p, r in zip(pts, radii):
            rp = r * self.R
            v = int(value * min(1.0, max(rp, 0.3) ** 2)) if rp < 1.0 else value
            cv2.circle(mask, self.px(p), int(max(rp, 1.0) * _ONE), v, -1, cv2.LINE_AA, _SHIFT)

    def ellipse(self, mask, centre, axes, angle_deg, value=255):
        a = (max(1, int(axes[0] * self.R * _ONE)), max(1, int(axes[1] * self.R * _ONE)))
        cv2.ellipse(mask, self.px(centre), a, angle_deg, 0, 360, value, -1, cv2.LINE_AA, _SHIFT)

    def line(self, mask, pts, width, value=255):
        """Polyline of the given width (units of R); thinner than a pixel it is drawn 1 px and dimmer."""
        wp = width * self.R
        v = int(value * min(1.0, max(wp, 0.15))) if wp < 1.0 else value
        arr = np.round((np.asarray(pts, np.float64) + 1.0) * (self.R * _ONE)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [arr], False, v, max(1, int(round(wp))), cv2.LINE_AA, _SHIFT)

    def soft(self, mask, blur: float) -> np.ndarray:
        """Mask as float [0, 1], blurred by ``blur`` (units of R)."""
        m = mask.astype(np.float32) * (1.0 / 255.0)
        sigma = blur * self.R
        if sigma >= 0.4:
            m = cv2.GaussianBlur(m, (0, 0), sigma)
        return m

    def paint(self, alpha: np.ndarray, color, opacity: float = 1.0):
        """Blend towards ``color`` (RGB 0-1) where ``alpha`` (float mask) is set."""
        a = (alpha * opacity)[..., None]
        self.img += (np.asarray(color, np.float32) - self.img) * a

    def darken(self, alpha: np.ndarray, factor):
        """Multiply by ``factor`` (per channel) where ``alpha`` is set."""
        f = 1.0 - np.asarray(factor, np.float32)
        self.img *= 1.0 - alpha[..., None] * f


def _smooth_noise(rng, d: int, cells: int) -> np.ndarray:
    """Zero-mean low-frequency noise (about ``cells`` blobs across), unit-ish amplitude."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (d, d), interpolation=cv2.INTER_CUBIC)


def _walk(rng, start, heading, step, curvature, decay, wiggle, width, shrink, branch_p, depth, out, kind,
          max_steps=80):
    """Random-walk vessel: appends (points (n, 2), width, kind) segments to ``out``, branching recursively."""
    noise, u = rng.standard_normal(max_steps), rng.random(max_steps)
    turn = curvature * np.cumsum(decay ** np.arange(max_steps)) + wiggle * np.cumsum(noise)
    h = heading + turn
    pts = np.vstack([start, np.asarray(start) + step * np.cumsum(np.c_[np.cos(h), np.sin(h)], axis=0)])
    w = width * shrink ** np.arange(1, max_steps + 1)
    outside = ((pts[1:] ** 2).sum(axis=1) > 1.0) | (w < 0.0025)
    n = int(np.argmax(outside)) + 1 if outside.any() else max_steps  # steps taken (the last one may leave)
    branches = np.flatnonzero(u[: n - 1] < branch_p) + 1 if depth > 0 else np.array([], int)
    cuts = [0, *branches.tolist(), n]
    scale = 1.0
    for i0, i1 in zip(cuts[:-1], cuts[1:]):
        out.append((pts[i0: i1 + 1], float(w[i1 - 1]) * scale, kind))
        if i1 < n:  # a branch leaves at point i1; the parent narrows
            side = 1 if rng.random() < 0.5 else -1
            _walk(rng, pts[i1], h[i1 - 1] + side * rng.uniform(0.45, 1.0), step, -side * abs(curvature) * 0.5,
                  decay, wiggle, w[i1 - 1] * rng.uniform(0.55, 0.75), shrink, branch_p * 0.8, depth - 1, out,
                  kind, max_steps)
            scale *= 0.85


def _vessels(rng, disc, side, artery_scale, artery_wiggle):
    """The retinal vessel tree from the disc: four arcades (artery + vein each) and small branches."""
    out = []
    t = -side  # temporal direction (towards the fovea)
    for up in (-1.0, 1.0):  # superior, inferior
        for kind, w, off in (("v", 0.024, 0.12), ("a", 0.017 * artery_scale, -0.12)):
            wig = 0.04 if kind == "v" else artery_wiggle
            # temporal arcade: leaves the disc vertically and bends round the macula
            h = np.arctan2(up, t * 0.35) + off * up * t
            _walk(rng, disc, h, 0.03, -up * t * rng.uniform(0.075, 0.1), 0.95, wig,
                  w, 0.985, 0.07, 2, out, kind)
            # nasal branch
            h = np.arctan2(up * 0.8, -t) + rng.normal(0, 0.15)
            _walk(rng, disc, h, 0.03, 0.0, 0.95, wig, w * 0.7, 0.98, 0.08, 1, out, kind)
    return out


def _disc_position(rng, side):
    return (side * rng.uniform(0.36, 0.44), rng.uniform(-0.06, 0.06))


def draw_eye(seed: np.random.SeedSequence, d: int, side: int, signs: dict, camera: Camera,
             lens_dust: bool = False) -> np.ndarray:
    """Draw one eye's FOV square (d x d, uint8 RGB, black outside the circle).

    ``side`` is -1 for a left eye (optic disc on the left of the image) and +1 for a right eye.
    Anatomy, vessels, disc, lesions and camera draw from separate streams of ``seed``, so the
    same eye with other signs or severity keeps its anatomy.
    """
    anat, vessel_rng, disc_rng, les, cam = (np.random.default_rng(s) for s in seed.spawn(5))
    cv = _Canvas(d)
    x, y, r2 = _grid(d)
    s = signs.get
    # --- background: orange-red fundus with choroidal mottling
    base = np.array([anat.uniform(0.68, 0.92), 0.0, 0.0], np.float32)
    base[1] = base[0] * anat.uniform(0.34, 0.55)
    base[2] = base[1] * anat.uniform(0.2, 0.5)
    if s("myopic"):
        base[1] *= 1.0 + 0.12 * min(s("myopic"), 1.5)  # paler, more orange fundus
    tex = 1.0 + 0.07 * _smooth_noise(anat, d, 7) + 0.035 * _smooth_noise(anat, d, max(8, d // 12))
    cv.img[:] = base
    cv.img *= tex[..., None]
    disc = _disc_position(anat, side)
    fovea = (disc[0] - side * anat.uniform(0.42, 0.5), disc[1] + anat.uniform(0.0, 0.06))
    fd2 = (x - fovea[0]) ** 2 + (y - fovea[1]) ** 2
    cv.darken(np.exp(-fd2 / (2 * 0.16**2)), (0.7, 0.62, 0.62))  # macular pigment
    if s("myopic"):
        _tessellation(les, cv, s("myopic"))
    # --- choroid / RPE level findings
    if s("drusen"):
        _drusen(les, cv, fovea, s("drusen"), 1.0)
    if s("atrophy"):
        _atrophy(les, cv, disc, fovea, s("atrophy"), 1 + int(les.integers(0, 2)))
    if s("myopic") and les.random() < 0.5 * s("myopic"):
        _atrophy(les, cv, disc, fovea, 0.8 * s("myopic"), 1)
    if s("pigment"):
        _bone_spicules(les, cv, s("pigment"))
    if s("laser"):
        _laser_scars(les, cv, s("laser"))
    if s("wet_amd"):
        _wet_amd(les, cv, fovea, s("wet_amd"))
    # --- vessels
    h = s("hypertensive") or 0.0
    tree = _vessels(vessel_rng, disc, side, artery_scale=1.0 / (1.0 + 0.8 * h), artery_wiggle=0.045 / (1.0 + 3.0 * h))
    veins, arteries = cv.mask(), cv.mask()
    for pts, w, kind in tree:
        cv.line(veins if kind == "v" else arteries, pts, w * (1.25 if s("rvo") and kind == "v" else 1.0))
    vessel_blur = 0.004
    cv.darken(cv.soft(veins, vessel_blur), (0.5, 0.3, 0.35))
    cv.darken(cv.soft(arteries, vessel_blur), (0.7, 0.45, 0.5) if not h else (0.85, 0.62, 0.55))
    _optic_disc(disc_rng, cv, disc, side, s)  # over the vessel roots, which show faintly through it
    if s("white_vessel"):
        m = cv.mask()
        for pts, w, _ in tree[: max(2, len(tree) // 4)]:
            cv.line(m, pts, w * 1.3)
        cv.paint(cv.soft(m, 0.004), (0.92, 0.85, 0.75), 0.7)
    if not (s("drusen") or s("wet_amd") or s("erm")):
        m = cv.mask()
        cv.dots(m, [fovea], [0.012])
        cv.paint(cv.soft(m, 0.006), (1.0, 0.9, 0.75), 0.5)  # foveal reflex
    # --- retinal lesions
    if s("dr"):
        _diabetic(les, cv, disc, fovea, s("dr"))
    if h:
        _hypertensive(les, cv, disc, h)
    if s("rvo"):
        _vein_occlusion(les, cv, disc, side, s("rvo"))
    if s("spots"):
        m = cv.mask()
        n = int(10 + 20 * s("spots"))
        cv.dots(m, fovea + les.normal(0, 0.22, (n, 2)), les.uniform(0.008, 0.02, n))
        cv.paint(cv.soft(m, 0.006), (0.95, 0.9, 0.8), 0.8)
    if s("mnf"):
        _myelinated(les, cv, disc, side, s("mnf"))
    if s("erm"):
        _membrane(les, cv, fovea, s("erm"))
    # --- illumination
    illum = 1.0 - camera.vignette * np.power(r2, 1.4) + 0.12 * (cam.normal() * x + cam.normal() * y)
    cv.img *= np.clip(illum, 0.05, 1.3)[..., None]
    # --- media: cataract veil, partial opacity, floaters
    if s("haze"):
        _cataract(les, cv, s("haze"))
    if s("media"):
        _cataract(les, cv, 0.45 * s("media"), partial=True)
    if s("floaters"):
        _floaters(les, cv, s("floaters"))
    if lens_dust:
        _lens_dust(cam, cv)
    # --- camera
    img = cv.img * np.asarray(camera.cast, np.float32) * camera.gain
    np.clip(img, 0.0, 1.0, out=img)
    img = np.power(img, camera.gamma)
    sigma = camera.blur * cv.R
    if sigma >= 0.4:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += cam.standard_normal((d, d, 1), dtype=np.float32) * camera.noise
    edge = np.clip((1.0 - np.sqrt(r2)) * cv.R, 0.0, 1.0)  # anti-aliased FOV rim, black outside
    img *= edge[..., None] * np.clip(1.0 - 0.5 * np.power(r2, 8), 0.0, 1.0)[..., None]
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- anatomy

def _optic_disc(rng, cv, disc, side, s):
    rd = rng.uniform(0.11, 0.135) * (1.0 + 0.25 * min(s("disc_edema") or 0.0, 1.5))
    angle = rng.uniform(-10, 10)
    halo = cv.mask()
    cv.ellipse(halo, disc, (rd * 1.5, rd * 1.6), angle)
    cv.paint(cv.soft(halo, 0.05), (0.95, 0.55, 0.3), 0.35)  # bright peripapillary glow
    m = cv.mask()
    cv.ellipse(m, disc, (rd * 0.92, rd), angle)
    blur = 0.015 if not s("disc_edema") else 0.06
    cv.paint(cv.soft(m, blur), (1.0, rng.uniform(0.6, 0.75), rng.uniform(0.3, 0.45)), 0.75)
    if s("myopic"):  # peripapillary atrophy crescent on the temporal side
        m = cv.mask()
        cv.ellipse(m, (disc[0] - side * rd * 0.6, disc[1]), (rd * (0.55 + 0.35 * s("myopic")), rd * 1.1), 0)
        cv.paint(cv.soft(m, 0.012), (0.97, 0.88, 0.7), min(0.9, 0.5 * s("myopic") + 0.3))
    g = s("cup") or 0.0
    cdr = rng.uniform(0.25, 0.42) if not g else min(0.9, rng.uniform(0.6, 0.72) + 0.1 * g)
    m = cv.mask()
    cv.ellipse(m, (disc[0] - side * rd * 0.08, disc[1]), (rd * cdr * 0.9, rd * cdr * (1.0 + 0.12 * (g > 0))), 0)
    cv.paint(cv.soft(m, 0.012), (1.0, 0.95, 0.82), 0.85 if g else 0.6)


def _tessellation(rng, cv, strength):
    """Choroidal vessels showing through a thin RPE: orange stripes on a dark brown ground."""
    m = cv.mask()
    out = []
    for _ in range(int(45 + 15 * strength)):
        a = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.05, 0.7)
        _walk(rng, (r * np.cos(a), r * np.sin(a)), a + rng.normal(0, 0.5), 0.04, 0.0, 1.0, 0.3,
              rng.uniform(0.018, 0.03), 1.0, 0.0, 0, out, "c")
    for pts, w, _ in out:
        cv.line(m, pts, w)
    inter = 1.0 - cv.soft(m, 0.01)
    k = min(1.0, 0.42 * strength)
    cv.darken(inter, (1 - 0.35 * k, 1 - 0.5 * k, 1 - 0.45 * k))


def _drusen(rng, cv, fovea, strength, spread):
    m = cv.mask()
    n = int(rng.uniform(30, 50) * strength)
    pts = np.asarray(fovea) + rng.normal(0, 0.15 * spread, (n, 2))
    cv.dots(m, pts, rng.uniform(0.01, 0.025, n))
    cv.paint(cv.soft(m, 0.01), (1.0, 0.85, 0.5), 0.75)
    if strength > 0.8:  # pigment clumps
        m = cv.mask()
        k = int(4 * strength)
        cv.dots(m, np.asarray(fovea) + rng.normal(0, 0.08, (k, 2)), rng.uniform(0.008, 0.018, k))
        cv.darken(cv.soft(m, 0.005), (0.45, 0.4, 0.4))


def _wet_amd(rng, cv, fovea, strength):
    m = cv.mask()
    r = rng.uniform(0.09, 0.16) * min(1.5, 0.6 + 0.4 * strength)
    cv.ellipse(m, fovea, (r * rng.uniform(0.8, 1.2), r), rng.uniform(0, 180))
    halo = cv.mask()
    cv.ellipse(halo, fovea, (r * 1.5, r * 1.35), rng.uniform(0, 180))
    cv.paint(cv.soft(halo, 0.03), (0.55, 0.1, 0.05), 0.7)  # haemorrhage rim
    cv.paint(cv.soft(m, 0.02), (0.55, 0.5, 0.3), 0.85)  # grey-green membrane / scar
    _drusen(rng, cv, fovea, 0.4 * strength, 1.6)


def _atrophy(rng, cv, disc, fovea, strength, count):
    for _ in range(count):
        c = np.asarray(fovea if rng.random() < 0.5 else disc) + rng.normal(0, 0.12, 2)
        r = rng.uniform(0.07, 0.16) * min(1.4, 0.6 + 0.4 * strength)
        m = cv.mask()
        cv.ellipse(m, c, (r * rng.uniform(0.7, 1.3), r), rng.uniform(0, 180))
        cv.paint(cv.soft(m, 0.015), (1.0, 0.93, 0.72), 0.85)
        p = cv.mask()
        k = int(6 + 6 * strength)
        ang = rng.uniform(0, 2 * np.pi, k)
        cv.dots(p, c + np.c_[np.cos(ang), np.sin(ang)] * r * rng.uniform(0.6, 1.1, (k, 1)), rng.uniform(0.01, 0.03, k))
        cv.darken(cv.soft(p, 0.006), (0.35, 0.3, 0.3))


def _bone_spicules(rng, cv, strength):
    m = cv.mask()
    n = int(40 + 60 * strength)
    a = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0.5, 0.95, n)
    for ai, ri in zip(a, r):
        c = (ri * np.cos(ai), ri * np.sin(ai))
        e = (c[0] + 0.04 * np.cos(ai + rng.normal(0, 1)), c[1] + 0.04 * np.sin(ai + rng.normal(0, 1)))
        cv.line(m, [c, e], 0.012)
    cv.darken(cv.soft(m, 0.004), (0.3, 0.28, 0.3))


def _laser_scars(rng, cv, strength):
    n = int(30 + 40 * strength)
    a = rng.uniform(0, 2 * np.pi, n)
    r = np.sqrt(rng.uniform(0.45**2, 0.88**2, n))
    pts = np.c_[r * np.cos(a), r * np.sin(a)]
    radii = rng.uniform(0.018, 0.03, n)
    rim = cv.mask()
    cv.dots(rim, pts, radii * 1.3)
    cv.darken(cv.soft(rim, 0.008), (0.45, 0.4, 0.4))
    core = cv.mask()
    cv.dots(core, pts, radii * 0.85)
    cv.paint(cv.soft(core, 0.008), (0.95, 0.85, 0.6), 0.8)


def _diabetic(rng, cv, disc, fovea, grade):
    """Microaneurysms, blot haemorrhages, hard exudates; grade ~0.5 mild .. 2 proliferative."""
    f = np.asarray(fovea)
    m = cv.mask()
    n = int(rng.uniform(10, 20) * grade)
    cv.dots(m, f + rng.normal(0, 0.3, (n, 2)), rng.uniform(0.01, 0.016, n))
    n = int(rng.uniform(4, 9) * grade)
    cv.dots(m, f + rng.normal(0, 0.35, (n, 2)), rng.uniform(0.022, 0.045, n))
    cv.darken(cv.soft(m, 0.011), (0.4, 0.1, 0.1))
    m = cv.mask()
    for _ in range(int(rng.integers(1, 3) + grade)):
        c = f + rng.normal(0, 0.22, 2)
        k = int(rng.uniform(6, 14) * grade)
        cv.dots(m, c + rng.normal(0, 0.06, (k, 2)), rng.uniform(0.012, 0.028, k))
    cv.paint(cv.soft(m, 0.009), (0.98, 0.88, 0.45), 0.85)
    if grade >= 1.8:  # neovascularisation at the disc
        m = cv.mask()
        out = []
        for _ in range(6):
            _walk(rng, disc, rng.uniform(0, 2 * np.pi), 0.015, 0.0, 1.0, 0.7, 0.006, 1.0, 0.0, 0, out, "n", 10)
        for pts, w, _ in out:
            cv.line(m, pts, w)
        cv.darken(cv.soft(m, 0.003), (0.55, 0.2, 0.2))


def _hypertensive(rng, cv, disc, h):
    m = cv.mask()
    n = int(rng.uniform(3, 7) * h)
    a = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0.15, 0.45, n)
    pts = np.asarray(disc) + np.c_[r * np.cos(a), r * np.sin(a)]
    for p, ai in zip(pts, a):
        cv.ellipse(m, p, (0.045, 0.02), np.degrees(ai))
    cv.paint(cv.soft(m, 0.02), (0.98, 0.95, 0.85), 0.75)  # cotton-wool spots
    m = cv.mask()
    n = int(rng.uniform(2, 6) * h)
    a = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(0.12, 0.35, n)
    for ai, ri in zip(a, r):
        p = np.asarray(disc) + ri * np.array([np.cos(ai), np.sin(ai)])
        cv.ellipse(m, p, (0.05, 0.013), np.degrees(ai))
    cv.darken(cv.soft(m, 0.006), (0.5, 0.12, 0.12))  # flame haemorrhages


def _vein_occlusion(rng, cv, disc, side, strength):
    m = cv.mask()
    up = -1 if rng.random() < 0.5 else 1
    n = int(25 + 25 * strength)
    t = rng.uniform(0.1, 0.7, n)
    ang = np.arctan2(up, -side * 0.8) + rng.normal(0, 0.35, n)
    pts = np.asarray(disc) + np.c_[t * np.cos(ang), t * np.sin(ang)]
    for p, a in zip(pts, ang):
        cv.ellipse(m, p, (rng.uniform(0.02, 0.05), 0.012), np.degrees(a))
    cv.darken(cv.soft(m, 0.006), (0.45, 0.1, 0.1))


def _myelinated(rng, cv, disc, side, strength):
    m = cv.mask()
    up = -1 if rng.random() < 0.5 else 1
    c = (disc[0] - side * 0.05, disc[1] + up * 0.12)
    cv.ellipse(m, c, (0.1 * (0.7 + 0.3 * strength), 0.18), rng.uniform(-30, 30))
    alpha = cv.soft(m, 0.03) * (0.75 + 0.25 * _smooth_noise(rng, cv.d, 12))
    cv.paint(np.clip(alpha, 0, 1), (0.97, 0.95, 0.9), 0.85)


def _membrane(rng, cv, fovea, strength):
    m = cv.mask()
    cv.ellipse(m, fovea, (rng.uniform(0.15, 0.25), rng.uniform(0.12, 0.2)), rng.uniform(0, 180))
    cv.paint(cv.soft(m, 0.05), (0.95, 0.9, 0.8), 0.3 + 0.15 * strength)
    w = cv.mask()
    for _ in range(8):
        a = rng.uniform(0, 2 * np.pi)
        cv.line(w, [fovea, (fovea[0] + 0.18 * np.cos(a), fovea[1] + 0.18 * np.sin(a))], 0.006)
    cv.paint(cv.soft(w, 0.004), (1.0, 0.97, 0.9), 0.25 + 0.1 * strength)


def _cataract(rng, cv, strength, partial=False):
    """Lens opacity: blur, loss of contrast, a bright yellowish or dull grey-green veil."""
    k = float(np.clip(strength * rng.uniform(0.55, 0.8), 0.0, 0.92))
    sigma = cv.R * (0.012 + 0.03 * k)
    blurred = cv2.GaussianBlur(cv.img, (0, 0), sigma) if sigma >= 0.4 else cv.img
    if rng.random() < 0.55:
        veil = np.array([rng.uniform(0.7, 0.95), rng.uniform(0.6, 0.8), rng.uniform(0.3, 0.5)], np.float32)
    else:
        veil = np.array([rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.45), rng.uniform(0.2, 0.32)], np.float32)
    amount = np.clip(k * (1.0 + 0.35 * _smooth_noise(rng, cv.d, 4)), 0.0, 0.95)
    if partial:
        c = rng.uniform(-0.5, 0.5, 2)
        x, y, _ = _grid(cv.d)
        amount = amount * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * 0.35**2))
    mean = blurred.mean(axis=(0, 1), keepdims=True)
    flat = blurred * (1 - 0.5 * k) + mean * 0.5 * k  # contrast loss
    cv.img = flat + (veil - flat) * amount[..., None]


def _floaters(rng, cv, strength):
    m = cv.mask()
    out = []
    for _ in range(int(1 + 2 * strength)):
        _walk(rng, tuple(rng.uniform(-0.6, 0.6, 2)), rng.uniform(0, 2 * np.pi), 0.04, 0.0, 1.0, 0.4,
              0.04, 1.0, 0.0, 0, out, "f", 12)
    for pts, w, _ in out:
        cv.line(m, pts, w)
    cv.darken(cv.soft(m, 0.03), (0.55, 0.55, 0.6))


def _lens_dust(rng, cv):
    m = cv.mask()
    n = int(rng.integers(2, 7))
    cv.dots(m, rng.uniform(-0.7, 0.7, (n, 2)), rng.uniform(0.02, 0.05, n))
    cv.darken(cv.soft(m, 0.015), (0.75, 0.75, 0.78))
