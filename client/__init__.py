"""The Flatlay client: the HTTP API from Python (`Client`) and the catalog runner behind
`flatlay submit` (client.submit). Needs only httpx and the standard library (tqdm for the
command's progress bar); imports nothing of the server.

    from client import Client
    flatlay = Client("http://127.0.0.1:8000", api_key="fl_…")
    png = flatlay.result(flatlay.wait(flatlay.submit("shirt.jpg", preset="amazon-main")))
"""

from client.api import OPTION_NAMES, SIDE_OUTPUTS, Client
from client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    FlatlayError,
    InvalidRequest,
    JobFailed,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    WaitTimeout,
)

__all__ = [
    "OPTION_NAMES",
    "SIDE_OUTPUTS",
    "ApiError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "FlatlayError",
    "InvalidRequest",
    "JobFailed",
    "NotFound",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthorized",
    "WaitTimeout",
]
