"""The scheduler's projection of the build pool, its queue, build history and decisions."""
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# health and samples live beside the servers, not in them: the three come from different
# consumers, in any order, and each is applied only when newer than what is stored
DDL = """
CREATE TABLE build_servers (
    server_id  uuid PRIMARY KEY,
    name       text        NOT NULL,
    view       jsonb       NOT NULL,
    lifecycle  text        NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX build_servers_name ON build_servers (name);
CREATE TABLE server_health (
    server_id  uuid PRIMARY KEY,
    status     text        NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL
);
CREATE TABLE server_samples (
    server_id    uuid PRIMARY KEY,
    at           timestamptz      NOT NULL,
    cpu_pct      double precision NOT NULL,
    load1        double precision NOT NULL,
    cpu_cores    int              NOT NULL,
    disk_free_gb double precision NOT NULL
);
CREATE TABLE build_queue (
    build_id          uuid PRIMARY KEY,
    seq               bigserial   NOT NULL,
    spec              jsonb       NOT NULL,
    requested_by      text        NOT NULL DEFAULT '',
    status            text        NOT NULL
                      CHECK (status IN ('queued', 'allocated', 'running', 'finished')),
    pinned_server_id  uuid,
    server_id         uuid,
    server_name       text,
    attempt           int         NOT NULL DEFAULT 0,
    avoid             uuid[]      NOT NULL DEFAULT '{}',
    last_error        jsonb,
    position          int,
    estimated_start_s double precision,
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    allocated_at      timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz
);
CREATE INDEX build_queue_order ON build_queue (status, seq);
CREATE INDEX build_queue_server ON build_queue (server_id) WHERE server_id IS NOT NULL;
CREATE TABLE build_history (
    build_id    uuid PRIMARY KEY,
    server_id   uuid,
    repo_url    text             NOT NULL,
    arch        text             NOT NULL,
    config      text             NOT NULL,
    targets     text             NOT NULL,
    duration_s  double precision NOT NULL,
    finished_at timestamptz      NOT NULL
);
CREATE INDEX build_history_kind
    ON build_history (repo_url, arch, config, targets, finished_at DESC);
CREATE TABLE decisions (
    id         bigserial PRIMARY KEY,
    request_id uuid        NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    outcome    text        NOT NULL,
    chosen     text,
    reason     text        NOT NULL,
    candidates jsonb       NOT NULL
);
CREATE INDEX decisions_request ON decisions (request_id);
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(DDL)


def downgrade() -> None:
    run_sql("""
DROP TABLE decisions;
DROP TABLE build_history;
DROP TABLE build_queue;
DROP TABLE server_samples;
DROP TABLE server_health;
DROP TABLE build_servers;
""")
    drop_outbox_tables()
