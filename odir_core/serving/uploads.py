"""Read a multipart/form-data request body into memory with size limits, refusing as soon as one is passed.

Starlette's own form parser spools uploads over 1 MB to temporary files; photographs here stay in
memory (they are decoded from bytes) and a body is read only up to its limit: a client sending more
is answered 413 after at most ``limit`` bytes, whatever its Content-Length says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELDS = 8  # parts a request may hold (left, right, gradcam and a few a client adds)
TEXT_LIMIT = 1024  # bytes of a text field (gradcam=true)


class UploadError(Exception):
    """A request body that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Part:
    """One part of the form: its field name, the file name the client gave (None for a text field), its bytes."""

    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


def _megabytes(n: int) -> str:
    return f"{n / 2**20:g} MB"


class FormReader:
    """Collects the parts of one multipart body; each file part at most ``file_limit`` bytes."""

    def __init__(self, boundary: bytes, file_limit: int):
        self.file_limit = file_limit
        self.parts: list[Part] = []
        self._header_name = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
        })

    def _part_begin(self) -> None:
        self._headers = {}
        if len(self.parts) >= MAX_FIELDS:
            raise UploadError(f"too many form fields (over {MAX_FIELDS}); send left, right and optionally gradcam")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.parts.append(Part(name, None if filename is None else filename.decode("utf-8", "replace")))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.data += data[start:end]
        limit = self.file_limit if part.filename is not None else TEXT_LIMIT
        if len(part.data) > limit:
            what = f"photograph {part.filename!r} (field {part.name})" if part.filename is not None else f"field {part.name}"
            raise UploadError(f"{what} is over the upload limit of {_megabytes(limit)}; send the photograph as the "
                              "camera wrote it, or start the server with a larger --max-upload-mb", status=413)

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the body."""
        self._parser.write(chunk)

    def finish(self) -> list[Part]:
        """The parts, once the whole body has been fed."""
        self._parser.finalize()
        return self.parts


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header; UploadError (415) when it is not multipart/form-data."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("send the photographs as multipart/form-data with fields left and right "
                          f"(got Content-Type {content_type or 'none'!r})", status=415)
    return boundary


async def read_form(content_type: str, content_length: str | None, stream: AsyncIterator[bytes],
                    file_limit: int) -> dict[str, Part]:
    """The parts of a multipart body by field name, reading at most two files of ``file_limit`` bytes and their
    framing; UploadError (413) as soon as a file or the body passes its limit."""
    body_limit = 2 * file_limit + MAX_FIELDS * (TEXT_LIMIT + 1024)
    reader = FormReader(boundary_of(content_type), file_limit)
    if content_length and content_length.isdigit() and int(content_length) > body_limit:
        raise UploadError(f"request body of {_megabytes(int(content_length))} is over the limit of "
                          f"{_megabytes(body_limit)} (two photographs of at most {_megabytes(file_limit)}); "
                          "start the server with a larger --max-upload-mb for larger photographs", status=413)
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise UploadError(f"request body over the limit of {_megabytes(body_limit)} (two photographs of at "
                                  f"most {_megabytes(file_limit)})", status=413)
            reader.feed(chunk)
        parts = reader.finish()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise UploadError(f"malformed multipart body ({exc})") from None
    found: dict[str, Part] = {}
    for part in parts:
        if part.name in found:
            raise UploadError(f"field {part.name} given twice; send one left and one right photograph")
        found[part.name] = part
    return found
