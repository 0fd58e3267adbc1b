"""The outbox loses its NOTIFY trigger: committed rows are handed to the relay in memory."""
from labfleet.shared.db.schema import drop_outbox_notify

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    drop_outbox_notify()


def downgrade() -> None:
    pass  # the relay no longer listens; a trigger would only slow commits down
