"""Real receivers on loopback: a webhook endpoint and an SMTP server, run in background threads."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclasses.dataclass
class Delivery:
    """One POST as the receiver saw it."""

    body: bytes
    headers: dict[str, str]
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def signature_ok(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-tep-signature", ""))


class WebhookReceiver:
    """Records every POST; answers 500 to the first `fail_first` of them, 204 afterwards.

    With `hold`, it answers nothing until `release` is set (a receiver that hangs); `holding` is
    set once a request is being held.
    """

    def __init__(self, fail_first: int = 0, hold: bool = False) -> None:
        self.fail_first = fail_first
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.hold:
                    receiver.holding.set()
                    receiver.release.wait()
                with receiver._lock:
                    status = 500 if len(receiver.deliveries) < receiver.fail_first else 204
                    receiver.deliveries.append(
                        Delivery(body, {k.lower(): v for k, v in self.headers.items()}, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tep"

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.answered < 300]

    def all(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)


@contextmanager
def webhook_receiver(fail_first: int = 0, hold: bool = False) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(fail_first, hold)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()


@dataclasses.dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        assert body is not None
        return str(body.get_content())


class MailBox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.mails.append(
                Mail(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos], message)
            )
        return "250 OK"

    def all(self) -> list[Mail]:
        with self._lock:
            return list(self.mails)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def smtp_server() -> Iterator[tuple[MailBox, str]]:
    """A real SMTP server on loopback; yields its mailbox and an `smtp://host:port` URL."""
    box = MailBox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()
