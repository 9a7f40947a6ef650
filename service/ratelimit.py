"""Rate limits per API key: a token bucket, in Redis when the broker is Redis (shared by all
API processes), in this process otherwise (embedded mode has one API process).

A bucket holds up to `burst` tokens and refills at `rate` per second; each request takes one.
An empty bucket answers 429 `rate_limited` with `Retry-After` (whole seconds until a token):
the route dependency that does so is `service.deps.limited_key`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from service.settings import Settings

log = logging.getLogger("flatlay.ratelimit")


class TokenBucket(Protocol):
    def take(self, bucket: str) -> float:
        """Take a token from `bucket`: 0.0 when allowed, else seconds until one is there."""


class LocalTokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # bucket → (tokens, at)
        self._lock = threading.Lock()

    def take(self, bucket: str) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(bucket, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[bucket] = (tokens, now)
        return wait


# Atomic in Redis: refill by elapsed server time, take one token or say how long to wait.
_TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or burst
local at = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisTokenBucket:
    def __init__(self, url: str, rate: float, burst: int) -> None:
        import redis

        self.rate, self.burst = rate, burst
        self._client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script = self._client.register_script(_TAKE_SCRIPT)

    def take(self, bucket: str) -> float:
        import redis

        try:
            return float(self._script(keys=[f"flatlay:ratelimit:{bucket}"],
                                      args=[self.rate, self.burst]))
        except redis.RedisError as exc:
            # Redis down: serve rather than refuse everyone (the job store is the truth).
            log.warning("rate limiter unavailable, request allowed: %s", exc)
            return 0.0


def make_token_bucket(settings: Settings) -> TokenBucket | None:
    """None when rate limits are off (`rate_limit_per_s` 0)."""
    if settings.rate_limit_per_s <= 0:
        return None
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        return RedisTokenBucket(settings.resolved_broker_url, settings.rate_limit_per_s,
                                settings.rate_limit_burst)
    return LocalTokenBucket(settings.rate_limit_per_s, settings.rate_limit_burst)

