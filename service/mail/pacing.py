"""A send rate shared by every worker: SEND_RATE messages a second (SES, Mailgun, Postmark and Gmail answer
4xx past their rate), unset for no limit.

Each message reserves the next free slot of the rate and waits for it. With REDIS_URL set the slots come from
one key in Redis, so workers on every machine share the rate; without it (the single-machine default) each
process paces itself. Senders that fall behind (a busy CPU, a batch changing hands) may catch up on at most
CATCH_UP seconds of slots at once, so the rate holds over a long run; no more is saved up while idle. A
reservation is never given back: a message that is then not sent only leaves a gap.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    import redis

# The rate limiting libraries for Redis count requests in windows and answer allowed/refused; a sender wants
# the wait until its turn, so the slot scheme (GCRA, one key holding the next free slot) is written here:
# a dozen lines of Lua, run atomically by Redis with its own clock so the workers' clocks do not matter.
_RESERVE = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now_us - tonumber(ARGV[2]) then slot = now_us - tonumber(ARGV[2]) end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], slot + interval, 'PX', math.max(0, math.floor((slot - now_us + interval) / 1000)) + 60000)
return slot - now_us
"""
CATCH_UP = 0.5  # seconds
_clients: dict[str, "redis.Redis"] = {}
_local: dict[float, "LocalPacer"] = {}
_local_lock = threading.Lock()


def for_app() -> "RedisPacer | LocalPacer | None":
    """The pacer of this installation's SEND_RATE, or None when the rate is unlimited."""
    config = current_app.config
    rate = config.get("SEND_RATE")
    if not rate:
        return None
    if config.get("REDIS_URL"):
        return RedisPacer(config["REDIS_URL"], f"keepreading:{config['CELERY_QUEUE']}:send-rate", rate)
    with _local_lock:
        return _local.setdefault(rate, LocalPacer(rate))


class RedisPacer:
    def __init__(self, url: str, key: str, rate: float, catch_up: float = CATCH_UP):
        if url not in _clients:
            import redis

            _clients[url] = redis.Redis.from_url(url)
        self.script = _clients[url].register_script(_RESERVE)
        self.key = key
        self.interval_us = max(1, round(1_000_000 / rate))
        self.catch_up_us = round(catch_up * 1_000_000)

    def reserve(self) -> float:
        """Seconds until this message's slot (0: now)."""
        return max(0, int(self.script(keys=[self.key], args=[self.interval_us, self.catch_up_us]))) / 1_000_000

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)


class LocalPacer:
    """The same slots kept in this process, for an installation without Redis."""

    def __init__(self, rate: float, catch_up: float = CATCH_UP):
        self.interval = 1 / rate
        self.catch_up = catch_up
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def reserve(self) -> float:
        with self.lock:
            now = time.monotonic()
            slot = max(self.next_slot, now - self.catch_up)
            self.next_slot = slot + self.interval
            return max(0.0, slot - now)

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)
