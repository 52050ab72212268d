"""Tables for telling people and other systems what the lifecycle did.

The audit table (`temporary_enrollment_state_changes`) is the outbox: every change is written
there in the same transaction as the change itself, by the same set-based statements. These
tables only record how far each webhook receiver has got through it, and which pre-expiry and
"access has ended" notices have been sent, so that nothing is sent twice.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.tep import SCHEMA, BigId, Created, IdPk, Updated

NOTICE_BEFORE_END = "before_end"
NOTICE_ENDED = "ended"

NOTICE_PENDING = "pending"
NOTICE_SENT = "sent"
NOTICE_FAILED = "failed"  # gave up after too many attempts
NOTICE_SKIPPED = "skipped"  # nobody to send it to (no active email channel)


class WebhookReceiver(Base):
    """One configured webhook URL and its place in the outbox.

    Every event with a state change id at or below `low_water_state_change_id` has been delivered
    (or is not an event); above it, `WebhookDelivery` rows say what happened to each event.
    A lease (`leased_until`, `lease_owner`) lets one delivery run at a time work on a receiver
    without holding a database transaction open across HTTP requests.
    """

    __tablename__ = "temporary_enrollment_webhook_receivers"
    __table_args__ = (
        UniqueConstraint("url", name="uq_temporary_enrollment_webhook_receivers_url"),
        SCHEMA,
    )

    id: Mapped[IdPk]
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    low_water_state_change_id: Mapped[int] = mapped_column(BigId, nullable=False, default=0)
    leased_until: Mapped[dt.datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    last_success_at: Mapped[dt.datetime | None]
    last_failure_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class WebhookDelivery(Base):
    """What happened to one event (one audit row) at one receiver, above its low-water mark."""

    __tablename__ = "temporary_enrollment_webhook_deliveries"
    __table_args__ = (SCHEMA,)

    receiver_id: Mapped[int] = mapped_column(
        BigId,
        ForeignKey(
            f"{SCHEMA['schema']}.temporary_enrollment_webhook_receivers.id",
            name="fk_temporary_enrollment_webhook_deliveries_receiver_id",
        ),
        primary_key=True,
    )
    state_change_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    delivered_at: Mapped[dt.datetime | None]
    next_attempt_at: Mapped[dt.datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class Notice(Base):
    """One email about one pairing: before its access ends (per threshold) or once it has ended.

    The unique constraint is the deduplication: planners insert-or-skip, so however many runs
    overlap, a pairing gets at most one notice per kind and threshold.
    """

    __tablename__ = "temporary_enrollment_notices"
    __table_args__ = (
        UniqueConstraint(
            "temporary_enrollment_pairing_id",
            "kind",
            "threshold_seconds",
            name="uq_temporary_enrollment_notices_pairing_kind_threshold",
        ),
        Index("index_temporary_enrollment_notices_on_workflow_state", "workflow_state"),
        SCHEMA,
    )

    id: Mapped[IdPk]
    # Canvas's pairing id; no foreign key into Canvas's tables (models/tep.py).
    temporary_enrollment_pairing_id: Mapped[int] = mapped_column(BigId, nullable=False)
    root_account_id: Mapped[int] = mapped_column(BigId, nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    # How long before the end this notice warns (0 for the "ended" notice).
    threshold_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    # The end the notice is about: the pairing's first upcoming end, or when it ended.
    ends_at: Mapped[dt.datetime] = mapped_column(nullable=False)
    workflow_state: Mapped[str] = mapped_column(String(32), nullable=False, default=NOTICE_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime | None]
    leased_until: Mapped[dt.datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    recipients: Mapped[str | None] = mapped_column(Text)  # comma-separated, as sent
    subject: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None]
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]
