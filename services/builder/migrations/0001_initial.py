"""Build jobs, their attempts and their artifacts."""
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE builds (
    build_id          uuid PRIMARY KEY,
    spec              jsonb       NOT NULL,
    repo_url          text        NOT NULL,
    ref               text        NOT NULL,
    arch              text        NOT NULL,
    requested_by      text        NOT NULL DEFAULT '',
    status            text        NOT NULL,
    phase             text,
    server_id         uuid,
    server_name       text,
    commit            text,
    allocation        int         NOT NULL DEFAULT 0,
    error             jsonb,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    cancel_reason     text        NOT NULL DEFAULT '',
    position          int,
    estimated_start_s double precision,
    wait_at           timestamptz,
    duration_s        double precision,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);
CREATE INDEX builds_created ON builds (created_at DESC);
CREATE INDEX builds_commit ON builds (commit text_pattern_ops) WHERE status = 'succeeded';
CREATE INDEX builds_ref ON builds (ref, arch, finished_at DESC) WHERE status = 'succeeded';
CREATE TABLE attempts (
    build_id    uuid        NOT NULL REFERENCES builds (build_id) ON DELETE CASCADE,
    attempt     int         NOT NULL,
    allocation  int         NOT NULL,
    server_id   uuid        NOT NULL,
    server_name text        NOT NULL,
    build_dir   text,
    instance    text        NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    outcome     text,
    error       jsonb,
    PRIMARY KEY (build_id, attempt)
);
CREATE TABLE artifacts (
    build_id    uuid        NOT NULL REFERENCES builds (build_id) ON DELETE CASCADE,
    name        text        NOT NULL,
    size        bigint      NOT NULL,
    sha256      text        NOT NULL,
    object_name text        NOT NULL,
    bucket      text        NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (build_id, name)
);
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(DDL)


def downgrade() -> None:
    run_sql("DROP TABLE artifacts;\nDROP TABLE attempts;\nDROP TABLE builds;")
    drop_outbox_tables()
