"""Pydantic schemas of the HTTP API (separate from the storage models in `store`)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
OutputFormat = Literal["png", "jpeg", "webp"]


class AssetLinks(BaseModel):
    self: str
    result: str


class AssetCreated(BaseModel):
    id: str
    status: JobStatus
    created_at: dt.datetime
    links: AssetLinks


class AssetOptions(BaseModel):
    output_size: int = Field(ge=256, le=2048)
    background: str
    format: OutputFormat
    seed: int | None = None


class Progress(BaseModel):
    stage: str | None = Field(description="current stage (stage names of the pipeline)")
    percent: int = Field(ge=0, le=100)


class JobError(BaseModel):
    code: str
    message: str


class InputInfo(BaseModel):
    filename: str | None
    content_type: str
    width: int
    height: int
    bytes: int


class AssetStatus(BaseModel):
    id: str
    status: JobStatus
    pipeline: str
    options: AssetOptions
    progress: Progress
    timings: dict[str, float] = Field(description="seconds per stage")
    error: JobError | None = None
    input: InputInfo
    attempts: int
    expired_at: dt.datetime | None = Field(
        default=None, description="when the retention period removed its input and result")
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    links: AssetLinks


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class PipelineList(BaseModel):
    default: str
    pipelines: list[str]
