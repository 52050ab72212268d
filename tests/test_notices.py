"""Pre-expiry and "access has ended" notices, received by a real SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import (
    Account,
    CommunicationChannel,
    Course,
    Enrollment,
    Notice,
    TemporaryEnrollmentPairing,
    User,
    utcnow,
)
from tasks import lifecycle, notices
from tests import factories as f
from tests.receivers import free_port, smtp_server
from worker.notify_settings import parse_smtp_url, parse_thresholds

THRESHOLDS = parse_thresholds("3d,1d")
MAIL_FROM = "tep@school.example"
DAY = dt.timedelta(days=1)


def with_email(session: Session, user: User, address: str) -> User:
    session.add(CommunicationChannel(user_id=user.id, path=address, path_type="email"))
    session.flush()
    return user


def pairing_with_people(
    session: Session, root: Account, end_ats: list[dt.datetime], n: int = 0
) -> TemporaryEnrollmentPairing:
    """A pairing whose recipient and creator have email addresses (numbered by `n`)."""
    creator = with_email(session, f.user(session, root, name="Ada Admin"), f"ada{n}@school.example")
    pairing, enrollments = f.temporary_pairing(session, root, end_ats, ending_state="completed")
    pairing.created_by_id = creator.id
    recipient = session.get(User, enrollments[0].user_id)
    assert recipient is not None
    recipient.name = "Sam Substitute"
    with_email(session, recipient, f"sam{n}@school.example")
    session.flush()
    return pairing


def run(factory: sessionmaker[Session], url: str, now: dt.datetime) -> notices.NoticeReport:
    return notices.run_notices(factory, parse_smtp_url(url), MAIL_FROM, THRESHOLDS, now=now)


def test_pre_expiry_notices_reach_recipient_and_creator_once_per_threshold(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    pairing = pairing_with_people(
        session, root, [now + 2 * DAY, now + 2 * DAY + dt.timedelta(hours=1)]
    )
    far = pairing_with_people(session, root, [now + 10 * DAY], n=1)  # no notice yet
    session.commit()

    with smtp_server() as (box, url):
        first = run(factory, url, now)
        again = run(factory, url, now + dt.timedelta(hours=1))
        assert len(box.all()) == 1
        one_day = run(factory, url, now + dt.timedelta(days=1, hours=12))
        run(factory, url, now + dt.timedelta(days=1, hours=13))
        mails = box.all()

    assert (first.planned, first.sent, again.planned, again.sent) == (1, 1, 0, 0)
    assert one_day.sent == 1
    assert len(mails) == 2
    three_days, day = mails
    assert sorted(three_days.rcpt_tos) == ["ada0@school.example", "sam0@school.example"]
    assert three_days.message["To"] == "sam0@school.example"
    assert three_days.message["Cc"] == "ada0@school.example"
    assert three_days.mail_from == MAIL_FROM
    assert three_days.message["Subject"].startswith("Temporary access ends in 3 days")
    assert three_days.message["X-TEP-Pairing-Id"] == str(pairing.id)
    text = three_days.text
    assert "Sam Substitute" in text and "'completed'" in text and "Ada Admin" in text
    # One message for the pairing, listing each of its courses.
    courses = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(courses) == 2
    assert day.message["Subject"].startswith("Temporary access ends in 1 day")
    session.commit()
    planned = session.scalars(select(Notice.temporary_enrollment_pairing_id)).all()
    assert far.id not in planned


def test_overlapping_runs_send_each_notice_once(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    pairings = [pairing_with_people(session, root, [now + DAY / 2], n=i) for i in range(6)]
    session.commit()
    start = threading.Barrier(3)
    reports: list[notices.NoticeReport] = []
    errors: list[BaseException] = []

    with smtp_server() as (box, url):

        def one_run() -> None:
            try:
                start.wait()
                reports.append(run(factory, url, now))
            except BaseException as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=one_run) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        mails = box.all()

    assert errors == []
    assert sum(r.sent for r in reports) == 6
    assert sorted(int(m.message["X-TEP-Pairing-Id"]) for m in mails) == sorted(
        p.id for p in pairings
    )
    # Ending within half a day: only the nearest threshold (1 day), not a late 3-day notice too.
    assert all(m.message["Subject"].startswith("Temporary access ends in 1 day") for m in mails)


def test_access_has_ended_notice_after_the_sweep_and_after_a_deletion(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    expired = pairing_with_people(session, root, [now - DAY])
    deleted = pairing_with_people(session, root, [now + 30 * DAY], n=1)
    session.commit()
    lifecycle.run_sweep(factory, as_of=now)
    with factory.begin() as writer:
        lifecycle.end_pairing(writer, deleted.id, as_of=now, delete=True)

    with smtp_server() as (box, url):
        report = run(factory, url, utcnow())
        run(factory, url, utcnow())
        mails = box.all()

    assert report.sent == 2 and len(mails) == 2
    by_pairing = {int(m.message["X-TEP-Pairing-Id"]): m for m in mails}
    assert set(by_pairing) == {expired.id, deleted.id}
    ended = by_pairing[expired.id]
    assert ended.message["Subject"].startswith("Temporary access has ended")
    assert "no longer active" in ended.text
    assert sorted(ended.rcpt_tos) == ["ada0@school.example", "sam0@school.example"]


def test_a_pairing_nobody_can_be_told_about_is_skipped_and_recorded(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    pairing, _ = f.temporary_pairing(session, root, [now + DAY / 2])  # no email channels
    session.commit()
    with smtp_server() as (box, url):
        report = run(factory, url, now)
        assert box.all() == []
    assert report.skipped == 1
    session.commit()
    notice = session.scalars(select(Notice)).one()
    assert (notice.temporary_enrollment_pairing_id, notice.workflow_state) == (
        pairing.id,
        "skipped",
    )
    assert notice.last_error == "no active email address"


def test_an_unreachable_smtp_server_keeps_the_notice_for_the_retry(
    factory: sessionmaker[Session], session: Session
) -> None:
    now = utcnow()
    root = f.account(session)
    pairing_with_people(session, root, [now + DAY / 2])
    session.commit()
    closed = f"smtp://127.0.0.1:{free_port()}"

    with pytest.raises(notices.SmtpUnavailable):
        run(factory, closed, now)
    session.commit()
    notice = session.scalars(select(Notice)).one()
    assert notice.workflow_state == "pending" and notice.attempts == 1
    assert notice.lease_owner is None and notice.last_error

    with smtp_server() as (box, url):
        report = run(factory, url, now)
        assert len(box.all()) == 1
    assert report.sent == 1


def test_durations_read_as_people_write_them() -> None:
    assert notices.human(dt.timedelta(days=3)) == "3 days"
    assert notices.human(dt.timedelta(days=1)) == "1 day"
    assert notices.human(dt.timedelta(hours=12)) == "12 hours"
    assert notices.human(dt.timedelta(weeks=1)) == "1 week"
    assert parse_thresholds("1d, 3d,1d") == (dt.timedelta(days=3), dt.timedelta(days=1))


@pytest.mark.parametrize("delete", [True, False], ids=["deleted", "ended"])
def test_a_warning_for_a_pairing_that_ended_meanwhile_is_not_sent(
    factory: sessionmaker[Session], session: Session, delete: bool
) -> None:
    """Deleted (Canvas's row says so) or ended early (only tep's pairing end says so: Canvas's
    row stays `active`), the warning is obsolete and says which."""
    now = utcnow()
    root = f.account(session)
    pairing = pairing_with_people(session, root, [now + DAY / 2])
    session.commit()
    with factory.begin() as writer:
        notices.plan_notices(writer, now, THRESHOLDS)
        lifecycle.end_pairing(writer, pairing.id, as_of=now, delete=delete)

    with smtp_server() as (box, url):
        report = notices.send_notices(factory, parse_smtp_url(url), MAIL_FROM, now=now)
        assert box.all() == []
    assert report.skipped == 1
    session.commit()
    notice = session.scalars(select(Notice)).one()
    shown = "deleted" if delete else "ended"
    assert (notice.workflow_state, notice.last_error) == (
        "skipped",
        f"pairing is {shown} with nothing left to end",
    )


# Each kind of line break, and control characters (not NUL: PostgreSQL stores no NUL in text),
# in the stored values a notice shows.
HOSTILE_BREAKS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1b"]


def test_stored_values_are_shown_on_one_line() -> None:
    assert notices.one_line("Bio\x00logy\r\n  101\u2028A\x85B\tC") == "Bio logy 101 A B C"
    assert notices.one_line(None) == "" and notices.one_line(" \n ") == ""


@pytest.mark.parametrize("brk", HOSTILE_BREAKS, ids=[repr(b) for b in HOSTILE_BREAKS])
def test_a_line_break_in_a_stored_name_cannot_add_a_header(
    factory: sessionmaker[Session], session: Session, brk: str
) -> None:
    """Course, account and people's names come from Canvas's tables: whatever they hold, the
    notice is sent, with the headers tep writes and no other."""
    now = utcnow()
    root = f.account(session, name=f"North{brk}X-Injected-Account: 1")
    pairing = pairing_with_people(session, root, [now + DAY / 2])
    enrollment = session.scalars(
        select(Enrollment).where(Enrollment.temporary_enrollment_pairing_id == pairing.id)
    ).one()
    course = session.get(Course, enrollment.course_id)
    assert course is not None
    course.name = f"Biology{brk}Bcc: evil@attacker.example{brk}{brk}X-Injected-Course: 1"
    course.course_code = f"BIO{brk}X-Injected-Code: 1"
    recipient = session.get(User, enrollment.user_id)
    assert recipient is not None
    recipient.name = f"Sam{brk}X-Injected-Name: 1"
    session.commit()

    with smtp_server() as (box, url):
        report = run(factory, url, now)
        mails = box.all()

    assert (report.sent, report.failed) == (1, 0)
    (mail,) = mails
    assert sorted(mail.rcpt_tos) == ["ada0@school.example", "sam0@school.example"]
    assert not [name for name in mail.message if name.lower().startswith(("x-injected", "bcc"))]
    assert set(mail.message.keys()) == {
        "From", "To", "Cc", "Subject", "Message-ID", "X-TEP-Notice-Id", "X-TEP-Pairing-Id",
        "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
    }  # fmt: skip
    subject = str(mail.message["Subject"])
    assert subject == (
        "Temporary access ends in 1 day: Biology Bcc: evil@attacker.example X-Injected-Course: 1"
    )
    # In the text too, each value stays on its line.
    assert not [line for line in mail.text.splitlines() if line.startswith("X-Injected")]
    assert (
        "  - Biology Bcc: evil@attacker.example X-Injected-Course: 1 (BIO X-Injected-Code: 1)"
        in (mail.text)
    )
    session.expire_all()
    notice = session.scalars(select(Notice)).one()
    assert notice.workflow_state == "sent" and notice.subject == subject


@pytest.mark.parametrize(
    "address",
    [
        "sam@school.example\n",
        "sam@school.example\r\nBcc: evil@attacker.example",
        "sam@school.example,evil@attacker.example",
        "Sam <sam@school.example>",
        "sam@school.example\u2028",
    ],
)
def test_a_notice_that_cannot_be_built_fails_alone(
    factory: sessionmaker[Session], session: Session, address: str
) -> None:
    now = utcnow()
    root = f.account(session)
    broken = pairing_with_people(session, root, [now + DAY / 2], n=0)
    fine = pairing_with_people(session, root, [now + DAY / 2], n=1)
    channel = session.scalars(
        select(CommunicationChannel).where(CommunicationChannel.path == "sam0@school.example")
    ).one()
    channel.path = address
    session.commit()

    with smtp_server() as (box, url):
        report = run(factory, url, now)
        again = run(factory, url, now + dt.timedelta(hours=1))
        mails = box.all()

    assert (report.sent, report.failed, again.sent, again.failed) == (1, 1, 0, 0)
    assert [int(m.message["X-TEP-Pairing-Id"]) for m in mails] == [fine.id]
    session.expire_all()
    by_pairing = {n.temporary_enrollment_pairing_id: n for n in session.scalars(select(Notice))}
    failed = by_pairing[broken.id]
    assert failed.workflow_state == "failed" and failed.attempts == 1
    assert failed.lease_owner is None
    assert failed.last_error is not None
    assert failed.last_error.startswith("cannot build the message: ValueError: the email address")
    assert f"of user {channel.user_id}: " in failed.last_error
    assert "is not an email address" in failed.last_error
    assert by_pairing[fine.id].workflow_state == "sent"
