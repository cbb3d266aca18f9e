"""Static files of a folder (the console's dashboard), served by the function itself: nothing
comes from a CDN, so the dashboard works on machines that are offline.

Only regular files inside the folder are served: a path with an empty, `.`, `..` or hidden
segment, a backslash or a NUL, or one that resolves outside the folder (a symbolic link) is a 404.
Every file carries a strict Content-Security-Policy (nothing but this origin: no inline script,
no framing) and `nosniff`, so a file is only ever what its Content-Type says.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from taskbus.errors import NotFound
from taskbus.http.core import Response

CSP = ("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release's files are seen at once
}
# Explicit types for what a dashboard holds: the platform's mime.types may lack some, or differ.
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/vnd.microsoft.icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
    "": "text/plain",  # LICENSE, README: a vendored library's licence is text
}


class StaticFiles:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def response(self, path: str) -> Response:
        """The file at `path` (relative to the folder), or NotFound."""
        file = self._file(path)
        media_type = TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        try:
            body = file.read_bytes()
        except OSError:
            raise _missing(path) from None
        return Response(200, body, dict(SECURITY_HEADERS), media_type)

    def _file(self, path: str) -> Path:
        parts = path.split("/")
        if any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            raise _missing(path)
        file = self.root.joinpath(*parts).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            raise _missing(path)
        return file


def _missing(path: str) -> NotFound:
    return NotFound(f"no file {path[:200]!r}")
