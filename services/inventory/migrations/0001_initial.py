"""The inventory schema: resources, their sealed credentials, and the audit trail.

One ``resources`` table for every kind: the columns common to all (name, SSH target,
pinned host key, labels, lifecycle) plus ``capabilities`` as JSON whose shape depends on
the kind (a build server's cores and toolchains, later a QEMU host's KVM support).
"""
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE resources (
    id                   uuid        PRIMARY KEY,
    kind                 text        NOT NULL,
    name                 text        NOT NULL,
    address              text,
    port                 integer,
    username             text,
    host_key             text,
    host_key_fingerprint text,
    architectures        text[]      NOT NULL DEFAULT '{}',
    build_configs        text[]      NOT NULL DEFAULT '{}',
    capabilities         jsonb,
    labels               jsonb       NOT NULL DEFAULT '{}',
    lifecycle            text        NOT NULL DEFAULT 'active',
    registered_at        timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT resources_name_unique UNIQUE (name),
    CONSTRAINT resources_address_unique UNIQUE (kind, address, port)
);
CREATE INDEX resources_by_kind ON resources (kind, name);
CREATE TABLE credentials (
    resource_id        uuid        PRIMARY KEY REFERENCES resources (id) ON DELETE CASCADE,
    password_sealed    bytea,
    private_key_sealed bytea,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE audit_log (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text        NOT NULL DEFAULT '',
    action        text        NOT NULL,
    resource_id   uuid,
    resource_name text,
    result        text        NOT NULL,
    detail        jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_resource ON audit_log (resource_id, at);
CREATE INDEX audit_log_by_time ON audit_log (at);
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(SCHEMA)


def downgrade() -> None:
    run_sql("DROP TABLE audit_log;\nDROP TABLE credentials;\nDROP TABLE resources;")
    drop_outbox_tables()
