"""OpenTelemetry traces of the serving service, off unless ``otel_endpoint`` is set.

When on: a tracer provider of the service's own (``service.name``), spans batched to the
OTLP/HTTP endpoint, and FastAPI's instrumentation on the application, which continues a trace
whose context the caller sent (W3C ``traceparent``: the deploy task's ``POST /admin/reload``
does, so a deploy and the reload it caused are one trace). The middleware puts the trace id
beside the request id in the JSON logs and the request id on the request's span; a registry
sync gets a span of its own, a child of the request that started it. Nothing here is
imported while tracing is off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.core.config import ServingSettings

# Probes and scrapes would drown the traces that matter.
EXCLUDED_URLS = "/health/live,/health/ready,/metrics"


def setup_tracing(app: FastAPI, settings: ServingSettings) -> Any | None:
    """Instrument ``app`` when tracing is configured; return its tracer provider (or None)."""
    if not settings.otel_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    endpoint = settings.otel_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=EXCLUDED_URLS,
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )
    return provider


def current_trace_id(request_id: str) -> str | None:
    """The current span's trace id (hex), after tagging the span with ``request_id``."""
    from opentelemetry import trace

    span = trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid:
        return None
    span.set_attribute("mlwp.request_id", request_id)
    return format(context.trace_id, "032x")
