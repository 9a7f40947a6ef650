"""The options of one asset (pipeline, output_size, background, format, seed), checked the
same way for `POST /assets`, a batch's options and a manifest item's own options."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.compose import parse_background
from models.pipeline import pipeline_names
from service.errors import ApiError
from service.schemas import OutputFormat

# The option fields of a multipart create request (`POST /assets`, `POST /batches`).
PipelineForm = Annotated[str | None, Form(description="pipeline name")]
OutputSizeForm = Annotated[int, Form(ge=256, le=2048, description="canvas side, px")]
BackgroundForm = Annotated[str, Form(description="'transparent' or a hex colour")]
FormatForm = Annotated[OutputFormat, Form(description="output image format")]
SeedForm = Annotated[int | None, Form(ge=0, le=2**32 - 1)]


class ItemOptions(BaseModel):
    """Options that a manifest item may set for itself (overriding the batch's)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = None
    output_size: int | None = Field(default=None, ge=256, le=2048)
    background: str | None = None
    format: OutputFormat | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


def resolve_options(
    pipeline: str | None, output_size: int, background: str, format: str, seed: int | None,
    default_pipeline: str,
) -> tuple[str, dict[str, Any]]:
    """(pipeline, options as stored on the job row); ApiError naming the field otherwise."""
    pipeline = pipeline or default_pipeline
    if pipeline not in pipeline_names():
        raise ApiError(
            "unknown_pipeline",
            f"unknown pipeline {pipeline!r}; available: {', '.join(pipeline_names())}",
            "pipeline",
        )
    try:
        bg = parse_background(background)
    except ValueError as exc:
        raise ApiError("validation_error", str(exc), "background") from None
    if bg is None and format == "jpeg":
        raise ApiError(
            "validation_error",
            "JPEG has no alpha channel: use format png or webp for a transparent background",
            "background",
        )
    return pipeline, {"output_size": output_size, "background": background, "format": format,
                      "seed": seed}


def override_options(
    pipeline: str, options: dict[str, Any], item: Any, default_pipeline: str
) -> tuple[str, dict[str, Any]]:
    """A manifest item's options over the batch's; ApiError when they are not valid."""
    if item in (None, ""):
        return pipeline, options
    try:
        own = ItemOptions.model_validate(item).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError("validation_error", f"options.{field}: {first['msg']}",
                       f"options.{field}") from None
    merged = {**options, **{k: v for k, v in own.items() if k != "pipeline"}}
    return resolve_options(own.get("pipeline", pipeline), merged["output_size"],
                           merged["background"], merged["format"], merged["seed"],
                           default_pipeline)
