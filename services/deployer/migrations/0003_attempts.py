"""Each deployment counts its attempts: one taken up again after the deployer died (its
message redelivered) is a second attempt, not a fresh first one, and a deployment that
keeps dying with the deployer stops after a bound instead of looping."""
from labfleet.shared.db.schema import run_sql

revision, down_revision = "0003", "0002"


def upgrade() -> None:
    run_sql("ALTER TABLE deployments ADD COLUMN attempts int NOT NULL DEFAULT 0;")


def downgrade() -> None:
    run_sql("ALTER TABLE deployments DROP COLUMN attempts;")
