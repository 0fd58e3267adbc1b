"""Messages used only to measure and test the bus itself (stream BENCH, ``bench.*``)."""
from __future__ import annotations

from typing import ClassVar

from .envelope import Event


class BenchPing(Event):
    subject: ClassVar[str] = "bench.ping"
    seq: int = 0
    sent_ns: int = 0
    #: the handler raises until the message has been delivered this many times
    fail_deliveries: int = 0


class BenchPong(Event):
    subject: ClassVar[str] = "bench.pong"
    seq: int = 0
    sent_ns: int = 0
    ping_id: str = ""
    #: when the handler began (``perf_counter_ns``, same machine): splits the latency
    handled_ns: int = 0
