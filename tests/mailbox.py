"""A real SMTP server (aiosmtpd) in the test process: the suite's mail outbox, with fault injection."""
from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller


@dataclass
class Received:
    sender: str
    recipients: list[str]
    raw: bytes
    at: float = 0.0  # time.monotonic() when the server took it

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)

    @property
    def to(self) -> str:
        return self.recipients[0]

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body else ""

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")


@dataclass
class Faults:
    """What the server answers: by recipient, a fixed code; or a share of first attempts refused; or, until
    `throttle_until` (time.monotonic()), every MAIL FROM or end of data answered like a provider over its rate."""

    by_recipient: dict[str, str] = field(default_factory=dict)  # address -> "550 5.1.1 no such user"
    refuse_first_attempt: set[str] = field(default_factory=set)  # addresses answered 450 once
    seen: set[str] = field(default_factory=set)
    throttle_until: float = 0.0
    throttle_at: str = "data"  # or "mail"
    throttle_answer: str = "451 4.7.0 Too many messages, slow down"
    throttled: int = 0  # throttling answers given so far
    delay: float = 0.0  # seconds before the answer to the end of data: a distant server
    sessions: int = 0  # EHLOs seen: one a connection
    busy: int = 0  # messages waiting for their delayed answer now
    most_busy: int = 0  # and the most there were at once

    def throttling(self, step: str) -> str | None:
        if step == self.throttle_at and time.monotonic() < self.throttle_until:
            self.throttled += 1
            return self.throttle_answer
        return None

    def answer(self, address: str) -> str | None:
        if address in self.by_recipient:
            return self.by_recipient[address]
        if address in self.refuse_first_attempt and address not in self.seen:
            self.seen.add(address)
            return "450 4.2.1 mailbox busy, try again later"
        return None


class _Handler:
    def __init__(self, box: "Mailbox"):
        self.box = box

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.box.faults.sessions += 1
        if self.box.pipelining:  # aiosmtpd reads pipelined commands in order but does not say so itself
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        refusal = self.box.faults.throttling("mail")
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.box.faults.answer(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        faults = self.box.faults
        if faults.delay:
            faults.busy += 1
            faults.most_busy = max(faults.most_busy, faults.busy)
            await asyncio.sleep(faults.delay)
            faults.busy -= 1
        refusal = self.box.faults.throttling("data")
        if refusal:
            return refusal
        with self.box.lock:
            for recipient in envelope.rcpt_tos:
                self.box.messages.append(Received(envelope.mail_from, [recipient], envelope.content, time.monotonic()))
            self.box.arrived.notify_all()
        return "250 Message accepted"


class Mailbox:
    """Start once per session; `clear()` between tests; `wait_for(n)` blocks until n messages arrived."""

    def __init__(self):
        self.messages: list[Received] = []
        self.faults = Faults()
        self.pipelining = True  # advertised in EHLO; tests of lock-step SMTP turn it off
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.port = _free_port()
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port,
                                     data_size_limit=10 * 1024 * 1024, decode_data=False)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.faults = Faults()
            self.pipelining = True

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} messages, {len(self.messages)} arrived in {timeout}s")
                self.arrived.wait(left)
            return list(self.messages)

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.to == address]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
