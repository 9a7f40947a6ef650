"""The embedded broker never hands a consumer a message that is still being written."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from types import ModuleType

import pytest
from kombu import Connection
from kombu.transport import filesystem
from kombu.transport.virtual import Empty

from service import filequeue
from service.settings import Settings

QUEUE = "flatlay.jobs"


def _options(folder: Path) -> dict:
    return {"data_folder_in": str(folder), "data_folder_out": str(folder),
            "control_folder": str(folder / "control"), "store_processed": False}


def _connection(folder: Path, transport: str | None) -> Connection:
    (folder / "control").mkdir(parents=True, exist_ok=True)
    return Connection("filesystem://", transport=transport, transport_options=_options(folder))


def _poll_mid_write(module: ModuleType, folder: Path, transport: str | None,
                    monkeypatch: pytest.MonkeyPatch) -> list:
    """Put one message; while its bytes are being written, let a consumer poll the folder.
    Returns what that poll got (an empty list when it saw nothing)."""
    seen: list = []
    with _connection(folder, transport) as producer, _connection(folder, transport) as consumer:
        consumer_channel = consumer.default_channel

        class Interrupted:
            def __init__(self, f: object) -> None:
                self.f = f

            def write(self, data: bytes) -> int:
                try:
                    seen.append(consumer_channel._get(QUEUE))
                except Empty:
                    pass
                except ValueError as exc:  # an empty file is not JSON: the message is gone
                    seen.append(exc)
                return self.f.write(data)

            def __getattr__(self, name: str) -> object:
                return getattr(self.f, name)

            def __enter__(self) -> Interrupted:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

        monkeypatch.setattr(module, "open", lambda *a, **k: Interrupted(open(*a, **k)),
                            raising=False)
        producer.default_channel._put(QUEUE, {"body": "job"})
        monkeypatch.undo()
        if not seen:
            seen_after = consumer_channel._get(QUEUE)
            assert seen_after == {"body": "job"}
    return seen


def test_stock_file_transport_drops_a_message_read_mid_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shows that the probe reaches the race: kombu's own channel loses the message.
    seen = _poll_mid_write(filesystem, tmp_path, None, monkeypatch)
    assert len(seen) == 1 and isinstance(seen[0], ValueError)
    assert not any(p.name.endswith(".msg") for p in tmp_path.iterdir())


def test_message_appears_only_when_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _poll_mid_write(filequeue, tmp_path, filequeue.TRANSPORT, monkeypatch) == []
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []


def test_embedded_celery_uses_the_whole_message_transport(tmp_path: Path) -> None:
    from service.queue import make_celery

    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    with make_celery(settings).connection_for_write() as conn:
        assert isinstance(conn.transport, filequeue.Transport)


def _produce(folder: Path, n: int) -> None:
    with _connection(folder, filequeue.TRANSPORT) as conn:
        queue = conn.SimpleQueue(QUEUE)
        for i in range(n):
            queue.put({"i": i})


def test_concurrent_producer_and_consumer_lose_nothing(tmp_path: Path) -> None:
    n = 1500
    producer = mp.get_context("spawn").Process(target=_produce, args=(tmp_path, n))
    got: list[int] = []
    with _connection(tmp_path, filequeue.TRANSPORT) as conn:
        queue = conn.SimpleQueue(QUEUE)
        producer.start()
        deadline = time.monotonic() + 120
        while len(got) < n and time.monotonic() < deadline:
            try:
                message = queue.get(block=True, timeout=0.01)
            except queue.Empty:
                continue
            got.append(message.payload["i"])
            message.ack()
    producer.join(30)
    assert sorted(got) == list(range(n))


def _drain(folder: Path, out: mp.Queue) -> None:
    # The channel's own take, without a consumer's prefetch buffer in between.
    got = []
    with _connection(folder, filequeue.TRANSPORT) as conn:
        channel = conn.default_channel
        while True:
            try:
                got.append(channel._get(QUEUE)["i"])
            except Empty:
                break
    out.put(got)


def test_two_consumers_never_get_the_same_message(tmp_path: Path) -> None:
    n = 600
    with _connection(tmp_path, filequeue.TRANSPORT) as conn:
        for i in range(n):
            conn.default_channel._put(QUEUE, {"i": i})
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    consumers = [ctx.Process(target=_drain, args=(tmp_path, out)) for _ in range(2)]
    for c in consumers:
        c.start()
    got = [out.get(timeout=120) for _ in consumers]
    for c in consumers:
        c.join(30)
    assert sorted(got[0] + got[1]) == list(range(n))
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []
