"""A job's files in the blob store (its input, result and side outputs): their keys, file
extensions and what is recorded of the input, in one place for the API that stores the
input, the worker that writes the outputs, and the API and reconciler that serve, delete
and expire them.

Every attempt writes under its own names (`result-a{n}.{ext}`, `outputs-a{n}/{name}.{ext}`):
a worker presumed dead that wakes up and drops its outputs never deletes the outputs of the
attempt that replaced it. Once a job ends, what its other attempts left (a killed worker's
outputs, a killed write's temp file) is deleted (`discard_leftovers`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from models.pipeline import SIDE_OUTPUTS

if TYPE_CHECKING:
    from models.io import ImageInfo
    from service.blobs import BlobStore
    from service.rows import JobView

log = logging.getLogger("flatlay.outputs")


def file_ext(fmt: str) -> str:
    """The file extension of an image format, an output option (`jpeg`) or a Pillow name
    (`JPEG`) alike."""
    fmt = fmt.lower()
    return "jpg" if fmt == "jpeg" else fmt


def job_prefix(job_id: str) -> str:
    """The folder of keys under which all of a job's blobs live."""
    return f"assets/{job_id}/"


def input_key(job_id: str, fmt: str | None = None) -> str:
    """Where a job's photo lives: `input.<ext>` for an upload of format `fmt`; a bare
    `input` for a manifest item, whose worker fetches its URL into it."""
    return job_prefix(job_id) + "input" + (f".{file_ext(fmt)}" if fmt else "")


def input_meta(info: ImageInfo, **origin: str | None) -> dict[str, Any]:
    """What a job records of its photo: where it came from (`filename` or `source_url`)
    and what it is (the API's InputInfo)."""
    return {**origin, "content_type": info.content_type, "width": info.width,
            "height": info.height, "bytes": info.bytes}


def result_key(job_id: str, attempt: int, fmt: str) -> str:
    return job_prefix(job_id) + f"result-a{attempt}.{file_ext(fmt)}"


def side_output_key(job_id: str, attempt: int, name: str) -> str:
    return job_prefix(job_id) + f"outputs-a{attempt}/{name}.{SIDE_OUTPUTS[name][0]}"


def side_output_url(job_id: str, name: str) -> str:
    return f"/assets/{job_id}/outputs/{name}"


def attempt_output_keys(job: JobView, keep: int | None = None) -> list[str]:
    """The outputs that the job's attempts, but attempt `keep`, may have written (deleting
    a missing blob is a no-op)."""
    keys: list[str] = []
    fmt = job.options.get("format")
    for attempt in range(1, job.attempts + 1):
        if attempt == keep:
            continue
        if fmt:
            keys.append(result_key(job.id, attempt, fmt))
        keys += [side_output_key(job.id, attempt, name) for name in SIDE_OUTPUTS]
    return keys


def job_blob_keys(job: JobView) -> list[str]:
    """Every blob the job may have: its input, the recorded outputs, and what any of its
    attempts may have written before its worker died (deleting a missing blob is a no-op)."""
    keys = [job.input_blob]
    if job.result_blob:
        keys.append(job.result_blob)
    keys += list((job.side_outputs or {}).values())
    keys += attempt_output_keys(job)
    return list(dict.fromkeys(keys))


def delete_job_blobs(blobs: BlobStore, job: JobView) -> None:
    """Delete every blob of the job (DELETE, the retention sweep), temp files included."""
    for blob in job_blob_keys(job):
        blobs.delete(blob)
    blobs.delete_temp_files(job_prefix(job.id))


def discard_leftovers(blobs: BlobStore, job: JobView, keep: int | None = None) -> None:
    """A job has ended (succeeded with attempt `keep`'s outputs, or failed for good: None):
    delete what its other attempts wrote before their workers died, and the temp files of
    writes killed midway, so that only the recorded outputs stay. Best effort: the retention
    sweep and DELETE remove what is left."""
    try:
        for blob in attempt_output_keys(job, keep):
            blobs.delete(blob)
        blobs.delete_temp_files(job_prefix(job.id))
    except Exception as exc:  # a cleanup failure must not change the job's outcome
        log.warning("could not delete the leftovers of job %s: %s", job.id, exc)
