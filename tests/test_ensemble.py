"""Ensembles: the combination rules against a hand computation, and evaluate with several --model of different
frameworks' files and input sizes, reporting each member and the ensemble."""

import json

import numpy as np
import pandas as pd
import pytest
from export_runs import shared_onnx_export
from scipy.special import expit, logit

from keras_odir.cli_backend import BACKEND
from odir_core.cli_config import parse_with_config
from odir_core.errors import InputError
from odir_core.evaluation import evaluate, predict
from odir_core.evaluation.ensemble import combine
from odir_core.labels import LABELS
from reference_data import REAL_SAMPLES, needs
from tiny_runs import _build_models, new_run, run_config, shared_models

pytestmark = needs(REAL_SAMPLES)


def test_mean_and_geometric_rules():
    a = np.array([[0.2, 0.9], [0.5, 0.01]])
    b = np.array([[0.6, 0.5], [0.5, 0.99]])
    np.testing.assert_allclose(combine([a, b], "mean"), [[0.4, 0.7], [0.5, 0.5]])
    # normalised geometric mean: G(p) / (G(p) + G(1 - p)), i.e. the sigmoid of the mean logit
    g = np.sqrt(a * b) / (np.sqrt(a * b) + np.sqrt((1 - a) * (1 - b)))
    np.testing.assert_allclose(combine([a, b], "geometric"), g, rtol=1e-12)
    np.testing.assert_allclose(combine([a, b], "geometric"), expit((logit(a) + logit(b)) / 2), rtol=1e-12)
    np.testing.assert_allclose(combine([np.array([[0.0, 1.0]])] * 2, "geometric"), [[1e-7, 1 - 1e-7]], rtol=1e-6)
    with pytest.raises(InputError, match="use one of mean, geometric"):
        combine([a], "median")


@pytest.fixture
def members(tmp_path_factory, tmp_path):
    """(prepared folder, a keras run's best.keras, a torch run's best.pth with other weights and input size)."""
    data, keras_model, _ = shared_models(tmp_path_factory)
    config = run_config(data)
    first = new_run(tmp_path / "krun", keras_model, config)
    _, other_pth = _build_models(tmp_path / "other", seed=1)
    second = new_run(tmp_path / "trun", other_pth, config.replace(image_size=48, crop_size=40))
    return data, first, second


def _probs(folder):
    return pd.read_excel(folder / "probs.xlsx")[list(LABELS)].to_numpy()


def test_evaluate_an_ensemble_of_two_models(members, tmp_path, capsys):
    data, first, second = members
    for name, model in (("a", first), ("b", second)):
        assert evaluate.main(BACKEND, ["--model", str(model), "--split", "all", "--out", str(tmp_path / name)]) == 0
    a, b = _probs(tmp_path / "a"), _probs(tmp_path / "b")
    assert np.abs(a - b).max() > 1e-3  # two different members
    for rule, expected in (("mean", (a + b) / 2), ("geometric", expit((logit(a) + logit(b)) / 2))):
        out = tmp_path / rule
        tune = ["--tune-thresholds"] if rule == "mean" else []
        assert evaluate.main(BACKEND, ["--model", str(first), "--model", str(second), "--split", "all",
                                       "--ensemble", rule, "--out", str(out), *tune]) == 0
        np.testing.assert_allclose(_probs(out), expected, rtol=0, atol=1e-6)
        summary = json.loads((out / "metrics.json").read_text())
        for member, name in zip(summary["members"], ("a", "b")):
            alone = json.loads((tmp_path / name / "metrics.json").read_text())
            assert member["study"] == pytest.approx(alone["study"]["at_0.5"], abs=1e-9)
        assert summary["info"]["ensemble"] == f"{rule} of the members' probabilities"
        report = (out / "report.html").read_text()
        assert "Ensemble members" in report and str(second) in report
        printed = capsys.readouterr().out
        assert "member 1 study at_0.5" in printed and "member 2 study at_0.5" in printed
    # thresholds tuned on the ensemble's validation probabilities go into its folder, not beside a member
    assert (tmp_path / "mean" / "thresholds.json").is_file()
    assert not (first.parent / "thresholds.json").exists() and not (second.parent / "thresholds.json").exists()


