"""The FastAPI application: the page at ``/``, ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz`` and
``/openapi.json``. FastAPI's ``/docs`` and ``/redoc`` load their scripts from a CDN, so they are off: the
server works offline, and ``/openapi.json`` describes the API for any OpenAPI viewer."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from odir_core.errors import InputError
from odir_core.serving.pool import InferencePool, PoolFull
from odir_core.serving.service import SIDES, Photo, PredictionService
from odir_core.serving.uploads import UploadError, read_form

RETRY_AFTER_S = 1  # what a 503 tells the client to wait before trying again
TRUE_WORDS = {"1", "true", "yes", "on"}

PREDICT_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": list(SIDES),
        "properties": {
            "left": {"type": "string", "format": "binary", "description": "the left eye's fundus photograph"},
            "right": {"type": "string", "format": "binary", "description": "the right eye's fundus photograph"},
            "gradcam": {"type": "boolean", "description": "also return Grad-CAM overlays (PNG data URLs)"},
        }}}}},
    "responses": {"400": {"description": "a photograph missing or a malformed form"},
                  "413": {"description": "a photograph over the upload limit"},
                  "415": {"description": "not multipart/form-data"},
                  "422": {"description": "not an image, a damaged image, a non-fundus photograph, too large to decode"},
                  "503": {"description": "the inference queue is full; retry after the Retry-After seconds"}},
}


def page_html() -> str:
    """The web page (HTML, CSS and JavaScript in one file, nothing loaded from elsewhere)."""
    return resources.files("odir_core.serving").joinpath("page.html").read_text(encoding="utf-8")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _photos(form: dict) -> list[Photo]:
    missing = [side for side in SIDES if side not in form or form[side].filename is None]
    if missing:
        raise UploadError(f"one eye missing: no {' or '.join(missing)} photograph; send both as multipart file "
                          "fields left and right")
    return [Photo(side, form[side].filename or side, bytes(form[side].data)) for side in SIDES]


def _wants_gradcam(request: Request, form: dict) -> bool:
    value = form["gradcam"].data.decode("utf-8", "replace") if "gradcam" in form else request.query_params.get("gradcam", "")
    return value.strip().lower() in TRUE_WORDS


def create_app(service: PredictionService, pool: InferencePool, max_upload_bytes: int) -> FastAPI:
    """The application around a loaded model; inference runs on ``pool``, uploads are limited per photograph."""
    app = FastAPI(title="keras-odir", version="1", docs_url=None, redoc_url=None,
                  description="ODIR-5K labels from a patient's left and right fundus photographs. " + service.description["notice"])
    page = page_html()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the model is loaded and the server answers."""
        return {"status": "ok", "model": service.description["file"], "workers": pool.workers, "queue": pool.queue}

    @app.get("/v1/model")
    def model() -> dict:
        """The model: architecture, labels, preprocessing, thresholds and their source, training-data record."""
        return service.description

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request):
        """Probabilities, thresholds, decisions and warnings for one patient's two photographs (multipart
        fields ``left``, ``right``; ``gradcam=true`` as a field or query parameter adds Grad-CAM overlays)."""
        try:
            form = await read_form(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                   request.stream(), max_upload_bytes)
            left, right = _photos(form)
            return await pool.run(service.predict, left, right, _wants_gradcam(request, form))
        except UploadError as exc:
            return _error(exc.status, str(exc))
        except InputError as exc:
            return _error(422, str(exc))
        except PoolFull as exc:
            return _error(503, f"busy: {exc}; retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})

    return app
