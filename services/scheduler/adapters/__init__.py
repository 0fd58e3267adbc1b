"""The scheduler's PostgreSQL tables (its schema ``scheduler``)."""
