"""Pydantic schemas of the HTTP API (separate from the storage models in `store`)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.attributes import CLOSURES, PATTERNS
from models.pipeline import MAX_SIZE, MIN_SIZE

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
    preset: str = Field(default="square-white", description="the output preset")
    output_size: int = Field(ge=MIN_SIZE, le=MAX_SIZE)
    background: str
    format: OutputFormat
    seed: int | None = None
    structure: dict[str, Any] | None = Field(
        default=None, description="the structure the request gave ({category, landmarks})")
    steps: int | None = Field(default=None, description="sampling steps the request gave "
                              "(generative pipelines; null: the generator's default)")
    hint: str | None = Field(default=None, description="the text hint the request gave "
                             "(whitespace collapsed); what it did is in `attributes.hint`")


class ComplianceCheck(BaseModel):
    name: str = Field(description="size, format, background_purity, background_colour, "
                      "background_transparent or fill_ratio")
    value: Any = Field(description="what the delivered image has")
    required: Any = Field(description="what the preset requires")
    passed: bool


class Compliance(BaseModel):
    """The delivered bytes, decoded, checked against the job's preset."""

    preset: str
    passed: bool = Field(description="every check passed")
    checks: list[ComplianceCheck]


class CategoryAttribute(BaseModel):
    value: str = Field(description="the garment category (`GET /structures` lists them); "
                       "Google Merchant Center's `product_type`")
    confidence: float | None = Field(
        ge=0, le=1, description="the pipeline's probability of this category; null where "
        "the request gave the structure or the pipeline does not say")


class ColorAttribute(BaseModel):
    name: str = Field(description="the nearest (CIEDE2000) of 38 retail colour names "
                      "(models/attributes.py COLOR_NAMES): what Merchant Center's `color` "
                      "takes")
    hex: str = Field(pattern=r"^#[0-9a-f]{6}$",
                     description="the cluster's mean colour, sRGB #rrggbb")
    share: float = Field(ge=0, le=1, description="share of the garment's pixels")


class HintOutcome(BaseModel):
    """What the request's `hint` did to the category decision (models/hints.py)."""

    text: str = Field(description="the hint as used (whitespace collapsed)")
    category: str | None = Field(default=None, description="the category the hint points to")
    confidence: float | None = Field(default=None, description="the hint's belief in it (0–1)")
    photo_category: str | None = Field(default=None,
                                       description="the category the photo alone points to")
    photo_confidence: float | None = None
    decided: str | None = Field(default=None, description="the category delivered")
    won: str = Field(description="both (they agree), hint, photo, or structure (the "
                     "request's structure decided and the hint was not used)")
    ignored: list[str] = Field(default_factory=list,
                               description="the hint's words the text tower was not trained "
                               "on, left out (a hint of such words alone: the photo decides)")
    why: str = Field(description="one sentence for a person")


class Attributes(BaseModel):
    """Catalog attributes of the delivered garment, read from the structure the pipeline
    fused and from the delivered pixels (models/attributes.py). A field is null where it
    does not apply (no `length` for a top), the structure cannot tell (no `neckline` for
    a jacket) or the pipeline names no category (`cutout` without parser weights)."""

    category: CategoryAttribute | None = None
    sleeve_length: str | None = Field(
        default=None, description="tops and dresses: none, cap, short, elbow, "
        "three-quarter or long")
    length: str | None = Field(
        default=None, description="skirts and dresses: mini, knee, midi or maxi; trousers, "
        "jeans and shorts: shorts, cropped or full")
    neckline: str | None = Field(
        default=None, description="crew, scoop, v, turtleneck (t-shirts, long-sleeve tops, "
        "sweaters, tank tops, dresses), collar (shirts) or hood (hoodies)")
    pattern: str | None = Field(
        default=None, description="the garment's pattern, read from its pixels (the photo's "
        "own texture where the generator re-draws the garment): "
        f"{', '.join(PATTERNS[:-1])} or {PATTERNS[-1]} (Merchant Center's `pattern`)")
    closure: str | None = Field(
        default=None, description="how the garment closes (the feeds' closure type): "
        f"{', '.join(CLOSURES[:-1])} or {CLOSURES[-1]}; the category's own where it has one "
        "(a shirt buttons), else read from the photo's own texture between the category's "
        "choices")
    colors: list[ColorAttribute] = Field(
        default_factory=list, description="up to 3 dominant colours of the delivered "
        "garment, clustered in CIELAB, largest share first")
    hint: HintOutcome | None = Field(
        default=None, description="where the request had a `hint`: whether it or the photo "
        "decided the category, and why")


