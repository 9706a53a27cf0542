"""Where annotations and images live in each ODIR-5K distribution users have.

Paths are relative to the distribution's root folder (or zip root). Folder
names are matched with spaces or underscores (some mirrors replace them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from odir_core.errors import InputError


@dataclass(frozen=True)
class Layout:
    """One distribution: its training annotations file and training image folder."""

    name: str
    annotations: str
    images: str
    description: str
    test_sets: tuple[tuple[str, str, str], ...] = ()  # (split name, annotations, images)


GRAND_CHALLENGE = Layout(
    name="grand-challenge",
    annotations="ODIR-5K_Training_Annotations(Updated)_V2.xlsx",
    images="ODIR-5K_Training_Dataset",
    description="ODIR-2019 grand-challenge release",
)
KAGGLE = Layout(
    name="kaggle",
    annotations="ODIR-5K/ODIR-5K/data.xlsx",
    images="ODIR-5K/ODIR-5K/Training Images",
    description="Kaggle 'ocular-disease-recognition-odir5k' (data.xlsx; full_df.csv beside it)",
)
OIA = Layout(
    name="oia",
    annotations="Training Set/Annotation/training annotation (English).xlsx",
    images="Training Set/Images",
    description="OIA-ODIR release (training, off-site and on-site test sets)",
    test_sets=(
        (
            "off_site_test",
            "Off-site Test Set/Annotation/off-site test annotation (English).xlsx",
            "Off-site Test Set/Images",
        ),
        (
            "on_site_test",
            "On-site Test Set/Annotation/on-site test annotation (English).xlsx",
            "On-site Test Set/Images",
        ),
    ),
)
PREPARED = Layout(
    name="prepared",
    annotations="annotations.xlsx",
    images="images",
    description="a folder written by `python -m odir_core.prepare` (or the synthetic generator)",
)

LAYOUTS = {layout.name: layout for layout in (GRAND_CHALLENGE, KAGGLE, OIA, PREPARED)}


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` is a prepared folder (its annotations file and image folder exist)."""
    path = Path(path)
    return (path / PREPARED.annotations).is_file() and (path / PREPARED.images).is_dir()


class LayoutError(InputError):
    """A folder or zip that holds none of the known ODIR-5K layouts."""


@dataclass(frozen=True)
class DetectedLayout:
    """A layout found in a listing: the actual names (as listed) of its annotation file and image folder."""

    layout: Layout
    root: str  # wrapping folder before the layout's own paths ("" at the top)
    annotations: str
    images: str


def _norm(path: str) -> str:
    """Compare paths case-insensitively, with '_' for ' ', '/' separators and no trailing slash."""
    return path.replace("\\", "/").strip("/").replace("_", " ").lower()


def detect_layout(names, layouts=None) -> DetectedLayout:
    """Find which layout a folder listing or zip namelist holds (relative paths, '/' or '\\').

    Tolerates a wrapping top folder (any depth), underscores for spaces and any
    letter case. Needs the annotation file and at least one file in the image
    folder. Raises LayoutError listing what each layout expects.
    """
    layouts = tuple(layouts or (OIA, KAGGLE, GRAND_CHALLENGE, PREPARED))
    files = {}
    for name in names:
        files.setdefault(_norm(name), name.replace("\\", "/").strip("/"))
    folders = {}  # normalised folder -> its actual spelling (taken from a file below it)
    for norm, actual in files.items():
        parts, actual_parts = norm.split("/")[:-1], actual.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folders.setdefault("/".join(parts[:depth]), "/".join(actual_parts[:depth]))
    for layout in layouts:
        ann, img = _norm(layout.annotations), _norm(layout.images)
        hits = sorted((n for n in files if n == ann or n.endswith("/" + ann)), key=lambda n: (n.count("/"), n))
        for hit in hits:
            root = hit[: len(hit) - len(ann)]
            if root + img in folders:
                actual_ann = files[hit]
                return DetectedLayout(
                    layout, actual_ann[: len(root)].rstrip("/"), actual_ann, folders[root + img]
                )
    top = sorted({files[n].split("/")[0] for n in files})[:10]
    expected = "\n".join(f"  {lay.name}: {lay.annotations} + {lay.images}/ ({lay.description})" for lay in layouts)
    raise LayoutError(
        "no known ODIR-5K layout found (paths may sit in one wrapping folder; '_' may replace spaces).\n"
        f"Expected one of:\n{expected}\nFound at the top: {', '.join(top) or 'nothing'}"
    )
