"""The monitor's edges: its tables, the KV buckets, SSH polls, credentials from inventory."""
