"""Embedded NATS (JetStream) and PostgreSQL for one-machine use and for tests.

``labfleet up`` starts both in its data directory when ``LABFLEET_NATS_URL`` /
``LABFLEET_DATABASE_URL`` are not given; the test fixtures do the same in a temporary
directory.  Ports are picked free at start, so nothing collides with servers already
running on the standard ports.
"""
from .nats import EmbeddedNats, start_nats
from .postgres import EmbeddedPostgres, start_postgres

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "start_nats", "start_postgres"]
