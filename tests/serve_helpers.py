"""Test helpers for the serve command: a server on a free loopback port in a thread of the test process, and a
small standard-library HTTP client (multipart uploads included)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from odir_core.serving.cli import bind, build_app, build_parser, url_of


@contextlib.contextmanager
def running_server(backend, argv: list[str]):
    """A server for serve flags ``argv`` on 127.0.0.1 and a free port; yields its base URL (ending in /)."""
    import uvicorn

    args = build_parser(backend).parse_args(argv)
    app, pool = build_app(backend, args)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        pool.close()
        sock.close()


def multipart(fields: dict) -> tuple[bytes, str]:
    """(body, content type) of a form: a value that is a (filename, bytes) pair is a file, a str a text field."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data = value
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n")
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n', value.encode()
        chunks.append(f"--{boundary}\r\n{head}\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _lower(headers) -> dict:
    return {name.lower(): value for name, value in headers.items()}


def request(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict, dict]:
    """(status, headers by lower-case name, JSON answer) of a GET (no body) or POST."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, _lower(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers), json.loads(exc.read() or b"{}")


def post_photos(base: str, left: Path | tuple, right: Path | tuple | None, **fields) -> tuple[int, dict, dict]:
    """POST /v1/predict with two photographs (paths, or (filename, bytes) pairs; None leaves one out)."""
    form = {}
    for side, photo in (("left", left), ("right", right)):
        if photo is not None:
            form[side] = photo if isinstance(photo, tuple) else (Path(photo).name, Path(photo).read_bytes())
    body, content_type = multipart({**form, **fields})
    return request(base + "v1/predict", body, content_type)
