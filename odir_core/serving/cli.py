"""The serve command shared by keras_odir.serve and torch_odir.serve: load a model once, then answer the web
page and the JSON API on a local port (uvicorn), inference on a bounded pool of threads."""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from odir_core.cli_config import add_config_option, parse_with_config
from odir_core.errors import Terminated, run_cli
from odir_core.evaluation.inference import DEVICE_HELP, TRAIN_CONFIG_HELP, Backend, InferenceError, load_model
from odir_core.evaluation.predict import choose_thresholds
from odir_core.evaluation.thresholds import THRESHOLDS_FILE

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser(backend: Backend) -> argparse.ArgumentParser:
    """The serve CLI's parser; --help explains every flag."""
    p = argparse.ArgumentParser(
        prog=f"python -m {backend.name}.serve",
        description="Serve a trained model as a local web page (upload a patient's left and right fundus photographs) "
        "and a JSON API (POST /v1/predict, GET /v1/model, GET /healthz, /openapi.json), with the preprocessing and "
        "thresholds of predict. For research use only, not a medical device. Runs until stopped: exit codes 130 "
        "Ctrl-C, 143 SIGTERM (after the requests in progress are answered); 2 bad model, thresholds or flags, "
        "or a port that cannot be opened (one error line).",
    )
    add_config_option(p)
    p.add_argument("--model", metavar=f"RUN_DIR/best{backend.model_suffix}",
                   help=f"trained model (required): {'/'.join(backend.model_suffixes)}; config.toml beside it gives "
                   "image size, crop and normalisation")
    p.add_argument("--train-config", metavar="FILE.toml", help=TRAIN_CONFIG_HELP)
    p.add_argument("--thresholds", metavar="FILE",
                   help=f"per-label thresholds JSON; default {THRESHOLDS_FILE} beside the model when present, else 0.5")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every network "
                   "interface, with no authentication and no encryption)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed at start)")
    p.add_argument("--max-upload-mb", type=float, default=25.0,
                   help="largest photograph accepted, in MB; a larger upload is refused (413) while it is read")
    p.add_argument("--workers", "--concurrency", dest="workers", type=int, default=1,
                   help="requests handled at once, on threads: their photographs are decoded and prepared in "
                   "parallel, the one loaded model runs one request at a time")
    p.add_argument("--queue", type=int, default=8,
                   help="requests that may wait for a worker; beyond them the server answers 503 with Retry-After")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def _check_flags(args) -> None:
    if args.workers < 1:
        raise InferenceError(f"--workers {args.workers}: must be at least 1")
    if args.queue < 0:
        raise InferenceError(f"--queue {args.queue}: must be at least 0")
    if not args.max_upload_mb > 0:
        raise InferenceError(f"--max-upload-mb {args.max_upload_mb}: must be more than 0")
    if not 0 <= args.port <= 65535:
        raise InferenceError(f"--port {args.port}: must be 0-65535")


def build_app(backend: Backend, args):
    """(FastAPI app, its InferencePool) for parsed serve flags: the model loaded, the thresholds chosen."""
    try:
        from odir_core.serving.app import create_app
    except ImportError as exc:
        raise InferenceError(f"serving needs FastAPI, uvicorn and python-multipart ({exc}); install them with "
                             "pip install \".[serve]\"") from None
    from odir_core.serving.pool import InferencePool
    from odir_core.serving.service import PredictionService

    _check_flags(args)
    model = load_model(backend, args.model, train_config=args.train_config, device=args.device)
    thresholds, threshold_text, warning = choose_thresholds(args, [model])
    service = PredictionService(model, backend.name, thresholds, threshold_text, warning)
    pool = InferencePool(args.workers, args.queue)
    return create_app(service, pool, int(args.max_upload_mb * 2**20)), pool


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (IPv4 or IPv6 by the address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InferenceError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                             "(0: any free one) or --host") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind_note(host: str) -> str:
    """One line saying who can reach the server."""
    if host in LOOPBACK:
        return f"listening on {host}: only this machine can connect (--host 0.0.0.0 to serve the network)"
    return (f"listening on {host}: other machines can connect; there is no authentication and no encryption, "
            "so serve only networks you trust")


def _serve(backend: Backend, args) -> int:
    import uvicorn

    app, pool = build_app(backend, args)
    sock = bind(args.host, args.port)
    print(f"{backend.name}.serve: {args.model} on {url_of(sock)} (API: {url_of(sock)}v1/predict, "
          f"{url_of(sock)}openapi.json)")
    print(bind_note(args.host))
    print("For research use only, not a medical device. Ctrl-C stops the server.")
    sys.stdout.flush()
    class Server(uvicorn.Server):
        # uvicorn takes Ctrl-C and SIGTERM to shut down, then raises the signal again; asyncio's own Ctrl-C
        # handling loses that second signal when the serving task has just finished, so remember the first
        stopped_by: int | None = None

        def handle_exit(self, sig, frame):
            self.stopped_by = self.stopped_by or sig
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        pool.close()
        sock.close()
    if server.stopped_by is not None:  # the exit code of the signal, as every command gives it
        raise Terminated() if server.stopped_by == signal.SIGTERM else KeyboardInterrupt()
    return 0


def main(backend: Backend, argv=None) -> int:
    """Run the serve CLI; returns the exit code (see build_parser's description and odir_core.errors)."""
    parser = build_parser(backend)
    args = parse_with_config(parser, argv)
    if not args.model:
        parser.error("--model is required")
    return run_cli(_serve, backend, args, prefix=f"{backend.name}.serve: error")
