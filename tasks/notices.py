"""Emails to people: before a pairing's access ends, and once it has ended.

Two steps, both safe to run any number of times at once:

* :func:`plan_notices` inserts the notices that are due now, insert-or-skip against a unique
  (pairing, kind, threshold) constraint: a pairing gets each notice at most once, whoever plans it.
* :func:`send_notices` leases pending notices (a conditional UPDATE, so two senders never take the
  same one), sends one message per pairing over SMTP, and records the outcome. An SMTP server that
  cannot be reached makes the Celery task retry; the notice keeps its place. A notice that cannot
  be built (a stored address that is not one plain address) is marked failed alone, with its
  reason; the others are sent. Stored names are shown on one line, so none can add a header.

The recipient of the pairing's enrollments is the addressee, the pairing's creator is copied;
addresses are each user's first active `email` communication channel, as in Canvas.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.errors
import logging
import re
import smtplib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models import (
    LIVE_ENROLLMENT_STATES,
    NOTICE_BEFORE_END,
    NOTICE_ENDED,
    NOTICE_FAILED,
    NOTICE_PENDING,
    NOTICE_SENT,
    NOTICE_SKIPPED,
    Account,
    CommunicationChannel,
    Course,
    Enrollment,
    Notice,
    StateChange,
    TemporaryEnrollmentPairing,
    User,
    transaction,
    utcnow,
)
from tasks import lifecycle
from tasks.webhooks import insert_or_skip, reader
from worker.notify_settings import SmtpConfig, check_address

log = logging.getLogger("tep.notices")

# "Access has ended" notices are planned for pairings that ended within this long: enough to
# ride out a stopped worker, short enough that turning mail on does not mail about the past.
ENDED_LOOKBACK = dt.timedelta(days=1)
SMTP_TIMEOUT_SECONDS = 10.0
NOTICES_PER_RUN = 200
LEASE = dt.timedelta(minutes=5)
# A notice the SMTP server keeps refusing is retried with backoff, then marked failed.
MAX_ATTEMPTS = 8
BACKOFF_BASE = dt.timedelta(minutes=1)
BACKOFF_MAX = dt.timedelta(hours=6)


class SmtpUnavailable(Exception):
    """The SMTP server could not be reached or dropped the connection; retry the run later."""


def backoff(attempts: int) -> dt.timedelta:
    return min(BACKOFF_BASE * (1 << max(attempts - 1, 0)), BACKOFF_MAX)


def human(delta: dt.timedelta) -> str:
    """`3 days`, `1 day`, `12 hours`, `30 minutes`."""
    seconds = int(delta.total_seconds())
    for unit, size in (("week", 7 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# Control characters (\r, \n, \x85, escape, ...). The other line breaks (\u2028, \u2029) are
# whitespace to `str.split`.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str | None) -> str:
    """A stored value (a course, account or person's name) as a notice shows it: on one line,
    each run of line breaks, control characters and spaces one space, so that it can neither
    end the Subject header nor add lines of its own to the text."""
    return " ".join(_CONTROL.sub(" ", text or "").split())


# --------------------------------------------------------------------------------------------
# Planning


def plan_notices(session: Session, as_of: dt.datetime, thresholds: Sequence[dt.timedelta]) -> int:
    """Insert the notices due at `as_of` that do not exist yet; returns how many were new.

    A pre-expiry notice is about the pairing's first upcoming end (its earliest live `end_at`
    after `as_of`). Only the nearest threshold that applies is planned: a pairing created 12 hours
    before its end gets the 1-day notice, not a late 3-day one as well.
    """
    rows: list[dict[str, Any]] = []
    if thresholds:
        horizon = as_of + max(thresholds)
        first_end = func.min(Enrollment.end_at)
        upcoming = session.execute(
            lifecycle.join_due(
                select(
                    TemporaryEnrollmentPairing.id,
                    TemporaryEnrollmentPairing.root_account_id,
                    first_end,
                ),
                horizon,
            )
            .where(Enrollment.end_at > as_of)
            .group_by(TemporaryEnrollmentPairing.id, TemporaryEnrollmentPairing.root_account_id)
        )
        for pairing_id, root, ends_at in upcoming:
            assert ends_at is not None  # the due rule requires an end_at
            remaining = ends_at - as_of
            threshold = min(t for t in thresholds if remaining <= t)
            rows.append(_notice(pairing_id, root, NOTICE_BEFORE_END, threshold, ends_at, as_of))
    ended = session.execute(
        select(
            StateChange.temporary_enrollment_pairing_id,
            StateChange.root_account_id,
            func.max(StateChange.created_at),
        )
        .where(
            StateChange.created_at >= as_of - ENDED_LOOKBACK,
            StateChange.created_at <= as_of,
            StateChange.context_type == lifecycle.PAIRING,
            StateChange.to_state.in_(("ended", "deleted")),
        )
        .group_by(StateChange.temporary_enrollment_pairing_id, StateChange.root_account_id)
    )
    for ended_pairing_id, root, ended_at in ended:
        if ended_pairing_id is None:  # pairing rows always carry it; the column is shared
            continue
        rows.append(_notice(ended_pairing_id, root, NOTICE_ENDED, dt.timedelta(0), ended_at, as_of))
    if not rows:
        return 0
    # RETURNING yields only the rows inserted: the ones some other run had not planned already.
    inserted = session.connection().execute(
        insert_or_skip(session, Notice).returning(Notice.id), rows
    )
    return len(inserted.all())


def _notice(
    pairing_id: int,
    root: int,
    kind: str,
    threshold: dt.timedelta,
    ends_at: dt.datetime,
    now: dt.datetime,
) -> dict[str, Any]:
    return {
        "temporary_enrollment_pairing_id": pairing_id,
        "root_account_id": root,
        "kind": kind,
        "threshold_seconds": int(threshold.total_seconds()),
        "ends_at": ends_at,
        "workflow_state": NOTICE_PENDING,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


# --------------------------------------------------------------------------------------------
# Composing


@dataclasses.dataclass(frozen=True)
class Composed:
    to: list[str]
    cc: list[str]
    subject: str
    text: str
    # Why the notice is no longer worth sending (the pairing ended before its warning went out).
    obsolete: str | None = None

    @property
    def recipients(self) -> list[str]:
        return list(dict.fromkeys(self.to + self.cc))


def email_addresses(session: Session, user_ids: Sequence[int]) -> dict[int, str]:
    """Each user's first active email channel, as Canvas picks a default address."""
    rows = session.execute(
        select(CommunicationChannel.user_id, CommunicationChannel.path)
        .where(
            CommunicationChannel.user_id.in_(user_ids),
            CommunicationChannel.path_type == "email",
            CommunicationChannel.workflow_state == "active",
        )
        .order_by(CommunicationChannel.id)
    )
    found: dict[int, str] = {}
    for user_id, path in rows:
        found.setdefault(user_id, path)
    return found


