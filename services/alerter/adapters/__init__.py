"""The alerter's edges: its PostgreSQL tables, SMTP and webhook senders."""
