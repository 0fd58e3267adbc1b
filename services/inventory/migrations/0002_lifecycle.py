"""Lifecycle of a resource: its maintenance window and the per-server pause on low disk."""
from labfleet.shared.db.schema import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
ALTER TABLE resources ADD COLUMN maintenance jsonb;
ALTER TABLE resources ADD COLUMN pause_on_low_disk boolean NOT NULL DEFAULT false;
CREATE INDEX resources_in_maintenance ON resources (id) WHERE maintenance IS NOT NULL;
""")


def downgrade() -> None:
    run_sql("""
DROP INDEX resources_in_maintenance;
ALTER TABLE resources DROP COLUMN pause_on_low_disk;
ALTER TABLE resources DROP COLUMN maintenance;
""")