def compose(session: Session, notice: Notice) -> Composed:
    pairing = session.get(TemporaryEnrollmentPairing, notice.temporary_enrollment_pairing_id)
    if pairing is None:
        raise LookupError(f"pairing {notice.temporary_enrollment_pairing_id} does not exist")
    stmt = (
        select(Enrollment, Course)
        .join(Course, Course.id == Enrollment.course_id)
        .where(Enrollment.temporary_enrollment_pairing_id == pairing.id)
        .order_by(Course.name, Enrollment.id)
    )
    if notice.kind == NOTICE_BEFORE_END:
        stmt = stmt.where(
            Enrollment.workflow_state.in_(LIVE_ENROLLMENT_STATES),
            Enrollment.end_at.is_not(None),
        )
    listed = session.execute(stmt).all()
    obsolete = None
    ends_at = notice.ends_at
    if notice.kind == NOTICE_BEFORE_END:
        # As shown: an ended pairing keeps `active` in Canvas's row (its end is tep's table).
        shown = lifecycle.pairing_state(session, pairing)
        if shown != "active" or not listed:
            obsolete = f"pairing is {shown} with nothing left to end"
        else:
            # The current first end: an end_at moved since the notice was planned is what counts.
            ends_at = min(e.end_at for e, _ in listed if e.end_at is not None)
    recipient_ids = list(dict.fromkeys(e.user_id for e, _ in listed))
    provider_ids = [e.temporary_enrollment_source_user_id for e, _ in listed]
    people = {
        u.id: u
        for u in session.scalars(
            select(User).where(
                User.id.in_(
                    [*recipient_ids, *[p for p in provider_ids if p], pairing.created_by_id or -1]
                )
            )
        )
    }
    addresses = email_addresses(session, [*recipient_ids, pairing.created_by_id or -1])
    if obsolete is None:  # to be sent: the addresses go into headers and the envelope as stored
        for user_id, address in addresses.items():
            try:
                check_address(address)
            except ValueError as error:
                raise ValueError(f"the email address of user {user_id}: {error}") from None
    to = [addresses[u] for u in recipient_ids if u in addresses]
    creator_address = addresses.get(pairing.created_by_id or -1)
    cc = [creator_address] if creator_address and creator_address not in to else []
    account = session.get(Account, pairing.root_account_id)
    # Canvas's names may be NULL: such a person is left out of the list, not printed as "None".
    recipient_names = [one_line(people[u].name) for u in recipient_ids if u in people]
    names = ", ".join(name for name in recipient_names if name) or "the recipient"
    ending = lifecycle.resolve_ending_state(pairing.ending_enrollment_state) or "deleted"
    before = notice.kind == NOTICE_BEFORE_END

    def course_line(enrollment: Enrollment, course: Course) -> str:
        code = one_line(course.course_code)
        code = f" ({code})" if code else ""
        line = f"  - {one_line(course.name)}{code}: {one_line(enrollment.type)}"
        if enrollment.end_at is not None:
            line += f", {'ends' if before else 'until'} {when(enrollment.end_at)}"
        provider = people.get(enrollment.temporary_enrollment_source_user_id or -1)
        if provider is not None:
            line += f", in place of {one_line(provider.name)}"
        if not before:
            line += f" (now {enrollment.workflow_state})"
        return line

    courses = [course_line(enrollment, course) for enrollment, course in listed]
    course_names = ", ".join(
        dict.fromkeys(name for _, course in listed if (name := one_line(course.name)))
    )
    account_name = one_line(account.name) if account else ""
    where = f"{account_name} " if account_name else ""
    if notice.kind == NOTICE_BEFORE_END:
        within = human(dt.timedelta(seconds=notice.threshold_seconds))
        subject = f"Temporary access ends in {within}: {course_names}"
        opening = (
            f"The temporary access of {names} in {where}ends on {when(ends_at)}, "
            f"within {within}. "
            f"These enrollments will then become {ending!r}:"
        )
    else:
        subject = f"Temporary access has ended: {course_names}"
        opening = (
            f"The temporary access of {names} in {where}ended on {when(notice.ends_at)}. "
            "These enrollments are no longer active:"
        )
    creator = people.get(pairing.created_by_id or -1)
    text = "\n".join(
        [
            "Hello,",
            "",
            opening,
            "",
            *courses,
            "",
            f"Temporary enrollment pairing {pairing.id}"
            + (f", created by {one_line(creator.name)}." if creator else "."),
            "You receive this because you are the recipient or created the pairing.",
        ]
    )
    return Composed(to=to, cc=cc, subject=subject, text=text + "\n", obsolete=obsolete)


