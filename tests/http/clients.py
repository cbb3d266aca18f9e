"""One test-client interface over both serving paths, so every HTTP test is written once.

The WSGI path is functions-framework's Flask app and Flask's test client, as it always was.
The ASGI path is functions-framework's Starlette app driven by `starlette.testclient.TestClient`
(httpx over the ASGI interface, one event loop for the client's life); `AsgiClient` takes Flask
test-client arguments (`json=`, `data=`, `headers=`, `query_string=`, `method=`, an
`EnvironBuilder`) and gives responses with Flask's `.json` property.
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx

with warnings.catch_warnings():  # starlette 1.10 prefers httpx2; httpx (what we pin) still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
from werkzeug.test import EnvironBuilder

PATHS = ("asgi", "wsgi")  # the serving paths; the default target names serve the first


def target_of(function: str, path: str) -> str:
    """The functions-framework target of `function` on serving path `path`."""
    return function if path == "asgi" else f"{function}_wsgi"


class AsgiResponse:
    """An httpx response as a Flask test response: `.json` is a property, `.data` the bytes."""

    def __init__(self, response: httpx.Response) -> None:
        self.raw = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.text = response.text
        self.data = response.content

    @property
    def json(self) -> Any:
        return self.raw.json()

    def get_json(self) -> Any:
        return self.raw.json()


class AsgiClient:
    """Flask's test-client calls on a Starlette TestClient (entered once: one event loop)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def application(self) -> AsgiClient:
        return self  # `client.application.test_client()`: the portal serves several threads at once

    def test_client(self) -> AsgiClient:
        return self

    def open(self, path: str | EnvironBuilder = "/", method: str = "GET", **kwargs: Any) -> AsgiResponse:
        if isinstance(path, EnvironBuilder):
            return self._open_builder(path)
        return self._request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self._request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self._request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self._request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self._request("DELETE", path, **kwargs)

    def _request(self, method: str, path: str, json: Any = None, data: bytes | str | None = None,
                 headers: dict[str, str] | None = None, query_string: dict[str, str] | None = None,
                 content_type: str | None = None) -> AsgiResponse:
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type
        if isinstance(data, str):
            data = data.encode()
        response = self.client.request(method, path, json=json, content=data, headers=_raw(headers),
                                       params=query_string)
        return AsgiResponse(response)

    def _open_builder(self, builder: EnvironBuilder) -> AsgiResponse:
        environ = builder.get_environ()
        body = environ["wsgi.input"].read()
        headers = {k: v for k, v in builder.headers.items() if k.lower() not in ("content-length", "content-type")}
        if "CONTENT_TYPE" in environ:
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        query = environ.get("QUERY_STRING", "")
        url = builder.path + (f"?{query}" if query else "")
        return AsgiResponse(self.client.request(builder.method, url, content=body, headers=_raw(headers)))


def _raw(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as the bytes a WSGI server would have read (latin-1, as in the environ)."""
    return {name: value.encode("latin-1", "replace") for name, value in headers.items()}
