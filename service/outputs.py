"""Where a job's outputs live in the blob store, in one place for the worker that writes
them and the API and reconciler that serve, delete and expire them.

Every attempt writes under its own names (`result-a{n}.{ext}`, `outputs-a{n}/{name}.{ext}`):
a worker presumed dead that wakes up and drops its outputs never deletes the outputs of the
attempt that replaced it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.pipeline import SIDE_OUTPUTS

if TYPE_CHECKING:
    from service.rows import JobView


def result_ext(fmt: str) -> str:
    return fmt.replace("jpeg", "jpg")


def result_key(job_id: str, attempt: int, fmt: str) -> str:
    return f"assets/{job_id}/result-a{attempt}.{result_ext(fmt)}"


def side_output_key(job_id: str, attempt: int, name: str) -> str:
    return f"assets/{job_id}/outputs-a{attempt}/{name}.{SIDE_OUTPUTS[name][0]}"


def side_output_url(job_id: str, name: str) -> str:
    return f"/assets/{job_id}/outputs/{name}"


def job_blob_keys(job: JobView) -> list[str]:
    """Every blob the job may have: its input, the recorded outputs, and what any of its
    attempts may have written before its worker died (deleting a missing blob is a no-op)."""
    keys = [job.input_blob]
    if job.result_blob:
        keys.append(job.result_blob)
    keys += list((job.side_outputs or {}).values())
    fmt = job.options.get("format")
    for attempt in range(1, job.attempts + 1):
        if fmt:
            keys.append(result_key(job.id, attempt, fmt))
        keys += [side_output_key(job.id, attempt, name) for name in SIDE_OUTPUTS]
    return list(dict.fromkeys(keys))
