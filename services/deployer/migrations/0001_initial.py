"""Environments and their deployments (the boot log of each kept with it)."""
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE environments (
    env_id            uuid PRIMARY KEY,
    seq               bigserial   NOT NULL,
    spec              jsonb       NOT NULL,
    resolved          jsonb       NOT NULL,
    requested_by      text        NOT NULL DEFAULT '',
    status            text        NOT NULL,
    host_id           uuid,
    host_name         text,
    vm_name           text,
    libvirt_uri       text,
    error             jsonb,
    position          int,
    estimated_wait_s  double precision,
    current           int         NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    allocated_at      timestamptz,
    deployed_at       timestamptz,
    released_at       timestamptz
);
CREATE INDEX environments_order ON environments (seq DESC);
CREATE TABLE deployments (
    env_id            uuid        NOT NULL REFERENCES environments (env_id),
    number            int         NOT NULL,
    build_id          uuid        NOT NULL,
    commit            text        NOT NULL DEFAULT '',
    resolved          jsonb       NOT NULL,
    status            text        NOT NULL,
    failure           text,
    error             jsonb,
    boot_log          text        NOT NULL DEFAULT '',
    transferred_bytes bigint      NOT NULL DEFAULT 0,
    timings           jsonb       NOT NULL DEFAULT '{}',
    requested_by      text        NOT NULL DEFAULT '',
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    PRIMARY KEY (env_id, number)
);
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(DDL)


def downgrade() -> None:
    run_sql("DROP TABLE deployments;\nDROP TABLE environments;")
    drop_outbox_tables()
