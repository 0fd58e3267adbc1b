"""labfleet's common library: settings, event schemas, bus wiring, database, SSH, telemetry.

Every service imports its contracts from here, so a message has exactly one definition.
"""
