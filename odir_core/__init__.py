"""Framework-free core of keras-odir: data, preprocessing, augmentation, sampling, metrics.

Nothing in this package imports keras or torch.
"""

from odir_core.labels import LABEL_NAMES, LABELS, NUM_LABELS

__all__ = ["LABELS", "LABEL_NAMES", "NUM_LABELS", "demo_dataset"]


def __getattr__(name):
    # The demo generator pulls in OpenCV; import it only when asked for.
    if name == "demo_dataset":
        from odir_core.data.synthetic import demo_dataset

        return demo_dataset
    raise AttributeError(f"module 'odir_core' has no attribute {name!r}")
