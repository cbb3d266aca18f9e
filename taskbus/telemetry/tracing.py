"""OpenTelemetry traces: off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER is set.

Off, `tracer()` is None and this module imports nothing of OpenTelemetry: call sites test for
None once (when they are built), so the hot paths do nothing at all. On, `setup` installs the
SDK's provider with a batch processor and the OTLP/HTTP exporter; the SDK's own OTEL_* variables
configure the rest (endpoint, headers, sampler, resource, batch sizes).

`setup` runs where the process serves: in each gunicorn worker, after the fork (`taskbus serve`
does not preload the app, so the function module, and `functions.boot`, load in the worker),
and in the worker process (`launch.run_worker`). The batch processor's thread does not survive
a fork; the SDK restarts it in a child that forks later (the functions-framework CLI loads the
module in gunicorn's master). `shutdown` flushes within FLUSH_S (bounded by GRACE_S), at exit.

Span shapes follow the messaging semantic conventions: `send <queue>` (PRODUCER) per enqueue
request, whose context the task keeps as a W3C `traceparent` in its hash; `process <queue>`
(CONSUMER) per attempt, with that context as parent (a task is one message) and as a link, so
a retried task's attempts are siblings in the producer's trace.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from taskbus import logs
from taskbus.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Span, Tracer

    from taskbus.channel import Job, OutcomeKind

SYSTEM = "taskbus"  # messaging.system: the registry has no Redis value; a custom one is allowed
FLUSH_S = 2.0  # at most this long (and never past GRACE_S) to send what is buffered at exit
_state: dict[str, Any] = {}  # once set up: "tracer", "processor", "flush_s"


def enabled(settings: Settings) -> bool:
    """Whether tracing is on: an OTLP endpoint or an exporter named, and that exporter not `none`."""
    if settings.otel_traces_exporter == "none":
        return False
    return bool(settings.otel_exporter_otlp_endpoint or settings.otel_traces_exporter)


def tracer() -> Tracer | None:
    """taskbus's tracer once `setup` turned tracing on, else None (the call sites' one test)."""
    return _state.get("tracer")


def setup(settings: Settings, service: str) -> None:
    """Install the SDK's tracer provider in this process when tracing is on (once; else nothing).
    The service name is OTEL_SERVICE_NAME, or `taskbus-<service>`."""
    if "tracer" in _state or not enabled(settings):
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if settings.otel_traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT
    resource = Resource.create({} if settings.otel_service_name else {SERVICE_NAME: f"taskbus-{service}"})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # our own exit hook is bounded
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)  # the handlers' own spans (the OTel API) join it
    _state.update(tracer=provider.get_tracer("taskbus"), processor=processor,
                  flush_s=max(0.1, min(FLUSH_S, settings.grace_s)))
    logs.add_context(_log_fields(settings.google_cloud_project))
    atexit.register(shutdown)


def shutdown() -> None:
    """Send what is buffered and stop exporting, waiting at most the flush budget (the SDK's own
    shutdown may wait 30 s on an unreachable collector); safe to call twice."""
    processor: BatchSpanProcessor | None = _state.pop("processor", None)
    if processor is not None:
        flush = threading.Thread(target=processor.shutdown, daemon=True, name="otel-flush")
        flush.start()
        flush.join(_state["flush_s"])


def traceparent(span: Span) -> str:
    """The W3C `traceparent` of `span`: what a task keeps of its producer span."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def incoming(headers: Mapping[str, str]) -> Context:
    """The caller's context from a request's headers (W3C `traceparent`, by OTEL_PROPAGATORS)."""
    from opentelemetry import propagate

    return propagate.extract(headers)


@contextlib.contextmanager
def sending(t: Tracer, headers: Mapping[str, str], queues: list[str], count: int) -> Iterator[Span]:
    """The `send` span of one enqueue request (a batch: one span), child of the caller's context;
    named for its queue when all its tasks share one."""
    from opentelemetry.trace import SpanKind

    one = len(set(queues)) == 1
    attributes: dict[str, Any] = {"messaging.system": SYSTEM, "messaging.operation.type": "send",
                                  "messaging.operation.name": "send"}
    if one:
        attributes["messaging.destination.name"] = queues[0]
    if count > 1:
        attributes["messaging.batch.message_count"] = count
    with t.start_as_current_span(f"send {queues[0]}" if one else "send", context=incoming(headers),
                                 kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def processing(t: Tracer, job: Job) -> Iterator[Span]:
    """The `process` span of one attempt, current while the handler runs: parent and link are
    the producer context the task kept (none for a task enqueued while tracing was off)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = links = None
    if job.traceparent:
        parent = TraceContextTextMapPropagator().extract({"traceparent": job.traceparent})
        producer = trace.get_current_span(parent).get_span_context()
        links = [trace.Link(producer)] if producer.is_valid else None
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.task_id,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "taskbus.task.type": job.type,
        "taskbus.task.attempt": job.attempt,
    }
    with t.start_as_current_span(f"process {job.queue}", context=parent, kind=trace.SpanKind.CONSUMER,
                                 links=links, attributes=attributes, record_exception=False,
                                 set_status_on_exception=False) as span:
        yield span


def failed(span: Span, exc: BaseException) -> None:
    """The handler raised: the exception on the span (`settled` then sets the status)."""
    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__qualname__)


def settled(span: Span, outcome: OutcomeKind) -> None:
    """The attempt's outcome on its span; status ERROR when it failed or will be retried (a
    cancel is what was asked for, not an error)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("taskbus.outcome", outcome)
    if outcome in ("failed", "retry"):
        span.set_status(Status(StatusCode.ERROR, outcome))


@contextlib.contextmanager
def span(t: Tracer, name: str, headers: Mapping[str, str] | None = None,
         attributes: Mapping[str, str | float] | None = None) -> Iterator[Span]:
    """Any other span (webhook verification, long-poll, re-drive step), child of the request's
    context when `headers` are given, else of the current one; an exception marks it ERROR."""
    context = incoming(headers) if headers is not None else None
    with t.start_as_current_span(name, context=context, attributes=attributes) as current:
        yield current


def _log_fields(project: str) -> Callable[[], dict[str, Any] | None]:
    """The fields Cloud Logging (and other backends) join a log line to the active span with."""
    from opentelemetry import trace

    prefix = f"projects/{project}/traces/" if project else ""
    current = trace.get_current_span

    def fields() -> dict[str, Any] | None:
        ctx = current().get_span_context()
        if not ctx.is_valid:
            return None
        trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        return {"logging.googleapis.com/trace": prefix + trace_id, "logging.googleapis.com/spanId": span_id,
                "logging.googleapis.com/trace_sampled": ctx.trace_flags.sampled,
                "trace_id": trace_id, "span_id": span_id}

    return fields
