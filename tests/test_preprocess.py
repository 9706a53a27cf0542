"""odir_core.data.preprocess / imageio: the study's FOV/circle chain, special inputs, reduced JPEG decoding."""

from __future__ import annotations

import io
import sys
import threading

import cv2
import numpy as np
import pytest
from fundus_images import (
    draw_fundus,
    landscape_image,
    noise_image,
    write_jpeg,
    zero_middle_of_scan,
)
from PIL import Image, ImageOps

from odir_core.data.imageio import (
    ImageDecodeError,
    decode_image,
    encode_image,
    load_image,
    reduction_factor,
)
from odir_core.data.preprocess import (
    MAX_BLUE,
    MAX_SURROUND,
    MIN_FILL,
    MIN_RED_GREEN,
    NotFundusError,
    PreprocessError,
    circle_crop,
    fov_extract,
    fundus_problems,
    fundus_stats,
    has_white_background,
    prepare_image,
    preprocess_fundus,
)
from reference_data import REAL_SAMPLES, needs

needs_real = needs(REAL_SAMPLES)


def study_fov(img, tol=7):
    """The study's FOVExtraction, verbatim semantics: keep rows/columns with any gray > tol."""
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask = gray > tol
    return np.stack([img[:, :, c][np.ix_(mask.any(1), mask.any(0))] for c in range(3)], axis=-1)


def real_cropped():
    return sorted(p for p in REAL_SAMPLES.glob("*.png"))


def real_raw():
    return sorted((REAL_SAMPLES / "raw").glob("raw_*.png"))


@needs_real
def test_fov_extract_equals_study_definition_on_real_photographs():
    for path in real_cropped()[:10] + real_raw():
        img = load_image(path)
        np.testing.assert_array_equal(fov_extract(img), study_fov(img))


def test_fov_extract_crops_to_bright_bounding_box():
    img = np.zeros((20, 30, 3), np.uint8)
    img[5, 7] = (8, 8, 8)  # gray 8 > 7
    img[12, 20] = (0, 0, 40)  # gray round(0.114*40) = 5 <= 7: background
    img[14, 22] = (0, 30, 0)  # gray 18
    out = fov_extract(img)
    assert out.shape == (10, 16, 3)
    assert tuple(out[0, 0]) == (8, 8, 8) and tuple(out[-1, -1]) == (0, 30, 0)


def test_circle_crop_keeps_the_inscribed_disc():
    h, w = 41, 60
    img = np.full((h, w, 3), 255, np.uint8)
    out = circle_crop(img)
    cx, cy, r = w // 2, h // 2, min(h, w) // 2
    yy, xx = np.mgrid[:h, :w]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    assert (out[d2 <= (r - 1) ** 2] == 255).all()
    assert (out[d2 >= (r + 1) ** 2] == 0).all()


def test_black_and_nearly_black_images_raise_clear_errors():
    black = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(PreprocessError, match="black"):
        preprocess_fundus(black, 32)
    speck = black.copy()
    speck[10, 10] = 255
    with pytest.raises(PreprocessError, match="nearly black"):
        preprocess_fundus(speck, 32)
    with pytest.raises(PreprocessError, match="uint8 RGB"):
        preprocess_fundus(np.zeros((10, 10), np.float32), 32)


def _assert_square_fundus(out, size):
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        assert corner.max() <= 7
    gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    rows = np.flatnonzero((gray > 7).any(axis=1))
    cols = np.flatnonzero((gray > 7).any(axis=0))
    assert rows[0] <= 1 and rows[-1] >= size - 2 and cols[0] <= 1 and cols[-1] >= size - 2  # FOV touches all sides


@needs_real
@pytest.mark.parametrize("size", [64, 224])
def test_raw_real_photographs_become_square_fundus_crops(size):
    for path in real_raw():
        _assert_square_fundus(prepare_image(path, size), size)


@needs_real
def test_chain_is_idempotent_on_already_cropped_photographs():
    errors = []
    for path in real_cropped():
        img = load_image(path)
        out = preprocess_fundus(img, img.shape[0])
        errors.append(np.abs(out.astype(int) - img).mean())
    assert max(errors) < 1.5  # measured: max 0.75, mean 0.47 grey levels (resize error only)


def test_white_surround_is_detected_and_made_black():
    fundus = draw_fundus(90, 120, seed=3)
    white = fundus.copy()
    white[fundus.max(axis=2) == 0] = 255
    assert has_white_background(white) and not has_white_background(fundus)
    notes = []
    out = preprocess_fundus(white, 64, notes=notes)
    assert notes == ["white surround replaced by black"]
    _assert_square_fundus(out, 64)
    assert np.abs(out.astype(int) - preprocess_fundus(fundus, 64)).mean() < 1.0


