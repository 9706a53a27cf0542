"""Diagnostic keywords -> labels, following the dataset's own labelling rules.

odir5k_special_explanation.txt: a patient's labels come from both eyes'
keywords; N only when no eye shows anything abnormal; suspected findings count
as diagnosed; four keywords decide nothing; "anterior segment image" and
"no fundus image" make the eye not count at all. Every other keyword that is
not one of the seven named diseases is "other" (O).
"""

from __future__ import annotations

import re

import numpy as np

from odir_core.labels import LABELS, NUM_LABELS

KEYWORD_SEPARATOR = "，"

# Keywords that decide nothing about the patient's labels.
NON_DECISIVE_KEYWORDS = frozenset(
    {"lens dust", "optic disk photographically invisible", "low image quality", "image offset"}
)
# Keywords that make the eye not count (it is not a fundus image of that eye).
IGNORED_KEYWORDS = frozenset({"anterior segment image", "no fundus image"})

NORMAL_KEYWORD = "normal fundus"

_NAMED = {
    "N": ("normal fundus",),
    "D": (
        "diabetic retinopathy",
        "mild nonproliferative retinopathy",
        "moderate non proliferative retinopathy",
        "severe nonproliferative retinopathy",
        "proliferative diabetic retinopathy",
        "severe proliferative diabetic retinopathy",
        "suspected diabetic retinopathy",
        "suspicious diabetic retinopathy",
        "suspected moderate non proliferative retinopathy",
    ),
    "G": ("glaucoma", "suspected glaucoma"),
    "C": ("cataract", "suspected cataract"),
    "A": (
        "age-related macular degeneration",
        "dry age-related macular degeneration",
        "wet age-related macular degeneration",
    ),
    "H": ("hypertensive retinopathy",),
    # Myopic retinopathy/maculopathy is the retinal damage of pathological myopia.
    "M": ("pathological myopia", "myopia retinopathy", "myopic retinopathy", "myopic maculopathy"),
}
# Every keyword of the ODIR-5K training annotations that is abnormal but none
# of the seven named diseases. Keywords not listed anywhere also count as O.
_OTHER = (
    "abnormal pigment",
    "arteriosclerosis",
    "asteroid hyalosis",
    "atrophic change",
    "atrophy",
    "branch retinal artery occlusion",
    "branch retinal vein occlusion",
    "central retinal artery occlusion",
    "central retinal vein occlusion",
    "central serous chorioretinopathy",
    "chorioretinal atrophy",
    "chorioretinal atrophy with pigmentation proliferation",
    "choroidal nevus",
    "congenital choroidal coloboma",
    "depigmentation of the retinal pigment epithelium",
    "diffuse chorioretinal atrophy",
    "diffuse retinal atrophy",
    "drusen",
    "epiretinal membrane",
    "epiretinal membrane over the macula",
    "fundus laser photocoagulation spots",
    "glial remnants anterior to the optic disc",
    "idiopathic choroidal neovascularization",
    "intraretinal hemorrhage",
    "intraretinal microvascular abnormality",
    "laser spot",
    "macular coloboma",
    "macular epiretinal membrane",
    "macular hole",
    "macular pigmentation disorder",
    "maculopathy",
    "morning glory syndrome",
    "myelinated nerve fibers",
    "old branch retinal vein occlusion",
    "old central retinal vein occlusion",
    "old chorioretinopathy",
    "old choroiditis",
    "optic disc edema",
    "optic discitis",
    "optic disk epiretinal membrane",
    "optic nerve atrophy",
    "oval yellow-white atrophy",
    "peripapillary atrophy",
    "pigment epithelium proliferation",
    "pigmentation disorder",
    "post laser photocoagulation",
    "post retinal laser surgery",
    "punctate inner choroidopathy",
    "refractive media opacity",
    "retina fold",
    "retinal artery macroaneurysm",
    "retinal detachment",
    "retinal pigment epithelial hypertrophy",
    "retinal pigment epithelium atrophy",
    "retinal pigmentation",
    "retinal vascular sheathing",
    "retinitis pigmentosa",
    "retinochoroidal coloboma",
    "rhegmatogenous retinal detachment",
    "silicone oil eye",
    "spotted membranous change",
    "suspected abnormal color of optic disc",
    "suspected macular epimacular membrane",
    "suspected microvascular anomalies",
    "suspected retinal vascular sheathing",
    "suspected retinitis pigmentosa",
    "tessellated fundus",
    "vascular loops",
    "vessel tortuosity",
    "vitreous degeneration",
    "vitreous opacity",
    "wedge white line change",
    "wedge-shaped change",
    "white vessel",
)

KEYWORD_LABELS: dict[str, str] = {kw: label for label, kws in _NAMED.items() for kw in kws}
KEYWORD_LABELS.update({kw: "O" for kw in _OTHER})

_SPLIT = re.compile(r"[，,]")
_SPACES = re.compile(r"\s+")


def split_keywords(cell) -> list[str]:
    """The keywords of one cell: split on full-width or ASCII commas, trimmed,
    inner whitespace collapsed, lower case; empty/NaN cells give []."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    parts = (_SPACES.sub(" ", part).strip().lower() for part in _SPLIT.split(str(cell)))
    return [part for part in parts if part]


def normalise_keywords(cell) -> str:
    """A keyword cell in canonical form: keywords joined by KEYWORD_SEPARATOR."""
    return KEYWORD_SEPARATOR.join(split_keywords(cell))


def keyword_label(keyword: str) -> str | None:
    """Label letter of one keyword; None for non-decisive and ignored keywords;
    "O" for abnormal keywords not in KEYWORD_LABELS."""
    keyword = _SPACES.sub(" ", keyword).strip().lower()
    if keyword in NON_DECISIVE_KEYWORDS or keyword in IGNORED_KEYWORDS:
        return None
    return KEYWORD_LABELS.get(keyword, "O")


def is_ignored_eye(keywords) -> bool:
    """True if the eye's keywords say it is not a fundus image of that eye."""
    return any(kw in IGNORED_KEYWORDS for kw in split_keywords(keywords))


def is_non_decisive_eye(keywords) -> bool:
    """True if the eye has keywords but every one of them decides nothing."""
    kws = split_keywords(keywords)
    return bool(kws) and all(kw in NON_DECISIVE_KEYWORDS for kw in kws)


def eye_labels(keywords) -> np.ndarray:
    """Per-eye labels (8,) int from one eye's keyword cell.

    All zero for an ignored eye or one with only non-decisive keywords; N only
    when every decisive keyword is "normal fundus"; each other keyword sets its
    label (unknown abnormal keywords set O).
    """
    out = np.zeros(NUM_LABELS, dtype=int)
    if is_ignored_eye(keywords):
        return out
    letters = {keyword_label(kw) for kw in split_keywords(keywords)} - {None}
    if letters == {"N"}:
        out[LABELS.index("N")] = 1
        return out
    for letter in letters - {"N"}:
        out[LABELS.index(letter)] = 1
    return out


def patient_labels(left_keywords, right_keywords) -> np.ndarray:
    """Patient labels (8,) int from both eyes' keywords (the dataset's rules).

    Diseases are the union over both eyes; the patient is N exactly when
    neither eye shows a disease (an eye with only non-decisive keywords, or an
    ignored eye, shows none; the file labels such patients N too).
    """
    out = eye_labels(left_keywords) | eye_labels(right_keywords)
    out[LABELS.index("N")] = int(not out[1:].any())
    return out
