"""Users, API tokens and browser sessions: the only state the gateway owns."""
from alembic import op
from labfleet.shared.db.schema import create_outbox_tables, drop_outbox_tables, run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled      boolean     NOT NULL DEFAULT false
);
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    token_hash   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
"""


def upgrade() -> None:
    create_outbox_tables()
    run_sql(DDL)


def downgrade() -> None:
    op.execute("DROP TABLE sessions")
    op.execute("DROP TABLE api_tokens")
    op.execute("DROP TABLE users")
    drop_outbox_tables()
