"""API keys and tenants: who is calling, and which tenant's assets they may see.

A key is `fl_` + 43 URL-safe characters (256 random bits); the store keeps only its SHA-256
and its visible prefix (`fl_` + 8 characters) for listing and revoking. Each key belongs to
one tenant; every asset, batch and webhook delivery carries its tenant, and a lookup by
another tenant answers 404, as if it did not exist.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.context import ServiceContext, get_context
from service.errors import ApiError
from service.rows import ApiKeyView
from service.store import JobStore, new_job_id

KEY_PREFIX = "fl_"
VISIBLE_CHARS = len(KEY_PREFIX) + 8
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The tenant of everything done with authentication off (the local demo on loopback).
LOCAL_TENANT = "local"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once, never stored
    view: ApiKeyView


def create_key(
    store: JobStore, tenant_id: str, name: str | None = None, webhook_url: str | None = None
) -> NewKey:
    if not TENANT_PATTERN.fullmatch(tenant_id):
        raise ValueError(
            f"tenant {tenant_id!r} is not 1–64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    view = store.create_api_key(
        key_id=new_job_id(), prefix=key[:VISIBLE_CHARS], key_hash=hash_key(key),
        tenant_id=tenant_id, name=name, webhook_url=webhook_url,
        webhook_secret=new_webhook_secret(),
    )
    return NewKey(key=key, view=view)


@dataclass(frozen=True)
class Principal:
    """The caller: a tenant, and the key it used (None with authentication off)."""

    tenant_id: str
    key_id: str | None
    webhook_url: str | None = None
    webhook_secret: str | None = None

    @property
    def bucket(self) -> str:
        """What rate limits count against."""
        return self.key_id or f"tenant:{self.tenant_id}"


LOCAL_PRINCIPAL = Principal(tenant_id=LOCAL_TENANT, key_id=None)

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `flatlay keys create --tenant T`, as `Bearer fl_…`.",
)


def _unauthorized(message: str) -> ApiError:
    return ApiError("unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def current_key(
    ctx: Annotated[ServiceContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller of this request; 401 `unauthorized` without a live key."""
    if not ctx.settings.auth_enabled:
        return LOCAL_PRINCIPAL
    if credentials is None:
        raise _unauthorized("this route needs an API key: send 'Authorization: Bearer fl_…'")
    token = credentials.credentials.strip()
    view = ctx.store.api_key_by_hash(hash_key(token)) if token.startswith(KEY_PREFIX) else None
    if view is None:
        raise _unauthorized("the API key is unknown or revoked")
    return Principal(tenant_id=view.tenant_id, key_id=view.id, webhook_url=view.webhook_url,
                     webhook_secret=view.webhook_secret)
