"""The odir5k TFDS builder and the ``tfds:`` training source, built and read without TensorFlow.

References: the source annotations read by ``read_annotations``, the study split, the keyword
rules and ``prepare_image`` / ``decode_image`` applied directly to the source files, and the
study's published validation IDs.
"""

from __future__ import annotations

import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="needs the optional tfds extra (tensorflow-datasets)")
pytest.importorskip("array_record", reason="needs the optional tfds extra (array-record)")

from odir_core.data.annotations import eye_labels, is_special, read_annotations, write_annotations  # noqa: E402
from odir_core.data.imageio import decode_image  # noqa: E402
from odir_core.data.layouts import LAYOUTS  # noqa: E402
from odir_core.data.preprocess import prepare_image  # noqa: E402
from odir_core.data.splits import study_split  # noqa: E402
from odir_core.data.synthetic import generate  # noqa: E402
from odir_core.data.tfds.cli import main as tfds_main  # noqa: E402
from odir_core.labels import LABELS  # noqa: E402
from reference_data import ANNOTATIONS, EXPERIMENTS, needs  # noqa: E402

SIZE = 32
CONFIG = f"prepared_{SIZE}"
PATIENTS = 10
TEST_PATIENTS = 3
SPECIAL_NAME = "2175_left.jpg"  # one of the 16 special images, given to a synthetic patient
SKIP = {"left": tfds.decode.SkipDecoding(), "right": tfds.decode.SkipDecoding()}


def _build(manual_dir, data_dir, config=CONFIG, workers=1) -> int:
    return tfds_main(["build", "--source", str(manual_dir), "--variant", config,
                      "--data-dir", str(data_dir), "--workers", str(workers)])


def _zip(folder: Path, target: Path, wrap: str) -> Path:
    """Zip ``folder`` with every member under a wrapping top folder ``wrap``."""
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{wrap}/{path.relative_to(folder).as_posix()}")
    return target


def _make_special(folder: Path, layout) -> int:
    """Give the first patient's left eye one of the 16 special file names; returns its ID."""
    ann = folder / layout.annotations
    df = read_annotations(ann, exclude_special=False)
    images = folder / layout.images
    (images / df.loc[0, "Left-Fundus"]).rename(images / SPECIAL_NAME)
    df.loc[0, "Left-Fundus"] = SPECIAL_NAME
    write_annotations(df, ann)
    return int(df.loc[0, "ID"])


def _check_split(records, frame: pd.DataFrame, images: Path, special: bool, size=SIZE) -> None:
    """Every record equals its annotation row: features, keyword-rule eye labels and the image
    prepared from the source file by odir_core.data.preprocess (or decoded as is for raw)."""
    assert len(records) == len(frame)
    for i, row in frame.iterrows():
        r = records[i]
        assert r["id"] == row["ID"]
        assert r["age"] == row["Patient Age"]
        assert r["sex"].decode() == row["Patient Sex"]
        np.testing.assert_array_equal(r["labels"], row[list(LABELS)].to_numpy(dtype=int))
        assert bool(r["special"]) is special
        for side, column, keywords in (("left", "Left-Fundus", "Left-Diagnostic Keywords"),
                                       ("right", "Right-Fundus", "Right-Diagnostic Keywords")):
            assert r[f"{side}_file"].decode() == row[column]
            assert r[f"{side}_keywords"].decode() == row[keywords]
            np.testing.assert_array_equal(r[f"{side}_labels"], eye_labels(row[keywords]))
            data = (images / row[column]).read_bytes()
            expected = prepare_image(data, size) if size else decode_image(data)
            np.testing.assert_array_equal(r[side], expected)


# (layout, how the manual dir holds it)
CASES = [
    ("grand-challenge", "folder"),
    ("kaggle", "zip in folder"),
    ("oia", "zip"),
    ("prepared", "folder"),
]


@pytest.mark.parametrize("layout_name,form", CASES)
def test_build_each_layout_reads_back_the_annotations(tmp_path, layout_name, form):
    layout = LAYOUTS[layout_name]
    tests = TEST_PATIENTS if layout.test_sets else 0
    folder = generate(tmp_path / "src", PATIENTS, size=64, seed=3, layout=layout_name, workers=1,
                      test_patients=tests)
    special_id = _make_special(folder, layout) if layout_name == "prepared" else None
    if form == "folder":
        manual = folder
    elif form == "zip":
        manual = _zip(folder, tmp_path / "odir.zip", "ODIR")
    else:
        manual = tmp_path / "manual"
        manual.mkdir()
        _zip(folder, manual / "archive.zip", "archive")
    data_dir = tmp_path / "tfds"
    assert _build(manual, data_dir, workers=2 if layout_name == "oia" else 1) == 0

    ds = tfds.data_source(f"odir5k/{CONFIG}", data_dir=str(data_dir))
    df = read_annotations(folder / layout.annotations, exclude_special=False)
    train, val = study_split(df)
    expected = {"train": train, "validation": val}
    if special_id is not None:
        expected["special"] = df[is_special(df)].reset_index(drop=True)
        assert list(expected["special"]["ID"]) == [special_id]
    for name, annotations, _ in layout.test_sets:
        expected[name] = read_annotations(folder / annotations, exclude_special=False)
    assert set(ds) == set(expected)
    assert len(ds["train"]) + len(ds["validation"]) == PATIENTS - (special_id is not None)
    for name, frame in expected.items():
        images = folder / dict((n, i) for n, _, i in layout.test_sets).get(name, layout.images)
        _check_split(ds[name], frame, images, special=name == "special")
    if layout.test_sets:
        assert len(ds["off_site_test"]) == len(ds["on_site_test"]) == TEST_PATIENTS