def message_of(composed: Composed, notice: Notice, mail_from: str) -> EmailMessage:
    """The notice as a message. Addresses go in as `Address` objects, each of which must parse
    whole as one address, and the Subject is made of one-line values (`compose`), so that no
    stored value can end a header or add one; the policy folds and encodes the rest."""
    message = EmailMessage()
    message["From"] = Address(addr_spec=mail_from)
    if composed.to:
        message["To"] = [Address(addr_spec=address) for address in composed.to]
    if composed.cc:
        message["Cc"] = [Address(addr_spec=address) for address in composed.cc]
    message["Subject"] = composed.subject
    message["Message-ID"] = make_msgid(
        idstring=f"tep-notice-{notice.id}", domain=mail_from.rpartition("@")[2]
    )
    message["X-TEP-Notice-Id"] = str(notice.id)
    message["X-TEP-Pairing-Id"] = str(notice.temporary_enrollment_pairing_id)
    message.set_content(composed.text)
    return message


# --------------------------------------------------------------------------------------------
# Sending


@dataclasses.dataclass
class NoticeReport:
    planned: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def lease_pending(
    session: Session, owner: str, now: dt.datetime, limit: int = NOTICES_PER_RUN
) -> list[int]:
    """Take up to `limit` pending notices for this run. The UPDATE re-checks the lease, so of two
    runs racing for one notice, exactly one gets it (PostgreSQL re-evaluates the WHERE after the
    row lock; SQLite runs writers one at a time)."""
    candidates = list(
        session.scalars(
            select(Notice.id)
            .where(
                Notice.workflow_state == NOTICE_PENDING,
                (Notice.next_attempt_at.is_(None)) | (Notice.next_attempt_at <= now),
                (Notice.leased_until.is_(None)) | (Notice.leased_until < now),
            )
            .order_by(Notice.id)
            .limit(limit)
        )
    )
    if not candidates:
        return []
    session.execute(
        update(Notice)
        .where(
            Notice.id.in_(candidates),
            Notice.workflow_state == NOTICE_PENDING,
            (Notice.leased_until.is_(None)) | (Notice.leased_until < now),
        )
        .values(leased_until=now + LEASE, lease_owner=owner)
        .execution_options(synchronize_session=False)
    )
    return list(
        session.scalars(
            select(Notice.id).where(Notice.id.in_(candidates), Notice.lease_owner == owner)
        )
    )


