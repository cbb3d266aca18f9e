"""A real OTLP/HTTP trace receiver on 127.0.0.1: what the exporter sends to `POST /v1/traces`,
decoded with opentelemetry-proto, kept in memory. Tests point OTEL_EXPORTER_OTLP_ENDPOINT at
`Collector.url`; a bench can count what arrives."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from testkit.procs import wait_until

KINDS = {ProtoSpan.SPAN_KIND_INTERNAL: "INTERNAL", ProtoSpan.SPAN_KIND_SERVER: "SERVER",
         ProtoSpan.SPAN_KIND_CLIENT: "CLIENT", ProtoSpan.SPAN_KIND_PRODUCER: "PRODUCER",
         ProtoSpan.SPAN_KIND_CONSUMER: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclasses.dataclass(frozen=True)
class Span:
    """One received span, ids as lower-case hex (as in a `traceparent`)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: str
    links: list[tuple[str, str]]  # (trace id, span id)
    events: list[tuple[str, dict[str, Any]]]  # (name, attributes)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(Span(
                    service, s.name, KINDS.get(s.kind, str(s.kind)), s.trace_id.hex(), s.span_id.hex(),
                    s.parent_span_id.hex(), _attributes(s.attributes), STATUS.get(s.status.code, "?"),
                    [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    [(e.name, _attributes(e.attributes)) for e in s.events],
                ))
    return spans


class Collector:
    """`with Collector() as c:` serves until the block ends; `c.spans` grows as exports arrive."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == "/v1/traces"
                if ok:
                    received = decode(body)
                    with collector._lock:
                        collector.spans.extend(received)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Collector:
        threading.Thread(target=self._server.serve_forever, daemon=True, name="otlp-collector").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def named(self, name: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def wait_for(self, predicate: Callable[[list[Span]], bool], trace_id: str | None = None, timeout: float = 15.0,
                 message: str = "spans", name: str | None = None) -> list[Span]:
        """The spans of `trace_id` (or named `name`) once `predicate` holds for them."""
        def ready() -> list[Span] | None:
            found = self.of_trace(trace_id) if trace_id is not None else self.named(name or "")
            return found if predicate(found) else None

        return list(wait_until(ready, timeout=timeout, message=message))