def test_raw_config_keeps_the_original_files(tmp_path):
    folder = generate(tmp_path / "src", 6, size=64, seed=5, layout="grand-challenge", workers=1)
    layout = LAYOUTS["grand-challenge"]
    df = read_annotations(folder / layout.annotations)
    gray_file = folder / layout.images / df.loc[0, "Left-Fundus"]
    colour = decode_image(gray_file.read_bytes())
    cv2.imwrite(str(gray_file), cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY))  # a grayscale JPEG
    data_dir = tmp_path / "tfds"
    assert _build(folder, data_dir, config="raw") == 0

    ds = tfds.data_source("odir5k/raw", data_dir=str(data_dir))
    train, val = study_split(df)
    _check_split(ds["train"], train, folder / layout.images, special=False, size=None)
    _check_split(ds["validation"], val, folder / layout.images, special=False, size=None)
    builder = tfds.builder("odir5k/raw", data_dir=str(data_dir))
    stored = {}
    for split in ("train", "validation"):
        for r in builder.as_data_source(split, decoders=SKIP):
            stored[r["left_file"].decode()] = r["left"]
    for name, data in stored.items():
        original = (folder / layout.images / name).read_bytes()
        if name == gray_file.name:  # re-encoded as 3-channel PNG, the other files byte for byte
            assert data[:4] == b"\x89PNG" and data != original
        else:
            assert data == original
    report = pd.read_csv(Path(builder.data_path) / "build_report.csv")
    assert report[["ID", "side", "status"]].values.tolist() == [[int(df.loc[0, "ID"]), "left", "repaired"]]


def test_bad_images_are_reported_and_skipped(tmp_path, capsys):
    folder = generate(tmp_path / "src", 8, size=64, seed=7, layout="grand-challenge", workers=1)
    layout = LAYOUTS["grand-challenge"]
    df = read_annotations(folder / layout.annotations)
    truncated = folder / layout.images / df.loc[1, "Right-Fundus"]
    truncated.write_bytes(truncated.read_bytes()[:200])
    (folder / layout.images / df.loc[4, "Left-Fundus"]).unlink()
    data_dir = tmp_path / "tfds"
    assert _build(folder, data_dir) == 0

    ds = tfds.data_source(f"odir5k/{CONFIG}", data_dir=str(data_dir))
    stored = [r["id"] for split in ("train", "validation") for r in ds[split]]
    assert sorted(stored) == sorted(set(df["ID"]) - {df.loc[1, "ID"], df.loc[4, "ID"]})
    report = pd.read_csv(data_dir / "odir5k" / CONFIG / "1.0.0" / "build_report.csv")
    errors = report[report["status"] == "error"].sort_values("ID")
    assert errors[["ID", "side"]].values.tolist() == [[df.loc[1, "ID"], "right"], [df.loc[4, "ID"], "left"]]
    assert "missing" in errors["reason"].iloc[1] and "truncated" in errors["reason"].iloc[0].lower()
    err = capsys.readouterr().err
    assert f"patient {df.loc[1, 'ID']} right" in err and f"patient {df.loc[4, 'ID']} left" in err


def test_building_twice_is_a_no_op(tmp_path, capsys):
    folder = generate(tmp_path / "src", 4, size=64, seed=9, layout="prepared", workers=1)
    data_dir = tmp_path / "tfds"
    assert _build(folder, data_dir) == 0
    files = {p: p.stat().st_mtime_ns for p in (data_dir / "odir5k" / CONFIG).rglob("*") if p.is_file()}
    shutil.rmtree(folder)  # the source is not even looked at again
    capsys.readouterr()
    assert _build(folder, data_dir) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (data_dir / "odir5k" / CONFIG).rglob("*") if p.is_file()} == files