@needs_real
def test_white_surround_real_photograph():
    img = load_image(REAL_SAMPLES / "raw" / "raw_2.png")
    white = img.copy()
    white[img.max(axis=2) <= 2] = (255, 255, 255)
    out = preprocess_fundus(white, 128)
    _assert_square_fundus(out, 128)
    assert np.abs(out.astype(int) - preprocess_fundus(img, 128)).mean() < 3.0


def test_load_image_normalises_gray_rgba_16bit_and_exif(tmp_path):
    rgb = draw_fundus(40, 60, seed=1)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0  # transparent rows become black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    expected = rgb.copy()
    expected[:10] = 0
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), expected)

    deep = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png"), rgb)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    reference = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")).convert("RGB"))
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.shape == (60, 40, 3) == reference.shape
    assert np.abs(loaded.astype(int) - reference).mean() < 1.0


def test_reduced_decoding_honours_exif_orientation(tmp_path):
    rgb = draw_fundus(1200, 1600, seed=2, texture=False)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", quality=90, exif=exif.tobytes())
    loaded = load_image(tmp_path / "rot.jpg", target_size=300)  # decoded at 1/4 scale
    reference = cv2.resize(np.rot90(rgb), (300, 400), interpolation=cv2.INTER_AREA)
    assert loaded.shape == (400, 300, 3)
    assert np.abs(loaded.astype(int) - reference).mean() < 2.0


def test_truncated_and_garbage_files_raise_naming_the_file(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", draw_fundus(60, 80))
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(PreprocessError, match=r"cut\.jpg: truncated JPEG"):
        prepare_image(tmp_path / "cut.jpg", 32)
    (tmp_path / "tail.jpg").write_bytes(data + b"camera trailer" * 100)  # data after the end marker is fine
    assert prepare_image(tmp_path / "tail.jpg", 32).shape == (32, 32, 3)
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(PreprocessError, match=r"junk\.jpg"):
        prepare_image(tmp_path / "junk.jpg", 32)


def test_reduction_factor_leaves_at_least_the_target():
    assert reduction_factor(2304, 1728, 512) == 2
    assert reduction_factor(2304, 1728, 224) == 4
    assert reduction_factor(2304, 1728, 200) == 8
    assert reduction_factor(2304, 1728, None) == 1
    assert reduction_factor(600, 500, 512) == 1


def test_reduced_decoding_matches_full_decoding_at_512(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", draw_fundus(1728, 2304, seed=5), quality=90)
    fast = prepare_image(path, 512)  # decoded at 1/2 scale
    full = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))  # PIL, full resolution
    slow = preprocess_fundus(full, 512)
    mae = np.abs(fast.astype(int) - slow).mean()
    assert fast.shape == slow.shape == (512, 512, 3)
    # measured 1.6 grey levels (0.6 without pixel noise): the FOV box found at 1/2 scale is ~1 px off
    assert mae < 2.0, mae


def test_reduced_decoding_falls_back_when_the_fundus_is_small(tmp_path):
    img = np.zeros((1200, 1600, 3), np.uint8)
    img[400:800, 600:1000] = draw_fundus(400, 400, seed=2)  # fundus 400 px in a 1200 px photo
    path = write_jpeg(tmp_path / "small_fov.jpg", img)
    notes = []
    out = prepare_image(path, 300, notes=notes)  # header allows 1/4 (300 px short side): fundus would be 100 px
    assert out.shape == (300, 300, 3)
    assert notes == []  # no upscaling: decoded at a finer scale instead


def _margins(stats) -> dict:
    """How far each fundus-check criterion is from its threshold (positive: passes)."""
    r, g, b = stats.mean_rgb
    return {
        "surround": MAX_SURROUND - stats.surround,
        "fill": stats.fill - MIN_FILL,
        "red/green": r / g - MIN_RED_GREEN,
        "blue": MAX_BLUE - b / min(r, g),
    }


@needs_real
def test_fundus_check_accepts_every_real_photograph():
    paths = real_cropped() + real_raw()
    assert len(paths) == 49
    worst = {}
    for path in paths:
        img = load_image(path)
        assert fundus_problems(img) == [], path
        assert prepare_image(path, 64).shape == (64, 64, 3)
        for name, margin in _margins(fundus_stats(img)).items():
            worst[name] = min(worst.get(name, np.inf), margin)
    # measured smallest margins: surround 0.17, fill 0.19, red/green 0.30, blue 0.17
    assert min(worst.values()) > 0.1, worst


def test_fundus_check_accepts_synthetic_photographs():
    from odir_core.data.synthetic import render_patient

    for pid in range(24):
        for raw in (True, False):  # camera frames (some white-surround, some cut at top and bottom) and crops
            for img in render_patient(0, pid, 160, raw):
                assert preprocess_fundus(img, 64).shape == (64, 64, 3), (pid, raw)
    for seed in range(3):
        assert fundus_problems(draw_fundus(300, 400, seed)) == []
        assert fundus_problems(draw_fundus(300, 400, seed, texture=False)) == []


