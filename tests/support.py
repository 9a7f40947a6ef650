"""Test support: photos with a known garment mask, and real service processes."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skdata

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]

# A t-shirt outline in a unit square (x, y), y down.
TSHIRT = [
    (0.40, 0.10), (0.45, 0.08), (0.50, 0.13), (0.55, 0.08), (0.60, 0.10),
    (0.78, 0.25), (0.70, 0.35), (0.64, 0.29), (0.64, 0.85), (0.36, 0.85),
    (0.36, 0.29), (0.30, 0.35), (0.22, 0.25),
]


def garment_photo(
    width: int = 640,
    height: int = 480,
    colour: tuple[int, int, int] = (40, 90, 200),
    background: str = "coffee",
    offset: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A striped t-shirt over a real photograph (skimage.data).

    Returns (rgb (H, W, 3) uint8, mask (H, W) bool): the photo and the garment's true mask.
    """
    bg = Image.fromarray(getattr(skdata, background)()).convert("RGB").resize((width, height))
    pts = [((x + offset[0]) * width, (y + offset[1]) * height) for x, y in TSHIRT]
    mask_img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask_img).polygon(pts, fill=255)
    mask = np.asarray(mask_img) > 127
    yy = np.arange(height)[:, None]
    stripes = ((yy // 12) % 2 == 0).repeat(width, axis=1)
    garment = np.where(stripes[..., None], np.array(colour), np.array(colour) * 0.6 + 40)
    rgb = np.where(mask[..., None], garment, np.asarray(bg)).astype(np.uint8)
    return rgb, mask


def encode(rgb: np.ndarray, fmt: str = "JPEG", **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **save)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATLAY_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServiceProcesses:
    """Real `flatlay` processes (serve, or api + worker) started for a test."""

    base_url: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    # Sent as `Authorization: Bearer …` by client(); None with FLATLAY_AUTH_ENABLED=false.
    api_key: str | None = None

    @classmethod
    def start(
        cls, commands: list[list[str]], env: dict[str, str], port: int, log_dir: Path,
        api_key: str | None = None,
    ) -> ServiceProcesses:
        svc = cls(base_url=f"http://127.0.0.1:{port}", api_key=api_key)
        for i, args in enumerate(commands):
            log = log_dir / f"proc-{i}-{args[0]}.log"
            svc.logs.append(log)
            svc.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli", *args],
                    cwd=REPO,
                    env=_python_env(env),
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        svc.wait_ready()
        return svc

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a service process exited early:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"service not ready after {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in self.logs if p.exists())

    def stop(self, timeout: float = 40.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def client(self, api_key: str | None = None) -> httpx.Client:
        key = api_key or self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Drop pooled connections before the server closes them idle (its keep-alive timeout):
        # reusing one the server is closing fails with "Server disconnected" (a test waited on
        # a worker's shutdown longer than that and flaked on its next request).
        idle = Settings.model_fields["keep_alive_timeout_s"].default / 2
        return httpx.Client(base_url=self.base_url, timeout=30, headers=headers,
                            limits=httpx.Limits(keepalive_expiry=idle))


def create_key(env: dict[str, str], tenant: str, *args: str) -> str:
    """A new API key from the real `flatlay keys create` (the key is its last output line)."""
    return keys_create_output(env, tenant, *args).strip().splitlines()[-1]


def keys_create_output(env: dict[str, str], tenant: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--tenant", tenant, *args],
        cwd=REPO, env=_python_env(env), capture_output=True, text=True, timeout=120, check=True,
    ).stdout


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/assets/{job_id}").json()
        if status["status"] in ("succeeded", "failed", "canceled"):
            return status
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished after {timeout} s: {status}")


def stored_delivery(tmp_path: Path, url: str, **settings: object):  # noqa: ANN201
    """(store, settings, delivery id): one pending webhook delivery to `url` in a fresh job
    store, signed with the local secret; `settings` override the Settings fields."""
    from service.settings import Settings
    from service.store import JobStore, migrate

    s = Settings(data_dir=tmp_path / "d", local_webhook_secret=WEBHOOK_TEST_SECRET,
                 **settings)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    store = JobStore(s.resolved_database_url)
    delivery = store.add_delivery(delivery_id="msg_test", tenant_id="local", key_id=None,
                                  event="asset.succeeded", url=url, payload={"type": "x"})
    return store, s, delivery.id


# The Standard Webhooks documentation's example secret.
WEBHOOK_TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
