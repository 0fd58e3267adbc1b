"""Environment placement: the scheduler's projection of QEMU hosts and the environment
queue, whose allocated rows are the hosts' reservations."""
from labfleet.shared.db.schema import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# host, health and sample come from different consumers in any order; each part is
# applied only when newer than what is stored
DDL = """
CREATE TABLE qemu_hosts (
    host_id    uuid PRIMARY KEY,
    name       text        NOT NULL,
    view       jsonb,
    lifecycle  text        NOT NULL DEFAULT 'active',
    updated_at timestamptz,
    health     text        NOT NULL DEFAULT 'unknown',
    health_reason text     NOT NULL DEFAULT '',
    health_at  timestamptz,
    sample_at  timestamptz,
    cpu_pct    double precision,
    mem_pct    double precision,
    disk_pct   double precision
);
CREATE TABLE env_requests (
    env_id            uuid PRIMARY KEY,
    seq               bigserial   NOT NULL,
    spec              jsonb       NOT NULL,
    resolved          jsonb       NOT NULL,
    requested_by      text        NOT NULL DEFAULT '',
    status            text        NOT NULL
                      CHECK (status IN ('queued', 'allocated', 'released', 'rejected')),
    pinned_host_id    uuid,
    host_id           uuid,
    host_name         text,
    vcpus             int         NOT NULL,
    memory_mb         int         NOT NULL,
    lease_s           double precision NOT NULL,
    position          int,
    estimated_wait_s  double precision,
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    allocated_at      timestamptz,
    released_at       timestamptz
);
CREATE INDEX env_requests_order ON env_requests (status, seq);
CREATE INDEX env_requests_host ON env_requests (host_id) WHERE status = 'allocated';
"""


def upgrade() -> None:
    run_sql(DDL)


def downgrade() -> None:
    run_sql("DROP TABLE env_requests;\nDROP TABLE qemu_hosts;")
