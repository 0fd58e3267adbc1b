"""Tracing and structured logs.

Traces cross services in message headers (faststream's NATS telemetry middleware on the
broker, W3C ``traceparent`` carried through the outbox).  Every log line is one JSON
object carrying the current ``trace_id``/``span_id``, so a build's logs in every service
can be found by one id.  An OTLP exporter is used only where ``LABFLEET_OTLP_ENDPOINT``
is set and the exporter package is installed.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from .settings import Settings

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service:<9} %(levelname)-7s %(name)s: %(message)s")


def setup_logging(settings: Settings, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if settings.log_json else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # asyncssh logs every channel at INFO; keep its warnings only
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def setup_tracing(settings: Settings, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"labfleet-{service}"}))
    if settings.otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        except ImportError:
            logging.getLogger(__name__).warning(
                "LABFLEET_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp is not installed; "
                "spans are not exported")
    trace.set_tracer_provider(provider)
    return provider
