"""Tracing with the OpenTelemetry SDK: one trace per event, from the ingest request through
verification and storage to every delivery attempt in the worker. The trace context travels in
the event row (``events.trace_context``, a W3C ``traceparent``), not in the queue, so a delivery
swept up after Redis lost its job still joins its event's trace.

Span attributes carry ids only (tenant, source, event, endpoint, delivery), never bodies,
headers or secrets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ContextManager

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.settings import Settings

tracer = trace.get_tracer("hookgate")
_propagator = TraceContextTextMapPropagator()
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)
# Whether a tracer provider is installed: one set before this import (``opentelemetry-instrument``,
# ``OTEL_PYTHON_TRACER_PROVIDER``) or through ``install``. Held here because asking the API costs an
# environment lookup per call while none is set (~2 % of the ingest path's CPU under load).
def _provider_set() -> bool:
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


_installed = _provider_set()


def configure(settings: Settings, service: str) -> None:
    """Install the exporter the settings name; ``none`` leaves tracing to whoever set a provider."""
    exporter = _exporter(settings)
    if exporter is None:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"{settings.otel_service_name}-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)


def install(provider: TracerProvider) -> None:
    """Make ``provider`` the process's tracer provider (the API allows one per process)."""
    global _installed
    trace.set_tracer_provider(provider)
    _installed = _provider_set()


def _exporter(settings: Settings) -> SpanExporter | None:
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter()
    if settings.otel_exporter == "otlp_http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=settings.otel_endpoint or None)
    if settings.otel_exporter == "otlp_grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.otel_endpoint or None)
    return None


def tracing() -> bool:
    """Whether a tracer provider is installed.

    Without one, the API's proxy still builds a non-recording span and attaches a context for
    every span asked for: ~5 % of the ingest path's CPU, for nothing. The helpers below skip it."""
    return _installed


def current_span(name: str, **options: Any) -> ContextManager[trace.Span]:
    """``tracer.start_as_current_span``, or an invalid span (no ids, attributes ignored) while not tracing."""
    return tracer.start_as_current_span(name, **options) if tracing() else _NO_SPAN


def start_spans(name: str, traceparents: Sequence[str | None]) -> list[trace.Span]:
    """One span each in the given traces (ended by the caller); none while not tracing."""
    return [tracer.start_span(name, context=context_of(parent)) for parent in traceparents] if tracing() else []


def current_traceparent() -> str | None:
    """The active span's context as a ``traceparent`` header value (None when not recording)."""
    if not tracing():
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> context.Context | None:
    return _propagator.extract({"traceparent": traceparent}) if traceparent else None


def trace_id_hex(span: trace.Span) -> str | None:
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