@contextmanager
def smtp_connection(config: SmtpConfig) -> Iterator[smtplib.SMTP]:
    try:
        client: smtplib.SMTP
        if config.implicit_tls:
            client = smtplib.SMTP_SSL(config.host, config.port, timeout=SMTP_TIMEOUT_SECONDS)
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=SMTP_TIMEOUT_SECONDS)
            client.ehlo()
            if client.has_extn("starttls"):
                client.starttls()
                client.ehlo()
        if config.username:
            client.login(config.username, config.password or "")
    except (OSError, smtplib.SMTPException) as error:
        raise SmtpUnavailable(f"{config.host}:{config.port}: {error}") from error
    try:
        yield client
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def send_notices(
    factory: sessionmaker[Session],
    smtp: SmtpConfig,
    mail_from: str,
    *,
    now: dt.datetime | None = None,
    limit: int = NOTICES_PER_RUN,
) -> NoticeReport:
    """Send the pending notices this run can lease. Raises SmtpUnavailable (after giving the
    leases back) when the server cannot be reached, so the task retries."""
    now = now or utcnow()
    report = NoticeReport()
    owner = str(uuid.uuid4())
    with transaction(factory) as session:
        leased = lease_pending(session, owner, now, limit)
    if not leased:
        return report
    remaining = list(leased)
    try:
        with smtp_connection(smtp) as client:
            while remaining:
                notice_id = remaining[0]
                _send_one(factory, client, notice_id, mail_from, now, report)
                remaining.pop(0)
    except (SmtpUnavailable, smtplib.SMTPServerDisconnected, OSError) as error:
        with transaction(factory) as session:
            _give_back(session, remaining, owner, now, str(error))
        if isinstance(error, SmtpUnavailable):
            raise
        raise SmtpUnavailable(str(error)) from error
    return report


