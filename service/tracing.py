"""Optional OpenTelemetry tracing, configured by the standard ``OTEL_*`` variables and off by default.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), unless
``OTEL_SDK_DISABLED=true``. The SDK reads the rest itself: the sampler (``OTEL_TRACES_SAMPLER``,
``OTEL_TRACES_SAMPLER_ARG``; parent-based, always on, by default), the resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the exporter (``OTEL_EXPORTER_OTLP_*``,
HTTP/protobuf) and the batching (``OTEL_BSP_*``).

When on, the maintained instrumentations make the request span (FastAPI's, which honours an
incoming ``traceparent``) and a span per Redis command; ``service.ranking`` adds the stages of a
/score inside it. When off, none of this is imported or installed, and the stages' spans are the
API's non-recording ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import NoOpTracer, Tracer, TracerProvider

TRACER_NAME = "din-serve"
EXCLUDED_URLS = "/healthz,/readyz,/metrics"  # probes and scrapes: traffic, not requests worth a trace


def wanted(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters - {"none"}:
        return True
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def provider_from_env() -> TracerProvider | None:
    """The SDK's provider with the exporters ``OTEL_TRACES_EXPORTER`` names (default otlp), or None."""
    if not wanted(os.environ):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, else ours
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "din-serve"}))
    provider = SdkTracerProvider(resource=resource)
    names = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    for name in names or ["otlp"]:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "none":
            continue
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument(app: Any, provider: TracerProvider | None) -> Tracer:
    """Instruments the app's requests; returns the tracer for its own spans (a no-op one when off)."""
    if provider is None:
        return NoOpTracer()
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    return provider.get_tracer(TRACER_NAME)


def instrument_redis(client: Any, provider: TracerProvider | None) -> None:
    """A span per command of this client (the app's own clients only, not every Redis client in
    the process)."""
    if provider is not None:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor.instrument_client(client, tracer_provider=provider)


def shutdown(provider: TracerProvider | None) -> None:
    """Exports what is still buffered."""
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


def record(
    tracer: Tracer, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None
) -> None:
    """A span for work timed elsewhere (in the inference thread), as a child of the current span."""
    span = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    span.end(end_time=end_ns)
