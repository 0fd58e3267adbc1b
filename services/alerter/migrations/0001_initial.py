"""Rules, notification targets, alerts, the outbox of deliveries, a projection of resources.

The default rules put every condition on the dashboard; an admin adds targets (email,
webhook) to them or writes narrower rules.
"""
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE resources (
    resource_id uuid PRIMARY KEY,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    labels      jsonb       NOT NULL DEFAULT '{}',
    removed     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE targets (
    target_id  uuid PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    kind       text        NOT NULL CHECK (kind IN ('email', 'webhook')),
    addresses  text[]      NOT NULL DEFAULT '{}',
    url        text,
    secret     bytea,
    enabled    boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE rules (
    rule_id       uuid PRIMARY KEY,
    name          text        NOT NULL UNIQUE,
    conditions    text[]      NOT NULL DEFAULT '{}',
    min_severity  text        NOT NULL DEFAULT 'info',
    resource_kind text,
    labels        jsonb       NOT NULL DEFAULT '{}',
    enabled       boolean     NOT NULL DEFAULT true,
    target_ids    uuid[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE alerts (
    alert_id        uuid PRIMARY KEY,
    rule_id         uuid        NOT NULL REFERENCES rules (rule_id) ON DELETE CASCADE,
    rule_name       text        NOT NULL,
    condition       text        NOT NULL,
    severity        text        NOT NULL,
    status          text        NOT NULL DEFAULT 'open',
    subject_type    text        NOT NULL,
    subject_id      uuid        NOT NULL,
    resource_id     uuid,
    resource_kind   text,
    resource_name   text,
    title           text        NOT NULL,
    detail          text        NOT NULL DEFAULT '',
    count           int         NOT NULL DEFAULT 1,
    first_raised_at timestamptz NOT NULL DEFAULT now(),
    last_raised_at  timestamptz NOT NULL DEFAULT now(),
    occurred_at     timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolution      text
);
CREATE UNIQUE INDEX alerts_standing ON alerts (rule_id, condition, subject_id)
    WHERE status <> 'resolved';
CREATE INDEX alerts_subject ON alerts (condition, subject_id, resolved_at DESC);
CREATE INDEX alerts_recent ON alerts (last_raised_at DESC);
CREATE TABLE deliveries (
    delivery_id     bigserial PRIMARY KEY,
    alert_id        uuid        NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    target_id       uuid        NOT NULL REFERENCES targets (target_id) ON DELETE CASCADE,
    event           text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    version         int         NOT NULL DEFAULT 1,
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_alert ON deliveries (alert_id, target_id, delivery_id DESC);
INSERT INTO rules (rule_id, name, conditions, min_severity) VALUES
    (gen_random_uuid(), 'hosts unreachable', '{host_unreachable,host_key_changed}', 'info'),
    (gen_random_uuid(), 'disk low', '{disk_low}', 'info'),
    (gen_random_uuid(), 'build failures', '{build_failed,build_rejected}', 'info'),
    (gen_random_uuid(), 'boot failures', '{boot_failed}', 'info');
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(DDL)


def downgrade() -> None:
    run_sql("DROP TABLE deliveries;\nDROP TABLE alerts;\nDROP TABLE rules;\n"
            "DROP TABLE targets;\nDROP TABLE resources;")
    drop_outbox_tables()