@pytest.mark.parametrize(
    "case, error, reason",
    [
        ("noise", NotFundusError, r"not a fundus photograph: no dark surround .*colours are not a retina's"),
        ("landscape", NotFundusError, r"not a fundus photograph: no dark surround .*colours are not a retina's"),
        ("grey_fundus", NotFundusError, r"not a fundus photograph: colours are not a retina's \(mean R,G,B"),
        ("white", PreprocessError, r"image is blank \(all white\)"),
        ("black", PreprocessError, r"image is black"),
    ],
)
def test_non_fundus_images_are_rejected_naming_file_and_reason(tmp_path, case, error, reason):
    img = {
        "noise": noise_image(),
        "landscape": landscape_image(),
        "grey_fundus": np.repeat(cv2.cvtColor(draw_fundus(480, 640), cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2),
        "white": np.full((480, 640, 3), 255, np.uint8),
        "black": np.zeros((480, 640, 3), np.uint8),
    }[case]
    path = tmp_path / f"{case}.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    with pytest.raises(error, match=reason) as caught:
        prepare_image(path, 64)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "leave the patient out" in message  # says what to do
    if error is PreprocessError:
        assert not isinstance(caught.value, NotFundusError)  # blank/black: never kept by --keep-non-fundus
    with pytest.raises(PreprocessError):
        preprocess_fundus(img, 64)  # also without a file


def test_non_fundus_image_is_kept_with_a_note_when_asked():
    notes = []
    out = preprocess_fundus(landscape_image(), 64, notes=notes, check_fundus=False)
    assert out.shape == (64, 64, 3)
    assert len(notes) == 1 and notes[0].startswith("kept although not like a fundus photograph: no dark surround")


def test_fundus_check_accepts_a_circle_touching_the_frame_edges():
    img = draw_fundus(200, 200, seed=4)
    cropped = preprocess_fundus(img, 200)  # circle inscribed in the square, black corners
    assert fundus_problems(cropped) == []
    stats = fundus_stats(cropped)
    assert stats.surround < 0.1 and stats.fill > 0.95 and stats.diameter > 0.95
    assert min(_margins(stats).values()) > 0


def _jpeg_q95() -> bytes:
    """A photograph-like JPEG: a real sample when available, else a drawn fundus, at OpenCV quality 95."""
    path = REAL_SAMPLES / "raw" / "raw_2.png"
    img = load_image(path) if path.is_file() else draw_fundus(300, 400, seed=6)
    big = cv2.resize(img, (img.shape[1] * 4, img.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    return encode_image(big, "jpg", quality=95)


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_jpeg_with_zeroed_middle_is_rejected_as_corrupt(tmp_path, reduce):
    data = _jpeg_q95()
    bad = zero_middle_of_scan(data)
    assert bad[-2:] == b"\xff\xd9" and len(bad) == len(data)  # end marker intact
    assert decode_image(data, reduce).shape[2] == 3  # the intact file decodes
    with pytest.raises(ImageDecodeError, match=r"corrupt JPEG \(libjpeg: Corrupt JPEG data"):
        decode_image(bad, reduce)
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bad)
    with pytest.raises(ImageDecodeError, match=r"damaged\.jpg: corrupt JPEG") as caught:
        load_image(path, target_size=64 if reduce > 1 else None)
    assert "\n" not in str(caught.value) and "replace the file" in str(caught.value)
    with pytest.raises(PreprocessError, match=r"damaged\.jpg: corrupt JPEG"):
        prepare_image(path, 64)


@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"progressive": True}, {"subsampling": 0, "quality": 75}])
def test_jpegs_from_pillow_are_accepted_and_their_damage_detected(options):
    rgb = draw_fundus(480, 640, seed=7)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **{"quality": 95, **options})
    data = buf.getvalue()
    assert np.abs(decode_image(data).astype(int) - rgb).mean() < 3
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        decode_image(zero_middle_of_scan(data))


def test_corrupt_jpeg_warning_is_not_printed_and_stderr_still_works(capfd):
    bad = zero_middle_of_scan(_jpeg_q95())
    with pytest.raises(ImageDecodeError):
        decode_image(bad)
    print("after the decode", file=sys.stderr)
    err = capfd.readouterr().err
    assert "Corrupt JPEG" not in err and "after the decode" in err


def test_jpeg_damage_is_attributed_to_the_right_image_across_threads():
    good = encode_image(draw_fundus(600, 800, seed=8), "jpg", quality=95)
    bad = zero_middle_of_scan(good)
    results = {}

    def work(k):
        data = bad if k % 2 else good
        try:
            decode_image(data)
            results[k] = "ok"
        except ImageDecodeError:
            results[k] = "corrupt"

    threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: "corrupt" if k % 2 else "ok" for k in range(12)}
