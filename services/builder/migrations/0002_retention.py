"""Retention: pinned and tagged builds, and when a build's artifacts were deleted."""
from labfleet.shared.db.schema import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
CREATE TABLE build_marks (
    build_id   uuid        PRIMARY KEY REFERENCES builds (build_id) ON DELETE CASCADE,
    pinned     boolean     NOT NULL DEFAULT false,
    tags       text[]      NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE builds ADD COLUMN artifacts_expired_at timestamptz;
CREATE INDEX builds_by_server ON builds (server_id, created_at DESC);
""")


def downgrade() -> None:
    run_sql("""
DROP INDEX builds_by_server;
ALTER TABLE builds DROP COLUMN artifacts_expired_at;
DROP TABLE build_marks;
""")
