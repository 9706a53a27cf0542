"""Audit an annotations file: label counts, co-occurrence, special and ignored
images, non-decisive eyes, unknown keywords, and patients whose labels
disagree with the dataset's keyword rules.

    python -m odir_core.audit ANNOTATIONS [--exclude-special]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.data.annotations import label_matrix, read_annotations
from odir_core.data.keywords import (
    IGNORED_KEYWORDS,
    KEYWORD_LABELS,
    NON_DECISIVE_KEYWORDS,
    is_ignored_eye,
    is_non_decisive_eye,
    patient_labels,
    split_keywords,
)
from odir_core.errors import run_cli
from odir_core.labels import LABEL_NAMES, LABELS, SPECIAL_IMAGES

EYES = (("left", "Left-Fundus", "Left-Diagnostic Keywords"), ("right", "Right-Fundus", "Right-Diagnostic Keywords"))


@dataclass
class Audit:
    """What audit() finds in one annotations table."""

    patients: int
    counts: pd.Series  # positives per label
    cooccurrence: pd.DataFrame  # 8x8, diagonal = counts
    special: list[str] = field(default_factory=list)  # special image file names present
    ignored_eyes: list[tuple] = field(default_factory=list)  # (ID, eye, keywords)
    non_decisive_eyes: list[tuple] = field(default_factory=list)  # (ID, eye, keywords)
    unknown_keywords: dict[str, int] = field(default_factory=dict)  # keyword -> eyes (counted as O)
    # N patients with an eye that has only non-decisive keywords (rule 2 read
    # literally would not make them N; the rules here and the file do).
    normal_not_both_normal: list[tuple] = field(default_factory=list)  # (ID, left, right keywords)
    disagreements: pd.DataFrame = None  # ID, file labels, rule labels, keywords


def _letters(row) -> str:
    return "".join(label for label, v in zip(LABELS, row) if v) or "-"


def rule_labels(df: pd.DataFrame) -> np.ndarray:
    """(n, 8) int labels derived from each patient's keywords by the dataset's rules."""
    if len(df) == 0:
        return np.zeros((0, len(LABELS)), dtype=int)
    return np.stack(
        [patient_labels(l, r) for l, r in zip(df["Left-Diagnostic Keywords"], df["Right-Diagnostic Keywords"])]
    )


def audit(df: pd.DataFrame) -> Audit:
    """Audit a table returned by read_annotations (preferably exclude_special=False)."""
    y = label_matrix(df).astype(int)
    co = pd.DataFrame(y.T @ y, index=list(LABELS), columns=list(LABELS))
    result = Audit(patients=len(df), counts=pd.Series(y.sum(axis=0), index=list(LABELS)), cooccurrence=co)
    special_stems = {Path(n).stem for n in SPECIAL_IMAGES}
    known = set(KEYWORD_LABELS) | NON_DECISIVE_KEYWORDS | IGNORED_KEYWORDS
    for row in df.itertuples(index=False):
        values = dict(zip(df.columns, row))
        for eye, fundus, kw_col in EYES:
            if Path(values[fundus]).stem in special_stems:
                result.special.append(values[fundus])
            keywords = values[kw_col]
            if is_ignored_eye(keywords):
                result.ignored_eyes.append((values["ID"], eye, keywords))
            elif is_non_decisive_eye(keywords):
                result.non_decisive_eyes.append((values["ID"], eye, keywords))
            for kw in split_keywords(keywords):
                if kw not in known:
                    result.unknown_keywords[kw] = result.unknown_keywords.get(kw, 0) + 1
        if values["N"] == 1 and any(is_non_decisive_eye(values[kw_col]) for _, _, kw_col in EYES):
            result.normal_not_both_normal.append(
                (values["ID"], values["Left-Diagnostic Keywords"], values["Right-Diagnostic Keywords"])
            )
    rules = rule_labels(df)
    has_keywords = (df["Left-Diagnostic Keywords"] != "") | (df["Right-Diagnostic Keywords"] != "")
    bad = np.flatnonzero(((rules != y).any(axis=1)) & has_keywords.to_numpy())
    result.disagreements = pd.DataFrame(
        {
            "ID": df["ID"].to_numpy()[bad],
            "file": [_letters(y[i]) for i in bad],
            "rules": [_letters(rules[i]) for i in bad],
            "left": df["Left-Diagnostic Keywords"].to_numpy()[bad],
            "right": df["Right-Diagnostic Keywords"].to_numpy()[bad],
        }
    )
    return result


def format_audit(result: Audit, source: str = "") -> str:
    """The audit as printable text."""
    n = max(result.patients, 1)
    lines = [f"annotations: {source}" if source else "annotations", f"patients: {result.patients}", ""]
    lines.append("positive patients per label:")
    for label in LABELS:
        count = int(result.counts[label])
        lines.append(f"  {label} {LABEL_NAMES[label]:<34s} {count:5d}  {100 * count / n:5.1f}%")
    lines += ["", "label co-occurrence (patients with both; diagonal = label count):"]
    lines += ["  " + line for line in result.cooccurrence.to_string().splitlines()]

    def section(title, items):
        lines.extend(["", f"{title}: {len(items)}"])
        lines.extend(f"  {item}" for item in items)

    section("special images present (hospital-preprocessed)", sorted(result.special))
    section(
        "ignored eyes (not a fundus image of that eye)",
        [f"ID {pid} {eye}: {kw}" for pid, eye, kw in result.ignored_eyes],
    )
    section(
        "eyes with only non-decisive keywords",
        [f"ID {pid} {eye}: {kw}" for pid, eye, kw in result.non_decisive_eyes],
    )
    section(
        "keywords not in the keyword table (counted as O)",
        [f"{kw!r} ({count} eyes)" for kw, count in sorted(result.unknown_keywords.items())],
    )
    section(
        "patients labelled N without two 'normal fundus' eyes (rule 2 read literally would not say N)",
        [f"ID {pid} | left: {left} | right: {right}" for pid, left, right in result.normal_not_both_normal],
    )
    d = result.disagreements
    section(
        "patients whose labels disagree with the keyword rules",
        [
            f"ID {r.ID}: file {r.file}, rules {r.rules} | left: {r.left} | right: {r.right}"
            for r in d.itertuples(index=False)
        ],
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m odir_core.audit",
        description="Check an ODIR-5K annotations file against the dataset's labelling rules and summarise it.",
    )
    parser.add_argument(
        "annotations",
        metavar="ANNOTATIONS",
        help="annotations file: grand-challenge or OIA-ODIR xlsx, Kaggle data.xlsx or full_df.csv, "
        "or a normalised xlsx/csv with the columns ID ... N D G C A H M O",
    )
    parser.add_argument(
        "--exclude-special",
        action="store_true",
        help="drop the patients with one of the 16 hospital-preprocessed images before auditing "
        "(default: keep them, and list those images)",
    )
    args = parser.parse_args(argv)
    return run_cli(_audit_cli, args)


def _audit_cli(args) -> int:
    df = read_annotations(args.annotations, exclude_special=args.exclude_special)
    print(format_audit(audit(df), args.annotations))
    return 0
