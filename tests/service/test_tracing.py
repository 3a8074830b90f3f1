"""Tracing: the span tree of a real /score (the SDK's in-memory exporter, real Redis), an incoming
traceparent honoured, an unsampled request recording nothing, and tracing off by default."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracer

from devtools.otlp import OtlpSink
from service.main import create_app
from service.tracing import wanted

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
CANDIDATES = [{"item_id": i, "category_id": i % 7} for i in range(12)]
STAGES = ["din.encode_candidates", "din.read_user", "din.build_features", "din.queue_wait", "din.model_run",
          "din.serialize"]  # fmt: skip


def traced(settings, sampler=None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def score(settings, provider, headers=None) -> None:
    with TestClient(create_app(settings, tracer_provider=provider)) as c:
        events = [{"user_id": 7, "item_id": 100 + i, "category_id": i % 7} for i in range(5)]
        assert c.post("/events", json={"events": events}).status_code == 200
        r = c.post("/score", json={"user_id": 7, "candidates": CANDIDATES}, headers=headers or {})
        assert r.status_code == 200


@dataclass(frozen=True)
class Span:
    """What the tests read of a finished span (the SDK types every field as optional)."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    start: int
    end: int
    attributes: dict[str, Any]


def finished(exporter: InMemorySpanExporter) -> list[Span]:
    out = []
    for s in exporter.get_finished_spans():
        assert s.context is not None and s.start_time is not None and s.end_time is not None
        parent = s.parent.span_id if s.parent is not None else None
        out.append(Span(s.name, s.context.trace_id, s.context.span_id, parent, s.start_time, s.end_time,
                        dict(s.attributes or {})))  # fmt: skip
    return out


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id]


def test_a_score_is_one_request_span_with_each_stage_and_the_redis_commands_inside(settings):
    provider, exporter = traced(settings)
    score(settings, provider, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})

    spans = finished(exporter)
    (request,) = [s for s in spans if s.name == "POST /score"]
    # The caller's trace goes on: same trace id, the caller's span as the parent.
    assert f"{request.trace_id:032x}" == TRACE_ID and f"{request.parent_id:016x}" == PARENT_ID
    stages = sorted(children(spans, request), key=lambda s: s.start)
    assert [s.name for s in stages] == STAGES
    by_name = {s.name: s for s in stages}
    assert by_name["din.queue_wait"].end == by_name["din.model_run"].start
    assert all(a.end <= b.start for a, b in itertools.pairwise(stages))
    assert by_name["din.model_run"].attributes["din.batched"] is False
    # The Redis instrumentation's spans sit under the read of the user.
    redis = children(spans, by_name["din.read_user"])
    assert redis and all(s.attributes.get("db.system") == "redis" for s in redis)
    attributes = request.attributes
    assert attributes["din.candidates"] == len(CANDIDATES) and attributes["din.history_length"] == 5
    assert attributes["din.model_version"] == "test-v1" and attributes["din.degraded"] is False
    assert attributes["din.admission.refused"] is False and attributes["din.admission.in_flight"] == 0
    # the HTTP semantic conventions' old name, or the stable one under OTEL_SEMCONV_STABILITY_OPT_IN
    assert attributes.get("http.status_code", attributes.get("http.response.status_code")) == 200


def test_a_request_the_sampler_drops_records_no_span(settings):
    provider, exporter = traced(settings, ALWAYS_OFF)
    score(settings, provider)
    assert exporter.get_finished_spans() == ()


def test_tracing_is_off_without_otel_variables_and_instruments_nothing(settings, monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(settings)
    with TestClient(app) as c:
        assert isinstance(app.state.services.tracer, NoOpTracer)
        assert c.post("/score", json={"user_id": 7, "candidates": CANDIDATES}).status_code == 200
        assert "opentelemetry" not in type(app.middleware_stack).__module__


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_an_exporter_or_endpoint_is_named(environ, on):
    assert wanted(environ) is on


def test_otel_variables_alone_export_the_spans_over_otlp_http(settings, monkeypatch):
    sink = OtlpSink(keep=True)
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{sink.url}/v1/traces")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "din-test")
        with TestClient(create_app(settings)) as c:  # no provider given: the variables decide
            assert c.post("/score", json={"user_id": 7, "candidates": CANDIDATES}).status_code == 200
        # shutting the app down flushed the batch
    finally:
        sink.close()
    names, services = set(), set()
    for body in sink.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            services.add(attributes.get("service.name"))
            names |= {span.name for scope in resource_spans.scope_spans for span in scope.spans}
    assert services == {"din-test"}
    assert {"POST /score", *STAGES} <= names
