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
    """What the server answers: by recipient, a fixed code; or a share of first attempts refused."""

    by_recipient: dict[str, str] = field(default_factory=dict)  # address -> "550 5.1.1 no such user"
    refuse_first_attempt: set[str] = field(default_factory=set)  # addresses answered 421 once
    data_delay: float = 0.0  # seconds before each end-of-data answer (a slow server)
    seen: set[str] = field(default_factory=set)

    def answer(self, address: str) -> str | None:
        if address in self.by_recipient:
            return self.by_recipient[address]
        if address in self.refuse_first_attempt and address not in self.seen:
            self.seen.add(address)
            return "421 4.7.0 try again later"
        return None


class _Handler:
    def __init__(self, box: "Mailbox"):
        self.box = box

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.box.pipelining:  # aiosmtpd reads pipelined commands in order but does not say so itself
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.box.faults.answer(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.box.faults.data_delay:
            await asyncio.sleep(self.box.faults.data_delay)
        with self.box.lock:
            for recipient in envelope.rcpt_tos:
                self.box.messages.append(Received(envelope.mail_from, [recipient], envelope.content))
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
