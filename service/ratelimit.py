"""Rate limits per API key: a token bucket, in Redis when the broker is Redis (shared by all
API processes), in this process otherwise (embedded mode has one API process).

A bucket holds up to `burst` tokens and refills at `rate` per second; each request takes one.
An empty bucket answers 429 `rate_limited` with `Retry-After` (whole seconds until a token):
the route dependency that does so is `service.deps.limited_key`. While Redis is unreachable,
`rate_limit_on_error` decides: "deny" raises RateLimiterUnavailable (503
`rate_limiter_unavailable`), "allow" serves the request unlimited. Each outage logs one line
when it starts and one when it ends, and counts in `flatlay_rate_limiter_outages_total`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal, Protocol

from service.metrics import RATE_LIMITER_OUTAGES, RATE_LIMITER_UNCHECKED, RATE_LIMITER_UP
from service.settings import Settings

log = logging.getLogger("flatlay.ratelimit")


# What a denied request's Retry-After says during an outage: a Redis restart takes seconds.
OUTAGE_RETRY_AFTER_S = 5


class RateLimiterUnavailable(Exception):
    """The limiter cannot answer and `rate_limit_on_error` is "deny"."""

    def __init__(self, reason: str, retry_after_s: int = OUTAGE_RETRY_AFTER_S) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class TokenBucket(Protocol):
    def take(self, bucket: str) -> float:
        """Take a token from `bucket`: 0.0 when allowed, else seconds until one is there.
        RateLimiterUnavailable when it cannot tell and must not allow."""


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
    def __init__(self, url: str, rate: float, burst: int,
                 on_error: Literal["allow", "deny"] = "deny") -> None:
        import redis

        self.rate, self.burst, self.on_error = rate, burst, on_error
        self._client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script = self._client.register_script(_TAKE_SCRIPT)
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic start of the current outage
        RATE_LIMITER_UP.labels("redis").set(1)

    def take(self, bucket: str) -> float:
        import redis

        try:
            wait = float(self._script(keys=[f"flatlay:ratelimit:{bucket}"],
                                      args=[self.rate, self.burst]))
        except redis.RedisError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._outage(reason)
            decision = "allowed" if self.on_error == "allow" else "denied"
            RATE_LIMITER_UNCHECKED.labels(decision).inc()
            if self.on_error == "allow":
                return 0.0
            raise RateLimiterUnavailable(reason) from None
        if self._down_since is not None:
            self._recovered()
        return wait

    def _outage(self, reason: str) -> None:
        # One log line per outage, not per request: only the request that finds it starts it.
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        RATE_LIMITER_OUTAGES.labels("redis").inc()
        RATE_LIMITER_UP.labels("redis").set(0)
        log.warning("rate limiter unavailable (%s); until Redis answers, requests are %s "
                    "(FLATLAY_RATE_LIMIT_ON_ERROR=%s)", reason,
                    "served unlimited" if self.on_error == "allow" else "refused with 503",
                    self.on_error)

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is None:
            return  # another request logged it
        RATE_LIMITER_UP.labels("redis").set(1)
        log.info("rate limiter available again after %.1f s", time.monotonic() - since)


def make_token_bucket(settings: Settings) -> TokenBucket | None:
    """None when rate limits are off (`rate_limit_per_s` 0)."""
    if settings.rate_limit_per_s <= 0:
        return None
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        return RedisTokenBucket(settings.resolved_broker_url, settings.rate_limit_per_s,
                                settings.rate_limit_burst, settings.resolved_rate_limit_on_error)
    return LocalTokenBucket(settings.rate_limit_per_s, settings.rate_limit_burst)

