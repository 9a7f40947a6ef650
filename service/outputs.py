"""A job's files in the blob store (its input, result and side outputs): their keys, file
extensions and what is recorded of the input, in one place for the API that stores the
input, the worker that writes the outputs, and the API and reconciler that serve, delete
and expire them.

Every attempt writes under its own names (`result-a{n}.{ext}`, `outputs-a{n}/{name}.{ext}`):
a worker presumed dead that wakes up and drops its outputs never deletes the outputs of the
attempt that replaced it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.pipeline import SIDE_OUTPUTS

if TYPE_CHECKING:
    from models.io import ImageInfo
    from service.rows import JobView


def file_ext(fmt: str) -> str:
    """The file extension of an image format, an output option (`jpeg`) or a Pillow name
    (`JPEG`) alike."""
    fmt = fmt.lower()
    return "jpg" if fmt == "jpeg" else fmt


def input_key(job_id: str, fmt: str | None = None) -> str:
    """Where a job's photo lives: `input.<ext>` for an upload of format `fmt`; a bare
    `input` for a manifest item, whose worker fetches its URL into it."""
    return f"assets/{job_id}/input" + (f".{file_ext(fmt)}" if fmt else "")


def input_meta(info: ImageInfo, **origin: str | None) -> dict[str, Any]:
    """What a job records of its photo: where it came from (`filename` or `source_url`)
    and what it is (the API's InputInfo)."""
    return {**origin, "content_type": info.content_type, "width": info.width,
            "height": info.height, "bytes": info.bytes}


def result_key(job_id: str, attempt: int, fmt: str) -> str:
    return f"assets/{job_id}/result-a{attempt}.{file_ext(fmt)}"


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
