"""The outbox loses its NOTIFY trigger: committed rows are handed to the relay in memory."""
from labfleet.shared.db import schema

revision, down_revision = "0004", "0003"
upgrade, downgrade = schema.drop_outbox_notify, schema.keep_schema