def test_manual_dir_without_odir5k_says_where_to_get_it(tmp_path, capsys):
    empty = tmp_path / "manual"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    assert _build(empty, tmp_path / "tfds") == 2
    err = capsys.readouterr().err
    assert "no ODIR-5K dataset found" in err and "grand-challenge" in err and "kaggle.com" in err
    assert not (tmp_path / "tfds" / "odir5k" / CONFIG).exists()
    assert _build(tmp_path / "absent", tmp_path / "tfds") == 2


def test_unknown_config_is_rejected(tmp_path, capsys):
    assert _build(tmp_path, tmp_path / "tfds", config="prepared_big") == 2
    assert "prepared_224, prepared_512, raw" in capsys.readouterr().err


def test_cli_help_explains_every_flag():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "odir_core.tfds", "build", "--help"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--source", "--variant", "--config", "--data-dir", "--workers"):
        assert flag in out
    assert "--manual-dir" not in out and "FILE.toml" in out  # --config is a TOML file, as in every command


def test_cli_takes_its_flags_from_a_config_file(tmp_path, capsys):
    """--config FILE.toml: its keys are build's flags; a missing source or an unknown key is one parser error."""
    config = tmp_path / "build.toml"
    config.write_text(f'source = "{tmp_path / "nothing"}"\nvariant = "prepared_32"\ndata_dir = "{tmp_path / "tfds"}"\n')
    assert tfds_main(["build", "--config", str(config)]) == 2  # the source has no ODIR-5K: it was read from the file
    assert "no ODIR-5K dataset found" in capsys.readouterr().err
    config.write_text('variant = "prepared_32"\n')
    with pytest.raises(SystemExit):
        tfds_main(["build", "--config", str(config)])
    assert "--source is required" in capsys.readouterr().err
    config.write_text('manual_dir = "x"\n')
    with pytest.raises(SystemExit):
        tfds_main(["build", "--config", str(config)])
    assert "unknown key(s) manual_dir" in capsys.readouterr().err


@needs(ANNOTATIONS)
def test_real_annotations_give_the_study_validation_split(tmp_path):
    layout = LAYOUTS["grand-challenge"]
    src = tmp_path / "gc"
    images = src / layout.images
    images.mkdir(parents=True)
    shutil.copy(ANNOTATIONS, src / layout.annotations)
    df = read_annotations(src / layout.annotations, exclude_special=False)
    disc = np.zeros((16, 16, 3), np.uint8)
    cv2.circle(disc, (8, 8), 6, (90, 60, 30), -1)
    data = cv2.imencode(".jpg", disc)[1].tobytes()
    for name in pd.concat([df["Left-Fundus"], df["Right-Fundus"]]):
        (images / name).write_bytes(data)
    data_dir = tmp_path / "tfds"
    assert _build(src, data_dir, config="raw", workers=2) == 0

    builder = tfds.builder("odir5k/raw", data_dir=str(data_dir))
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert counts == {"train": 2792, "validation": 698, "special": 10}
    truth = pd.read_excel(EXPERIMENTS / "experiment_0" / "ground_truth.xlsx")
    val = builder.as_data_source("validation", decoders=SKIP)
    assert [int(r["id"]) for r in val] == truth["ID"].tolist()
    np.testing.assert_array_equal(np.stack([r["labels"] for r in val]), truth[list(LABELS)].to_numpy())
    special = builder.as_data_source("special", decoders=SKIP)
    assert {int(r["id"]) for r in special} == {2174, 2175, 2176, 2177, 2178, 2179, 2180, 2181, 2182, 2957}
    assert all(r["special"] for r in special)


def _built_and_prepared(tmp_path, patients=12):
    """The same synthetic source built as odir5k/prepared_32 and prepared by odir_core.data.prepare at 32 px."""
    from odir_core.data.prepare import main as prepare_main

    src = generate(tmp_path / "src", patients, size=64, seed=11, layout="grand-challenge", workers=1)
    data_dir = tmp_path / "tfds"
    assert _build(src, data_dir) == 0
    folder = tmp_path / "prepared"
    assert prepare_main(["--source", str(src), "--out", str(folder), "--size", str(SIZE), "--workers", "1"]) == 0
    return data_dir, folder


