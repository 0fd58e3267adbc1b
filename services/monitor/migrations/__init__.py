"""Alembic revisions of the ``monitor`` schema (a package so that installs ship them)."""
