"""What the server does with a patient's two photographs, framework-free: the predict command's chain on
bytes in memory (decode, fundus check, preprocessing, model input, no TTA, the same thresholds), Grad-CAM
overlays as PNG data URLs, and the description of the model that ``GET /v1/model`` returns."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass

import numpy as np

from odir_core.data.imageio import encode_image
from odir_core.errors import InputError
from odir_core.evaluation.inference import Model, choose_gradcam_stage, model_input, predict_batch, prepare_photo
from odir_core.evaluation.plots import overlay_heatmap
from odir_core.evaluation.predict import display_image
from odir_core.labels import LABEL_NAMES, LABELS
from odir_core.scores import binarize

NOTICE = "For research use only, not a medical device."
SIDES = ("left", "right")
FUNDUS_CHECK = "passed: looks like a colour fundus photograph"


@dataclass(frozen=True)
class Photo:
    """An uploaded photograph: the form field it came in, the file name the client gave and its bytes."""

    side: str
    filename: str
    data: bytes

    @property
    def title(self) -> str:
        """How error lines and warnings name it, e.g. ``left photograph 'a.jpg'``."""
        return f"{self.side} photograph {self.filename!r}"


def _png_data_url(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_image(img, "png")).decode("ascii")


class PredictionService:
    """A loaded model with its thresholds, answering for one patient (called on pool threads).

    Photographs are decoded and prepared in parallel; the model runs one call at a time: Grad-CAM hooks the
    shared model's layers, and a call running beside it would feed the hooks (or see them)."""

    def __init__(self, model: Model, backend_name: str, thresholds: np.ndarray, threshold_text: str,
                 threshold_warning: str | None):
        self.model = model
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.threshold_text = threshold_text
        self.threshold_warning = threshold_warning
        self.description = self._describe(backend_name)
        self._model_lock = threading.Lock()

    def _describe(self, backend_name: str) -> dict:
        config, model = self.model.config, self.model
        return {
            "file": str(model.path),
            "loaded_by": backend_name,
            "architecture": {"backbone": config.backbone, "head": config.head},
            "labels": [{"label": label, "name": LABEL_NAMES[label]} for label in LABELS],
            "preprocessing": {"image_size": config.image_size, "crop_size": config.crop_size or config.image_size,
                              "normalize": "ImageNet mean/std" if config.normalize else "x/255",
                              "chain": "FOV crop, circle crop, FOV crop, resize, centre crop", "tta": "none"},
            "thresholds": dict(zip(LABELS, map(float, self.thresholds))),
            "thresholds_source": self.threshold_text,
            "thresholds_warning": self.threshold_warning,
            "training_data": {"note": model.training_note, "record": model.trained_on,
                              "synthetic": bool(model.trained_on and model.trained_on.get("synthetic"))},
            "notice": NOTICE,
        }

    def _inputs(self, photo: Photo) -> tuple[np.ndarray, list[str]]:
        """The model input of a photograph and the repairs the preprocessing made; PreprocessError (or its
        NotFundusError) naming the photograph when it cannot be used."""
        notes: list[str] = []
        try:
            img = prepare_photo(photo.data, self.model.config, notes=notes)
        except InputError as exc:  # one line, now naming the upload
            raise type(exc)(f"{photo.title}: {exc}") from None
        return model_input(img, self.model.config), notes

    def _gradcam(self, photos, left_x, right_x, probs) -> dict:
        target = int(np.argmax(probs))
        predictor = self.model.predictor
        with self._model_lock:
            stage, size = choose_gradcam_stage(predictor.gradcam_stages(left_x.shape[:2]))
            maps = predictor.gradcam(left_x[None], right_x[None], target, stage=stage)
        overlays = {photo.side: _png_data_url(overlay_heatmap(display_image(photo.data, self.model.config), heat))
                    for photo, heat in zip(photos, maps)}
        return {"label": LABELS[target], "stage": stage, "map_size": list(size), **overlays}

    def predict(self, left: Photo, right: Photo, gradcam: bool = False) -> dict:
        """The JSON answer for one patient (see README, "Serve"); input errors as odir_core's InputError."""
        (left_x, left_notes), (right_x, right_notes) = self._inputs(left), self._inputs(right)
        with self._model_lock:
            probs = predict_batch(self.model.predictor, left_x[None], right_x[None], "none")[0]
        flags = binarize(probs[None], self.thresholds)[0]
        warnings = [f"{photo.title}: {note}" for photo, notes in ((left, left_notes), (right, right_notes))
                    for note in notes]
        if self.threshold_warning:
            warnings.append(self.threshold_warning)
        if self.description["training_data"]["synthetic"] or not self.model.trained_on:
            warnings.append(f"model {self.model.training_note}")
        answer = {
            "probabilities": dict(zip(LABELS, map(float, probs))),
            "thresholds": self.description["thresholds"],
            "decisions": {label: bool(flag) for label, flag in zip(LABELS, flags)},
            "predicted": [label for label, flag in zip(LABELS, flags) if flag],
            "fundus_check": {photo.side: {"file": photo.filename, "verdict": FUNDUS_CHECK, "notes": notes}
                             for photo, notes in ((left, left_notes), (right, right_notes))},
            "warnings": warnings,
            "gradcam": None,
            "model": {"file": self.description["file"], "training_data": self.model.training_note,
                      "thresholds_source": self.threshold_text},
            "notice": NOTICE,
        }
        if gradcam:
            try:
                answer["gradcam"] = self._gradcam((left, right), left_x, right_x, probs)
            except InputError as exc:  # e.g. an exported model, which has no weights to take gradients of
                warnings.append(f"no Grad-CAM: {exc}")
        return answer