def _send_one(
    factory: sessionmaker[Session],
    client: smtplib.SMTP,
    notice_id: int,
    mail_from: str,
    now: dt.datetime,
    report: NoticeReport,
) -> None:
    values: dict[str, Any] = {"leased_until": None, "lease_owner": None, "updated_at": now}
    composed: Composed | None = None
    message: EmailMessage | None = None
    unbuilt: Exception | None = None
    with reader(factory)() as session:
        notice = session.get(Notice, notice_id)
        assert notice is not None
        attempts, pairing_id = notice.attempts, notice.temporary_enrollment_pairing_id
        try:
            composed = compose(session, notice)
            if not composed.obsolete and composed.recipients:
                message = message_of(composed, notice, mail_from)
        except SQLAlchemyError:
            raise  # the database, not this notice: the run stops and the task retries it
        except Exception as error:  # this notice's data: it fails alone, the others are sent
            unbuilt = error
    if composed is not None:
        values.update(subject=composed.subject, recipients=", ".join(composed.recipients))
    if unbuilt is not None:
        _fail(values, attempts + 1, f"cannot build the message: {_reason(unbuilt)}", report)
        log.warning("notice %s for pairing %s not built: %s", notice_id, pairing_id, unbuilt)
    elif composed is not None and composed.obsolete:
        values.update(workflow_state=NOTICE_SKIPPED, last_error=composed.obsolete)
        report.skipped += 1
    elif composed is None or message is None:
        values.update(workflow_state=NOTICE_SKIPPED, last_error="no active email address")
        report.skipped += 1
        log.warning("notice %s for pairing %s: nobody to send it to", notice_id, pairing_id)
    else:
        try:
            client.send_message(message, from_addr=mail_from, to_addrs=composed.recipients)
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPException as error:
            attempts += 1
            values.update(
                attempts=attempts,
                last_error=_reason(error),
                next_attempt_at=now + backoff(attempts),
                workflow_state=NOTICE_FAILED if attempts >= MAX_ATTEMPTS else NOTICE_PENDING,
            )
            report.failed += 1
            log.warning("notice %s not sent: %s", notice_id, error)
        except (ValueError, email.errors.MessageError) as error:  # the message, as written out
            _fail(values, attempts + 1, f"cannot write the message: {_reason(error)}", report)
            log.warning("notice %s for pairing %s not written: %s", notice_id, pairing_id, error)
        else:
            values.update(workflow_state=NOTICE_SENT, sent_at=now, attempts=attempts + 1)
            report.sent += 1
    with transaction(factory) as session:
        session.execute(update(Notice).where(Notice.id == notice_id).values(**values))


def _reason(error: Exception) -> str:
    return f"{error.__class__.__name__}: {error}"[:500]


def _fail(values: dict[str, Any], attempts: int, reason: str, report: NoticeReport) -> None:
    """Give the notice up at once: what is wrong with it would be wrong on every retry."""
    values.update(workflow_state=NOTICE_FAILED, attempts=attempts, last_error=reason[:500])
    report.failed += 1


def _give_back(
    session: Session, notice_ids: Sequence[int], owner: str, now: dt.datetime, error: str
) -> None:
    if not notice_ids:
        return
    session.execute(
        update(Notice)
        .where(Notice.id.in_(notice_ids), Notice.lease_owner == owner)
        .values(
            leased_until=None,
            lease_owner=None,
            attempts=Notice.attempts + 1,
            last_error=error[:500],
            next_attempt_at=now,
            updated_at=now,
        )
    )


def run_notices(
    factory: sessionmaker[Session],
    smtp: SmtpConfig,
    mail_from: str,
    thresholds: Sequence[dt.timedelta],
    *,
    now: dt.datetime | None = None,
) -> NoticeReport:
    """Plan what is due, then send what is pending: what the Celery task does."""
    now = now or utcnow()
    with transaction(factory) as session:
        planned = plan_notices(session, now, thresholds)
    report = send_notices(factory, smtp, mail_from, now=now)
    report.planned = planned
    return report


def pending_notices(session: Session) -> list[Notice]:
    """Notices not (yet) sent: pending ones and those given up on (for `tep status`)."""
    return list(
        session.scalars(
            select(Notice)
            .where(Notice.workflow_state.in_((NOTICE_PENDING, NOTICE_FAILED)))
            .order_by(Notice.id)
        )
    )
