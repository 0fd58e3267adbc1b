"""Alembic revisions of the ``inventory`` schema (a package so that installs ship them)."""
