"""A send rate shared by every worker: SEND_RATE messages a second (SES, Mailgun, Postmark and Gmail answer
4xx past their rate), unset for no limit.

Each message reserves the next free slot of the rate and waits for it. With REDIS_URL set the slots come from
one key in Redis, so workers on every machine share the rate; without it (the single-machine default) each
process paces itself. The slots are strict (no burst saved up while idle), so a run holds the rate from its
first message. A reservation is never given back: a message that is then not sent only leaves a gap.
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
if slot < now_us then slot = now_us end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], slot + interval, 'PX', math.floor((slot - now_us + interval) / 1000) + 60000)
return slot - now_us
"""
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
    def __init__(self, url: str, key: str, rate: float):
        if url not in _clients:
            import redis

            _clients[url] = redis.Redis.from_url(url)
        self.script = _clients[url].register_script(_RESERVE)
        self.key = key
        self.interval_us = max(1, round(1_000_000 / rate))

    def reserve(self) -> float:
        """Seconds until this message's slot (0: now)."""
        return max(0, int(self.script(keys=[self.key], args=[self.interval_us]))) / 1_000_000

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)


class LocalPacer:
    """The same slots kept in this process, for an installation without Redis."""

    def __init__(self, rate: float):
        self.interval = 1 / rate
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def reserve(self) -> float:
        with self.lock:
            now = time.monotonic()
            slot = max(self.next_slot, now)
            self.next_slot = slot + self.interval
            return slot - now

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)
