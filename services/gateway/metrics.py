"""Prometheus metrics of the gateway, on a registry of its own (several gateways may live in
one test process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "labfleet_gateway_requests", "HTTP requests answered",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "labfleet_gateway_request_seconds", "HTTP request latency",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.sse_clients = Gauge(
            "labfleet_gateway_sse_clients", "browsers connected to a live stream",
            registry=self.registry)
        self.live_updates = Counter(
            "labfleet_gateway_live_updates", "row updates sent to browsers",
            registry=self.registry)
        self.commands = Counter(
            "labfleet_gateway_command_failures", "commands that got no good answer",
            ["service", "code"], registry=self.registry)
        self.logins = Counter(
            "labfleet_gateway_logins", "login attempts", ["result"], registry=self.registry)
        self.cached_samples = Gauge(
            "labfleet_gateway_cached_samples", "latest samples held for live pages",
            registry=self.registry)
