"""The inventory's edges: its PostgreSQL tables and the SSH probe of a host."""
