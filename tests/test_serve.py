"""The serve command (odir_core.serving) on loopback with the tiny random-weight models: the JSON API against
predict's probabilities, the model description, bad input answered 4xx with predict's error lines, the
upload and decompression limits, Grad-CAM overlays, and a bounded load of 200 requests from 8 threads."""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import threading
import urllib.request
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fundus_images import noise_image, zero_middle_of_scan

from keras_odir.cli_backend import BACKEND as KERAS
from keras_odir.predict import main as keras_predict
from odir_core.evaluation.inference import load_model, model_input, predict_batch, prepare_photo
from odir_core.labels import LABELS
from reference_data import REAL_SAMPLES, needs
from serve_helpers import multipart, post_photos, request, running_server
from tiny_runs import new_run, run_config, shared_models
from torch_odir.cli_backend import BACKEND as TORCH

pytestmark = needs(REAL_SAMPLES / "samples.csv")
RAW = REAL_SAMPLES / "raw"
PAIR = (RAW / "raw_0.png", RAW / "raw_2.png")
PROB_LINE = re.compile(r"^([NDGCAHMO]) .*?\s(\d\.\d{4})\s+\d\.\d\d", re.M)  # a label's line of predict
MAX_UPLOAD_MB = 0.5  # the server of these tests: the sample photographs are under 0.1 MB


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(keras run's best.keras, torch run's best.pth) with the same random weights."""
    data, keras_model, torch_model = shared_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve_runs")
    config = run_config(data)
    return new_run(root / "keras", keras_model, config), new_run(root / "torch", torch_model, config)


@pytest.fixture(scope="module")
def server(models):
    """Base URL of a keras_odir server of the tiny .keras model: one worker, two requests may wait."""
    with running_server(KERAS, ["--model", str(models[0]), "--workers", "1", "--queue", "2",
                                "--max-upload-mb", str(MAX_UPLOAD_MB)]) as url:
        yield url


def _expected(backend, model_path, left, right) -> np.ndarray:
    """predict's probabilities for two photographs, from a model loaded here (no TTA)."""
    model = load_model(backend, model_path)
    inputs = [model_input(prepare_photo(p, model.config), model.config)[None] for p in (left, right)]
    return predict_batch(model.predictor, *inputs)[0]


def _probs(answer: dict) -> np.ndarray:
    assert list(answer["probabilities"]) == list(LABELS)
    return np.array([answer["probabilities"][label] for label in LABELS])


def test_predict_answers_predicts_probabilities_thresholds_and_decisions(server, models, capsys):
    status, _, answer = post_photos(server, *PAIR)
    assert status == 200, answer
    probs = _probs(answer)
    np.testing.assert_allclose(probs, _expected(KERAS, models[0], *PAIR), rtol=0, atol=1e-6)
    assert keras_predict(["--model", str(models[0]), *map(str, PAIR)]) == 0  # the command prints 4 decimals
    printed = {label: float(p) for label, p in PROB_LINE.findall(capsys.readouterr().out)}
    np.testing.assert_allclose(probs, [printed[label] for label in LABELS], atol=5e-5)
    assert answer["thresholds"] == dict.fromkeys(LABELS, 0.5)
    assert answer["decisions"] == {label: bool(p >= 0.5) for label, p in zip(LABELS, probs)}
    assert answer["predicted"] == [label for label in LABELS if answer["decisions"][label]]
    assert answer["fundus_check"]["left"] == {"file": "raw_0.png", "verdict": "passed: looks like a colour fundus "
                                              "photograph", "notes": []}
    assert answer["gradcam"] is None and "research use only" in answer["notice"]
    assert answer["warnings"] == ["model training data unknown: the model file does not record it"]


def test_torch_odir_serves_the_pth_model_alike_on_three_workers_with_gradcam(models):
    """Three workers, four clients, every third request with Grad-CAM (which hooks the shared model's layers):
    every answer is predict's."""
    pairs = [PAIR, PAIR[::-1]]
    expected = [_expected(TORCH, models[1], *pair) for pair in pairs]
    answers, lock = [], threading.Lock()

    def client(t: int) -> None:
        for k in range(3):
            kind = (t + k) % 2
            status, _, answer = post_photos(url, *pairs[kind], **({"gradcam": "true"} if (t + k) % 3 == 0 else {}))
            with lock:
                answers.append((kind, status, answer))

    with running_server(TORCH, ["--model", str(models[1]), "--workers", "3", "--queue", "8"]) as url:
        threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(answers) == 12 and all(status == 200 for _, status, _ in answers), answers
    assert sum(answer["gradcam"] is not None for _, _, answer in answers) == 4
    for kind, _, answer in answers:
        np.testing.assert_allclose(_probs(answer), expected[kind], rtol=0, atol=1e-6)


