"""Monitor: health and capacity of every host labfleet logs in to.

It keeps its own projection of resources from ``resource.*`` events, polls each host over
one persistent SSH connection with one cheap remote command, and publishes what it saw:
``HostSampled`` on ``sample.<kind>.<id>`` plus the latest sample in the JetStream KV
bucket ``samples``; health transitions (online, degraded, offline, maintenance) as
``HealthChanged`` events plus the current status in the KV bucket ``health``.  Sample
history stays in its own schema for the detail pages (``health.cmd.history``).
"""
