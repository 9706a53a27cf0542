"""The eight ODIR-5K labels, in the order used everywhere (columns, logits, reports)."""

LABELS = ("N", "D", "G", "C", "A", "H", "M", "O")

LABEL_NAMES = {
    "N": "Normal",
    "D": "Diabetes",
    "G": "Glaucoma",
    "C": "Cataract",
    "A": "Age-related macular degeneration",
    "H": "Hypertension",
    "M": "Pathological myopia",
    "O": "Other diseases/abnormalities",
}

NUM_LABELS = len(LABELS)

# The 16 hospital-preprocessed images with a white, not black, surround
# (odir5k_special_explanation.txt, section 3).
SPECIAL_IMAGES = frozenset(
    {
        "2174_right.jpg",
        "2175_left.jpg",
        "2176_left.jpg",
        "2177_left.jpg",
        "2177_right.jpg",
        "2178_right.jpg",
        "2179_left.jpg",
        "2179_right.jpg",
        "2180_left.jpg",
        "2180_right.jpg",
        "2181_left.jpg",
        "2181_right.jpg",
        "2182_left.jpg",
        "2182_right.jpg",
        "2957_left.jpg",
        "2957_right.jpg",
    }
)