def review_suggested(attributes: dict[str, Any] | None, below: float) -> bool | None:
    """Whether a person should look at the asset before it is published: its category
    confidence is below `below` (Settings.review_confidence). None where no confidence is
    known (not succeeded, a given structure, a pipeline without one)."""
    confidence = ((attributes or {}).get("category") or {}).get("confidence")
    return None if confidence is None else bool(confidence < below)


class Progress(BaseModel):
    stage: str | None = Field(description="current stage (stage names of the pipeline); "
                              "for an asset canceled while running, the stage it stopped "
                              "before; `retrying` while a failed attempt waits to be re-run")
    percent: int = Field(ge=0, le=100)


class JobError(BaseModel):
    code: str
    message: str


class InputInfo(BaseModel):
    """What was uploaded; for a manifest item, known once the worker has fetched its URL."""

    filename: str | None = None
    source_url: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None


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
    batch_id: str | None = None
    sku: str | None = None
    side_outputs: dict[str, str] = Field(
        default_factory=dict, description="side output name → URL (`/assets/{id}/outputs/"
        "{name}`): those the pipeline produced; empty until the asset has succeeded")
    compliance: Compliance | None = Field(
        default=None, description="the result checked against its preset; null until the "
        "asset has succeeded")
    attributes: Attributes | None = Field(
        default=None, description="catalog attributes of the result (category, sleeve "
        "length, length, neckline, pattern, closure, colours); null until the asset has "
        "succeeded")
    review_suggested: bool | None = Field(
        default=None, description="true when the category's confidence is below "
        "FLATLAY_REVIEW_CONFIDENCE: route the asset to a person before publishing it; null "
        "until the asset has succeeded or where no confidence is known")
    expired_at: dt.datetime | None = Field(
        default=None, description="when the retention period removed its input and outputs")
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


class PresetInfo(BaseModel):
    name: str
    size: int = Field(description="default canvas side, px")
    background: str = Field(description="default background: 'transparent' or #rrggbb")
    formats: list[str] = Field(description="formats the preset allows; the first is the "
                               "default")
    min_fill: float | None = Field(description="the least share of the frame the garment "
                                   "must fill, if the preset has a rule")
    description: str


class PresetList(BaseModel):
    default: str
    presets: list[PresetInfo]


BatchSource = Literal["files", "archive", "manifest"]


class BatchLinks(BaseModel):
    self: str
    results: str


class BatchRejection(BaseModel):
    """A member refused at submission (the rest of the batch goes on)."""

    name: str = Field(description="file name, ZIP member name, or manifest row")
    sku: str | None = None
    code: str = Field(description="why, e.g. unsafe_member_name, zip_bomb, nested_archive, "
                      "unsupported_media_type, url_invalid, url_refused, validation_error")
    message: str


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    rejected: int


class BatchItem(BaseModel):
    sku: str
    asset_id: str
    status: JobStatus
    error: JobError | None = None


class BatchCreated(BaseModel):
    id: str
    status: Literal["processing", "completed"]
    created_at: dt.datetime
    counts: BatchCounts
    rejected: list[BatchRejection]
    links: BatchLinks


class BatchStatus(BatchCreated):
    source: BatchSource
    options: dict
    completed_at: dt.datetime | None = None
    items: list[BatchItem]


class DeliveryAttempt(BaseModel):
    at: dt.datetime
    status_code: int | None = Field(description="the receiver's answer; none if unreached")
    error: str | None = None
    duration_ms: float | None = None


class WebhookDelivery(BaseModel):
    id: str = Field(description="the `webhook-id` header of every attempt")
    event: Literal["asset.succeeded", "asset.failed", "batch.completed"]
    url: str
    status: Literal["pending", "succeeded", "failed"]
    asset_id: str | None = None
    batch_id: str | None = None
    attempts: list[DeliveryAttempt]
    next_attempt_at: dt.datetime | None = None
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    payload: dict


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDelivery]