def test_model_description_health_and_openapi_offline(server, models):
    status, _, info = request(server + "v1/model")
    assert status == 200
    assert info["file"] == str(models[0]) and info["loaded_by"] == "keras_odir"
    assert info["architecture"] == {"backbone": "resnet18", "head": "v2"}
    assert [row["label"] for row in info["labels"]] == list(LABELS)
    assert info["preprocessing"]["image_size"] == 64 and info["preprocessing"]["crop_size"] == 56
    assert info["thresholds_source"].startswith("thresholds: 0.5 for every label")
    assert info["training_data"] == {"note": "training data unknown: the model file does not record it",
                                     "record": None, "synthetic": False}
    assert request(server + "healthz")[:1] == (200,)
    status, _, schema = request(server + "openapi.json")
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert status == 200 and body["required"] == ["left", "right"]
    assert request(server + "docs")[0] == 404  # Swagger UI would load from a CDN
    with urllib.request.urlopen(server, timeout=30) as response:
        page = response.read().decode()
    assert "For research use only, not a medical device." in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//|@import|url\(", page)  # nothing from elsewhere: works offline


def _cli_error(model: Path, bad: Path, capsys) -> str:
    """What predict prints about ``bad`` after its path (the message the API must give too)."""
    assert keras_predict(["--model", str(model), str(bad), str(PAIR[1])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip().split(f"{bad}: ", 1)[1]


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side black pixels, a few hundred KB compressed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = bytes(side + 1)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_bad_input_is_a_4xx_with_predicts_line_and_the_server_lives_on(server, models, tmp_path, capsys):
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), noise_image(240, 320))
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not a photograph\n")
    damaged = tmp_path / "damaged.jpg"
    photo = cv2.resize(cv2.imread(str(RAW / "raw_2.png")), (900, 888), interpolation=cv2.INTER_CUBIC)
    damaged.write_bytes(zero_middle_of_scan(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()))
    for bad, expect in ((noise, "not a fundus photograph"), (text, "not a decodable image"), (damaged, "corrupt JPEG")):
        status, _, answer = post_photos(server, bad, PAIR[1])
        assert status == 422, answer
        assert answer["detail"] == f"left photograph {bad.name!r}: {_cli_error(models[0], bad, capsys)}"
        assert expect in answer["detail"]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(12_000))  # 144 megapixels in 0.2 MB
    status, _, answer = post_photos(server, bomb, PAIR[1])
    assert status == 422 and answer["detail"] == f"left photograph 'bomb.png': {_cli_error(models[0], bomb, capsys)}"
    assert "image too large to decode (12000x12000 px, 144,000,000 pixels)" in answer["detail"]
    status, _, answer = post_photos(server, PAIR[0], None)
    assert status == 400 and answer["detail"].startswith("one eye missing: no right photograph")
    big = ("big.png", os.urandom(int(MAX_UPLOAD_MB * 2**20) + 1))
    status, _, answer = post_photos(server, big, PAIR[1])
    assert status == 413 and "'big.png' (field left) is over the upload limit of 0.5 MB" in answer["detail"]
    status, _, answer = request(server + "v1/predict", b"left=1", "application/x-www-form-urlencoded")
    assert status == 415
    assert post_photos(server, *PAIR)[0] == 200


def test_body_over_the_limit_is_refused_before_it_is_read(server):
    body, content_type = multipart({"left": ("a.png", bytes(10)), "right": ("b.png", bytes(10))})
    import http.client

    host, port = server.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/predict")
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(2**40))  # a terabyte announced, a few bytes sent
    connection.endheaders()
    connection.send(body)
    response = connection.getresponse()
    assert response.status == 413 and b"over the limit" in response.read()
    connection.close()