def test_tfds_source_gives_the_folder_path_rows_and_batches(tmp_path, monkeypatch):
    from keras_odir.data import image_batches
    from odir_core.data.dataset import DualEyeDataset
    from odir_core.data.splits import split_frames
    from odir_core.training.run import resolve_data

    data_dir, folder = _built_and_prepared(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    root, _ = resolve_data(f"tfds:odir5k/{CONFIG}")
    assert root == data_dir / "odir5k" / CONFIG / "1.0.0"

    from odir_core.data.tfds.source import split_frames as tfds_split_frames

    same = ["ID", "Patient Age", "Patient Sex", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords", *LABELS]
    folder_frames = split_frames(read_annotations(folder / "annotations.xlsx"), "study")
    tfds_frames = tfds_split_frames(root, "study")
    for ours, theirs in zip(tfds_frames, folder_frames):
        pd.testing.assert_frame_equal(ours[same], theirs[same])

    # a split file picks the same patients from both sources
    from odir_core.data.splits import save_split

    ids = folder_frames[0]["ID"].tolist() + folder_frames[1]["ID"].tolist()
    split_file = save_split(tmp_path / "split.json", ids[3:], ids[:3])
    for ours, theirs in zip(tfds_split_frames(root, str(split_file)),
                            split_frames(read_annotations(folder / "annotations.xlsx"), str(split_file))):
        pd.testing.assert_frame_equal(ours[same], theirs[same])

    options = dict(image_size=28, crop_size=24, augment="dual", train=True, seed=5)
    from_folder = DualEyeDataset(folder, folder_frames[0], **options)
    from_tfds = DualEyeDataset(root, tfds_frames[0], **options)
    order = dict(seed=5, balanced=True, epochs=2)
    folder_batches = image_batches(from_folder, 4, **order)
    tfds_batches = image_batches(from_tfds, 4, **order)
    assert len(tfds_batches) == len(folder_batches) == 2 * -(-len(from_folder) // 4)
    for i in range(len(folder_batches)):
        (x_f, y_f), (x_t, y_t) = folder_batches[i], tfds_batches[i]
        np.testing.assert_array_equal(y_t, y_f)
        np.testing.assert_array_equal(x_t["left"], x_f["left"])
        np.testing.assert_array_equal(x_t["right"], x_f["right"])
    worker_copy = pickle.loads(pickle.dumps(from_tfds))  # as sent to data-loading worker processes
    np.testing.assert_array_equal(worker_copy.pair(2, epoch=1, position=3)[1],
                                  from_folder.pair(2, epoch=1, position=3)[1])


def test_training_data_without_tensorflow_datasets_installed(tmp_path, monkeypatch):
    from odir_core.training.run import DataSourceError, resolve_data

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
    folder = generate(tmp_path / "prepared", 3, size=32, seed=1, layout="prepared", workers=1)
    assert resolve_data(str(folder))[0] == folder  # the folder path needs no TFDS
    with pytest.raises(DataSourceError, match=r"needs tensorflow-datasets; pip install 'keras-odir\[tfds\]'"):
        resolve_data("tfds:odir5k/prepared_512")


def test_tfds_source_not_built_says_how_to_build(tmp_path, monkeypatch):
    from odir_core.training.run import DataSourceError, resolve_data

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataSourceError, match="python -m odir_core.tfds build --source PATH --variant prepared_224"):
        resolve_data("tfds:odir5k/prepared_224")
    with pytest.raises(DataSourceError, match="no built TFDS dataset"):
        resolve_data("tfds:odir5k/prepared_77")


def _train(package: str, data: str, run_dir: Path, *extra: str) -> Path:
    """One epoch of the demo config (built image size, no weighted loss for a tiny split); the run folder."""
    import importlib

    argv = ["--data", data, "--epochs", "1", "--image-size", str(SIZE), "--batch-size", "4", "--no-weighted-loss",
            "--run-dir", str(run_dir), *extra]
    assert importlib.import_module(f"{package}.train").main(argv) == 0
    (run,) = run_dir.iterdir()
    return run


def _history(run: Path) -> pd.DataFrame:
    from odir_core.training.history import HISTORY_FILE

    history = pd.read_csv(run / HISTORY_FILE)
    return history.drop(columns=[c for c in history if "time" in c])


def test_one_training_epoch_from_the_tfds_source(tmp_path, monkeypatch):
    data_dir, _ = _built_and_prepared(tmp_path, patients=10)
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    run = _train("keras_odir", f"tfds:odir5k/{CONFIG}", tmp_path / "runs")
    history = _history(run)
    assert len(history) == 1 and np.isfinite(history.filter(like="loss").to_numpy(dtype=float)).all()
    assert str(data_dir / "odir5k" / CONFIG / "1.0.0") in (run / "config.toml").read_text()
    assert (run / "best.keras").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("package", ["keras_odir", "torch_odir"])
def test_training_from_the_tfds_source_equals_training_from_the_folder(tmp_path, monkeypatch, package):
    data_dir, folder = _built_and_prepared(tmp_path, patients=10)
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    augmented = ("--augment", "dual", "--crop-size", "28", "--balanced-sampler")
    from_tfds = _history(_train(package, f"tfds:odir5k/{CONFIG}", tmp_path / "tfds_run", *augmented))
    from_folder = _history(_train(package, str(folder), tmp_path / "folder_run", *augmented))
    pd.testing.assert_frame_equal(from_tfds, from_folder)
