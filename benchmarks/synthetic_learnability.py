"""Is the synthetic set learnable, and not trivially? Logistic regression on simple image features vs a label prior.

    .venv/bin/python benchmarks/synthetic_learnability.py [--patients 1000] [--size 64] [--seed 0]

Generates a prepared synthetic set, extracts per eye colour and texture features
(channel means/stds, colour histograms, gradient energy, bright-yellow/dark-red/white
pixel fractions, in the centre and the whole FOV), fits one logistic regression per label
(scikit-learn) on 70% of the patients and scores the other 30% with the ODIR-2019
challenge metrics (kappa, micro F1, AUC on the flattened label matrix). The baseline
predicts each label's training prevalence for everyone. Also prints the ROC AUC of
mean image brightness alone for cataract (C) vs normal (N) patients.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from odir_core.data import synthetic
from odir_core.data.annotations import label_matrix, read_annotations
from odir_core.labels import LABELS
from odir_core.scores import challenge_metrics


def eye_features(img: np.ndarray) -> np.ndarray:
    """Colour and texture statistics of one uint8 RGB eye image inside its FOV."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) / (w / 2)
    fov, centre = r < 0.95, r < 0.5
    f = img.astype(np.float32) / 255.0
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    grad = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    feats = []
    for region in (fov, centre):
        px = f[region]
        feats += [*px.mean(0), *px.std(0), grad[region].mean(), np.abs(lap[region]).mean()]
        for c in range(3):
            feats += list(np.histogram(px[:, c], bins=8, range=(0, 1))[0] / len(px))
        hp = hsv[region]
        yellow = (hp[:, 0] > 12) & (hp[:, 0] < 35) & (hp[:, 2] > 150) & (hp[:, 1] > 60)
        white = (hp[:, 1] < 90) & (hp[:, 2] > 170)
        dark_red = (px[:, 0] < 0.5 * px[:, 0].mean()) & (px[:, 1] < 0.5 * px[:, 1].mean() + 0.02)
        feats += [yellow.mean(), white.mean(), dark_red.mean()]
    return np.asarray(feats, np.float32)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=1000, help="synthetic patients")
    p.add_argument("--size", type=int, default=64, help="prepared image size in px")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--severity", type=float, default=1.0, help="generator sign severity")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate(Path(tmp) / "set", args.patients, args.size, seed=args.seed,
                                  severity=args.severity)
        df = read_annotations(root / "annotations.xlsx", exclude_special=False)
        imgs = {}
        for side in ("Left", "Right"):
            imgs[side] = [cv2.cvtColor(cv2.imread(str(root / "images" / n)), cv2.COLOR_BGR2RGB)
                          for n in df[f"{side}-Fundus"]]
    X = np.stack([np.concatenate([eye_features(l), eye_features(r)]) for l, r in zip(imgs["Left"], imgs["Right"])])
    y = label_matrix(df).astype(int)
    idx_tr, idx_te = train_test_split(np.arange(len(df)), test_size=0.3, random_state=0)
    prob = np.zeros((len(idx_te), len(LABELS)))
    for j in range(len(LABELS)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000, class_weight="balanced"))
        model.fit(X[idx_tr], y[idx_tr, j])
        prob[:, j] = model.predict_proba(X[idx_te])[:, 1]
    prior = np.tile(y[idx_tr].mean(0), (len(idx_te), 1))
    fmt = lambda m: "  ".join(f"{k} {v:.4f}" for k, v in m.items())  # noqa: E731
    feat = challenge_metrics(y[idx_te], prob)
    base = challenge_metrics(y[idx_te], prior)
    print(f"{args.patients} patients at {args.size}px, {X.shape[1]} features, test {len(idx_te)} patients")
    print(f"logistic regression on image features: {fmt(feat)}")
    print(f"label-prior baseline:                  {fmt(base)}")
    print(f"final score ratio features / prior: {feat['final'] / base['final']:.2f}")
    print("per-label AUC (features): " + "  ".join(
        f"{lab} {roc_auc_score(y[idx_te, j], prob[:, j]):.3f}" for j, lab in enumerate(LABELS)))
    brightness = np.array([(l.mean() + r.mean()) / 2 for l, r in zip(imgs["Left"], imgs["Right"])])
    cn = (y[:, LABELS.index("C")] == 1) | (y[:, LABELS.index("N")] == 1)
    auc = roc_auc_score(y[cn, LABELS.index("C")], brightness[cn])
    print(f"mean brightness alone, C vs N patients: ROC AUC {auc:.3f} "
          f"({int(y[cn, 3].sum())} C, {int((~y[cn, 3].astype(bool)).sum())} N)")


if __name__ == "__main__":
    main()
