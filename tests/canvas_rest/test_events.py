"""Beside a hosted Canvas, webhooks and notices work as everywhere else, from tep's mirror: a
real sync from the test Canvas, the sweep, Canvas's confirmations, then the webhook events and
the "access has ended" mail, addressed from the e-mail channels the sync mirrored."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from models import utcnow
from tasks import lifecycle, notices, webhooks
from tasks.canvas_rest import commands, sync
from tasks.canvas_rest.client import CanvasClient
from tasks.events import ENROLLMENT_EXPIRED, PAIRING_ENDED
from tests.canvas_rest.conftest import TestCanvas
from tests.canvas_rest.test_commands import make_scene
from tests.receivers import smtp_server, webhook_receiver
from worker.notify_settings import parse_smtp_url

HOUR = dt.timedelta(hours=1)
SECRET = "hosted-canvas-webhook-secret"


def test_events_and_notices_come_from_the_mirror(
    canvas: TestCanvas, mirror_factory: sessionmaker[Session], client: CanvasClient
) -> None:
    scene = make_scene(canvas, ("completed",))
    synced = sync.sync_canvas(mirror_factory, client, account_ids=[canvas.account_id])
    assert synced.total("enrollments").new == len(scene.all_enrollments)
    later = utcnow() + 2 * HOUR  # after the Canvas's end_at (an hour from now)
    lifecycle.run_sweep(mirror_factory, as_of=later)
    # Decided, not yet confirmed: the expiries are events now; the pairing's end is not yet.
    with webhook_receiver() as receiver:
        webhooks.deliver_webhooks(mirror_factory, [receiver.url], SECRET)
        before = [d.event["type"] for d in receiver.accepted()]
    assert before.count(ENROLLMENT_EXPIRED) == len(scene.all_enrollments)
    assert PAIRING_ENDED not in before

    delivered = commands.deliver_commands(mirror_factory, client, worker_id="w")
    assert delivered.pairings_ended == 1
    with webhook_receiver() as receiver:
        webhooks.deliver_webhooks(mirror_factory, [receiver.url], SECRET)
        ended = [d.event for d in receiver.accepted() if d.event["type"] == PAIRING_ENDED]
        assert all(d.signature_ok(SECRET) for d in receiver.accepted())
    assert len(ended) == 1

    with smtp_server() as (box, url):
        notices.run_notices(mirror_factory, parse_smtp_url(url), "tep@localhost", ())
    # The recipient's address came from Canvas (the sync's `include[]=email`).
    assert any("sam@example.edu" in mail.rcpt_tos for mail in box.mails), [
        mail.rcpt_tos for mail in box.mails
    ]