def test_gradcam_overlays_are_png_data_urls_of_the_top_label(server):
    status, _, answer = post_photos(server, *PAIR, gradcam="true")
    assert status == 200, answer
    cam = answer["gradcam"]
    assert cam["label"] == LABELS[int(np.argmax(_probs(answer)))] and cam["stage"] == "layer2" and cam["map_size"] == [7, 7]
    for side in ("left", "right"):
        prefix, data = cam[side].split(",", 1)
        assert prefix == "data:image/png;base64"
        img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (224, 224, 3) and img.std() > 10  # 256 px display image, centre-cropped 56/64


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the process's memory from /proc (Linux)")
def test_load_200_requests_from_8_threads_bounded(server, models):
    """8 client threads send 200 requests to one worker with a queue of 2: the requests beyond it are 503 with
    Retry-After, every other answer is predict's; memory is steady from the first hundred to the second.
    About 10-15 s on 2 cores: some 80 of the requests run the model, the rest are refused."""
    photos = [(RAW / f"raw_{i}.png") for i in range(3)]
    pairs = [(photos[i % 3], photos[(i + 1) % 3]) for i in range(3)]
    expected = [_expected(KERAS, models[0], *pair) for pair in pairs]
    results, lock = [], threading.Lock()

    def client(start: int, count: int) -> None:
        for k in range(start, start + count):
            status, headers, answer = post_photos(server, *pairs[k % 3])
            with lock:
                results.append((k % 3, status, headers, answer))

    rss = []
    for half in range(2):
        threads = [threading.Thread(target=client, args=(half * 100 + t * 13, 13 if t < 7 else 9)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        rss.append(_rss_mb())
    assert len(results) == 200
    statuses = [status for _, status, _, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 20, statuses
    for pair, status, headers, answer in results:
        if status == 200:
            np.testing.assert_allclose(_probs(answer), expected[pair], rtol=0, atol=1e-6)
        else:
            assert headers["retry-after"] == "1" and answer["detail"].startswith("busy: 1 worker(s) busy")
    assert rss[1] - rss[0] < 50, f"RSS grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB over the second hundred requests"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """(best.keras of a tiny run with thresholds.json and a training record, the .onnx exported from it alone in
    another folder): the .onnx carries the config, thresholds and record as metadata."""
    from export_runs import shared_onnx_export

    return shared_onnx_export(tmp_path_factory)[:2]


# keras_odir.serve of an .onnx with every deep-learning framework unimportable
NO_FRAMEWORK = """
import sys


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "keras", "jax", "tensorflow", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Blocker())
from keras_odir.serve import main
sys.exit(main(sys.argv[1:]))
"""


def test_onnx_model_served_without_a_framework_as_predict_gives_it(onnx_model):
    """The command on an exported .onnx with torch, keras, jax and tensorflow unimportable: it prints its URL
    and bind note, answers with predict's probabilities (onnxruntime's, and the .keras model's to 1e-5), the
    thresholds and training record the file carries, Grad-CAM as a warning, and stops on Ctrl-C."""
    import signal
    import subprocess
    import sys

    from export_runs import THRESHOLDS

    keras_model, exported = onnx_model
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-c", NO_FRAMEWORK, "--model", str(exported), "--port", "0"],
                              cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first, second = server.stdout.readline(), server.stdout.readline()
        assert first.startswith(f"keras_odir.serve: {exported} on http://127.0.0.1:"), first + server.stderr.read()
        assert second.startswith("listening on 127.0.0.1: only this machine can connect"), second
        url = first.split(" on ", 1)[1].split(" ", 1)[0]
        status, _, answer = post_photos(url, *PAIR, gradcam="true")
        info = request(url + "v1/model")[2]
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 130 and err.strip() == "interrupted", err  # as every command on Ctrl-C
    assert status == 200, answer
    np.testing.assert_allclose(_probs(answer), _expected(KERAS, exported, *PAIR), rtol=0, atol=1e-6)
    np.testing.assert_allclose(_probs(answer), _expected(KERAS, keras_model, *PAIR), rtol=0, atol=1e-5)
    np.testing.assert_allclose([answer["thresholds"][label] for label in LABELS], THRESHOLDS)
    assert answer["decisions"] == {label: bool(answer["probabilities"][label] >= t) for label, t in zip(LABELS, THRESHOLDS)}
    assert answer["gradcam"] is None
    assert any(w.startswith("no Grad-CAM:") and "Grad-CAM needs the model's weights" in w for w in answer["warnings"])
    assert info["thresholds_source"].startswith(f"thresholds: recorded in {exported}")
    assert info["training_data"]["synthetic"] and info["training_data"]["record"]["experiment"] == "export-test"
    assert info["architecture"] == {"backbone": "resnet18", "head": "v2"}


def test_command_refuses_bad_flags_and_a_taken_port_in_one_line(models, capsys):
    from keras_odir.serve import main as keras_serve

    assert keras_serve(["--model", str(models[0]), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "keras_odir.serve: error: --workers 0: must be at least 1"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert keras_serve(["--model", str(models[0]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"keras_odir.serve: error: cannot listen on 127.0.0.1:{port}"), err
