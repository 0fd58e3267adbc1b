"""The monitor schema: its projection of resources, sample history, last judged health.

``samples`` is append-only and pruned by age; rows are found by resource and time (the
detail page's history) and deleted by time (BRIN: cheap on an append-only table).
"""
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE resources (
    id          uuid        PRIMARY KEY,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    address     text        NOT NULL,
    port        integer     NOT NULL,
    username    text        NOT NULL,
    host_key    text,
    work_dir    text,
    lifecycle   text        NOT NULL DEFAULT 'active',
    removed     boolean     NOT NULL DEFAULT false,
    version_at  timestamptz NOT NULL
);
CREATE TABLE samples (
    resource_id   uuid        NOT NULL,
    at            timestamptz NOT NULL,
    kind          text        NOT NULL,
    cpu_pct       real        NOT NULL,
    load1         real        NOT NULL,
    cpu_cores     integer     NOT NULL,
    mem_total_mb  integer     NOT NULL,
    mem_used_mb   integer     NOT NULL,
    disk_total_gb real        NOT NULL,
    disk_free_gb  real        NOT NULL,
    compile_procs integer     NOT NULL DEFAULT 0
);
CREATE INDEX samples_by_resource_time ON samples (resource_id, at);
CREATE INDEX samples_by_time ON samples USING brin (at);
CREATE TABLE health (
    resource_id uuid        PRIMARY KEY,
    kind        text        NOT NULL,
    status      text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    since       timestamptz,
    last_seen   timestamptz,
    warnings    jsonb       NOT NULL DEFAULT '[]',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(SCHEMA)


def downgrade() -> None:
    run_sql("DROP TABLE health;\nDROP TABLE samples;\nDROP TABLE resources;")
    drop_outbox_tables()
