"""Where annotations and images live in each ODIR-5K distribution users have.

Paths are relative to the distribution's root folder (or zip root). Folder
names are matched with spaces or underscores (some mirrors replace them).
"""

from __future__ import annotations

from dataclasses import dataclass


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