@pytest.mark.parametrize("in_file, flags, expected", [
    ('model = "a.keras"', [], ["a.keras"]),
    ('model = ["a.keras", "b.pth"]', [], ["a.keras", "b.pth"]),
    ('model = ["a.keras", "b.pth"]', ["--model", "c.keras"], ["c.keras"]),  # the command line replaces the file's
    ('model = ["a.keras", "b.pth"]', ["--model=c.keras", "--model", "d.pth"], ["c.keras", "d.pth"]),
])
def test_models_from_a_config_file(tmp_path, in_file, flags, expected):
    (tmp_path / "e.toml").write_text(in_file + "\n")
    args = parse_with_config(evaluate.build_parser(BACKEND), ["--config", str(tmp_path / "e.toml"), *flags])
    assert args.model == expected


def test_a_model_list_of_other_values_in_a_config_file_is_refused(tmp_path, capsys):
    (tmp_path / "e.toml").write_text("model = [1, 2]\n")
    with pytest.raises(SystemExit):
        parse_with_config(evaluate.build_parser(BACKEND), ["--config", str(tmp_path / "e.toml")])
    assert "model = [1, 2] must be a string or a list of strings" in capsys.readouterr().err


def test_predict_with_an_ensemble(members, tmp_path, capsys):
    _, first, second = members
    rows = pd.DataFrame({"id": ["a", "b"], "left": [str(REAL_SAMPLES / f"{p}_left.png") for p in (1539, 32)],
                         "right": [str(REAL_SAMPLES / f"{p}_right.png") for p in (1539, 32)]})
    rows.to_csv(tmp_path / "patients.csv", index=False)
    outputs = {}
    for name, models in (("a", [first]), ("b", [second]), ("ab", [first, second])):
        flags = [arg for model in models for arg in ("--model", str(model))]
        out = tmp_path / f"{name}.csv"
        assert predict.main(BACKEND, [*flags, "--batch", str(tmp_path / "patients.csv"), "--out", str(out)]) == 0
        outputs[name] = pd.read_csv(out)[list(LABELS)].to_numpy()
    assert np.abs(outputs["a"] - outputs["b"]).max() > 1e-3
    np.testing.assert_allclose(outputs["ab"], (outputs["a"] + outputs["b"]) / 2, rtol=0, atol=2e-6)
    capsys.readouterr()
    left, right = rows.loc[0, "left"], rows.loc[0, "right"]
    assert predict.main(BACKEND, ["--model", str(first), "--model", str(second), "--ensemble", "geometric",
                                  left, right]) == 0
    printed = capsys.readouterr().out
    assert "ensemble (geometric) of 2 models:" in printed and "member 2:" in printed
    assert "0.5 for every label (default for an ensemble" in printed
    header = printed.splitlines().index(next(line for line in printed.splitlines() if line.startswith("label ")))
    table = {line.split()[0]: [float(v) for v in line.split()[1:]]
             for line in printed.splitlines()[header + 1: header + 1 + len(LABELS)]}
    for j, label in enumerate(LABELS):
        a, b, both = table[label]
        assert both == pytest.approx(expit((logit(a) + logit(b)) / 2), abs=2e-4)  # printed to 4 decimals
        assert a == pytest.approx(outputs["a"][0, j], abs=1e-4) and b == pytest.approx(outputs["b"][0, j], abs=1e-4)
    assert predict.main(BACKEND, ["--model", str(first), "--model", str(second), "--gradcam", "--out",
                                  str(tmp_path / "f.png"), left, right]) == 2
    assert "--gradcam explains one model" in capsys.readouterr().err


def test_an_exported_onnx_model_is_a_member_like_its_source(members, tmp_path, tmp_path_factory):
    """An .onnx alone in its folder (its metadata says what a config.toml would) beside a .pth of other input size."""
    _, _, second = members
    source, exported, _ = shared_onnx_export(tmp_path_factory)
    rows = pd.DataFrame({"left": [str(REAL_SAMPLES / f"{p}_left.png") for p in (1539, 32)],
                         "right": [str(REAL_SAMPLES / f"{p}_right.png") for p in (1539, 32)]})
    rows.to_csv(tmp_path / "patients.csv", index=False)
    outputs = []
    for name, member in (("source", source), ("exported", exported)):
        out = tmp_path / f"{name}.csv"
        assert predict.main(BACKEND, ["--model", str(member), "--model", str(second), "--batch",
                                      str(tmp_path / "patients.csv"), "--out", str(out)]) == 0
        outputs.append(pd.read_csv(out)[list(LABELS)].to_numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-5)
