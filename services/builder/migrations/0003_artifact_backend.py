"""Artifacts: which store holds each (the JetStream object store, or an S3-compatible one)."""
from labfleet.shared.db.schema import run_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("ALTER TABLE artifacts ADD COLUMN backend text NOT NULL DEFAULT 'jetstream';")


def downgrade() -> None:
    run_sql("ALTER TABLE artifacts DROP COLUMN backend;")
