"""The options of one asset (pipeline, preset, output_size, background, format, seed,
structure, steps, hint), checked the same way for `POST /assets`, a batch's options and a
manifest item's own options.

A preset (models.presets) gives the defaults of output_size, background and format; an
option given explicitly wins over the preset's default. A format or size the preset does
not allow is accepted: the job's compliance check then says that it fails the preset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Form
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.compose import parse_background
from models.pipeline import (
    HINT_MAX_CHARS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    InvalidHint,
    StructureSpec,
    check_hint,
    pipeline_names,
)
from models.presets import DEFAULT_PRESET, PRESETS
from service.errors import ApiError
from service.schemas import OutputFormat
from structure_bank.validate import InvalidStructure

# A structure is a few dozen points; anything much larger is not one.
MAX_STRUCTURE_CHARS = 64 * 1024

_PRESET_HELP = "; ".join(f"`{p.name}`: {p.size} px, {p.background}, {'/'.join(p.formats)}"
                         for p in PRESETS.values())

# The option fields of a multipart create request (`POST /assets`, `POST /batches`).
PipelineForm = Annotated[str | None, Form(description="pipeline name")]
PresetForm = Annotated[str | None, Form(
    description=f"output preset (default `{DEFAULT_PRESET}`): the defaults of output_size, "
    f"background and format, and what the compliance check holds the result to. "
    f"{_PRESET_HELP}")]
OutputSizeForm = Annotated[int | None, Form(
    ge=MIN_SIZE, le=MAX_SIZE, description="canvas side, px (default: the preset's; another size is "
    "accepted and fails the preset's size check)")]
BackgroundForm = Annotated[str | None, Form(
    description="'transparent' or a hex colour (default: the preset's)")]
FormatForm = Annotated[OutputFormat | None, Form(
    description="output image format (default: the preset's first format; a format the "
    "preset does not allow is accepted and fails its format check)")]
SeedForm = Annotated[int | None, Form(ge=0, le=2**32 - 1)]
StepsForm = Annotated[int | None, Form(
    ge=1, le=MAX_STEPS, description="sampling steps of the generative pipelines (default: "
    "the generator's); more steps cost time, the other pipelines ignore it")]
StructureForm = Annotated[str | None, Form(
    description='JSON text {"category": ..., "landmarks": [[x, y], ...]} in the canonical '
    "unit square: the structure to lay the garment out in, instead of the retrieved one "
    "(the `landmarks` side output of an earlier job can be sent back, edited or not). "
    "An invalid structure answers 422 with `field` naming the point, e.g. "
    "`structure.landmarks[3]`")]
HintForm = Annotated[str | None, Form(
    description=f"what the catalog knows about the garment in words, at most {HINT_MAX_CHARS} "
    "characters (e.g. `long sleeves`, `midi dress`): evidence beside the photo for the "
    "category and the structure retrieved; the attributes' `hint` says whether it or the "
    "photo won. Too long or with control characters: 422 with `field` `hint`")]

# Options that a request may give; None means "not given" (the preset's default applies).
OPTION_FIELDS = ("preset", "output_size", "background", "format", "seed", "structure",
                 "steps", "hint")


@dataclass(frozen=True)
class OptionFields:
    """The option fields of a multipart create request as given, not yet checked: each
    endpoint resolves them (`resolve_options`) at its own point of its checks."""

    pipeline: str | None
    given: dict[str, Any]


def option_fields(
    pipeline: PipelineForm = None,
    preset: PresetForm = None,
    output_size: OutputSizeForm = None,
    background: BackgroundForm = None,
    format: FormatForm = None,
    seed: SeedForm = None,
    structure: StructureForm = None,
    steps: StepsForm = None,
    hint: HintForm = None,
) -> OptionFields:
    return OptionFields(pipeline, given_options(
        preset=preset, output_size=output_size, background=background, format=format,
        seed=seed, structure=structure, steps=steps, hint=hint))


# One declaration of the option form fields for `POST /assets` and `POST /batches`.
OptionForm = Annotated[OptionFields, Depends(option_fields)]


class ItemOptions(BaseModel):
    """Options that a manifest item may set for itself (overriding the batch's)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = None
    preset: str | None = None
    output_size: int | None = Field(default=None, ge=MIN_SIZE, le=MAX_SIZE)
    background: str | None = None
    format: OutputFormat | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    # A JSON object, or its JSON text (a CSV manifest's column).
    structure: dict[str, Any] | str | None = None
    hint: str | None = None


def given_options(**values: Any) -> dict[str, Any]:
    """The options a request gave, by name (None: not given)."""
    unknown = set(values) - set(OPTION_FIELDS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    return {name: values.get(name) for name in OPTION_FIELDS}


def parse_structure(value: Any, field: str = "structure") -> dict[str, Any] | None:
    """A structure given as JSON text (or already parsed) → its stored JSON form; ApiError
    naming the field, or the bad point (`structure.landmarks[3]`), otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        if len(value) > MAX_STRUCTURE_CHARS:
            raise ApiError("validation_error", f"{field}: longer than {MAX_STRUCTURE_CHARS} "
                           "characters", field)
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ApiError("validation_error", f"{field} is not valid JSON: {exc}",
                           field) from None
    try:
        spec = StructureSpec.parse(value)
    except InvalidStructure as exc:
        where = field if exc.field == "structure" else f"{field}.{exc.field}"
        raise ApiError("invalid_structure", exc.message, where) from None
    return spec.to_json()


def resolve_options(
    pipeline: str | None, given: dict[str, Any], default_pipeline: str
) -> tuple[str, dict[str, Any]]:
    """(pipeline, options as stored on the job row) from the options a request gave and
    its preset's defaults; ApiError naming the field otherwise."""
    pipeline = pipeline or default_pipeline
    if pipeline not in pipeline_names():
        raise ApiError(
            "unknown_pipeline",
            f"unknown pipeline {pipeline!r}; available: {', '.join(pipeline_names())}",
            "pipeline",
        )
    name = given.get("preset") or DEFAULT_PRESET
    if name not in PRESETS:
        raise ApiError("validation_error",
                       f"unknown preset {name!r}; available: {', '.join(PRESETS)}", "preset")
    preset = PRESETS[name]
    background = given.get("background") or preset.background
    try:
        bg = parse_background(background)
    except ValueError as exc:
        raise ApiError("validation_error", str(exc), "background") from None
    fmt = given.get("format")
    if fmt is None:
        # The preset's first format that can carry the background (JPEG has no alpha).
        fmt = next((f for f in preset.formats if bg is not None or f != "jpeg"), "png")
    if bg is None and fmt == "jpeg":
        field = "background" if given.get("background") else "format"
        raise ApiError(
            "validation_error",
            "JPEG has no alpha channel: use format png or webp for a transparent background",
            field,
        )
    output_size = given.get("output_size") or preset.size
    try:
        hint = check_hint(given.get("hint"))
    except InvalidHint as exc:
        raise ApiError("validation_error", str(exc), "hint") from None
    return pipeline, {"preset": preset.name, "output_size": output_size,
                      "background": background, "format": fmt, "seed": given.get("seed"),
                      "structure": parse_structure(given.get("structure")),
                      "steps": given.get("steps"), "hint": hint}


def override_options(
    pipeline: str | None, given: dict[str, Any], item: Any, default_pipeline: str
) -> tuple[str, dict[str, Any]]:
    """A manifest item's own options over the options the batch gave (then the preset's
    defaults); ApiError when they are not valid."""
    own: dict[str, Any] = {}
    if item not in (None, ""):
        try:
            own = ItemOptions.model_validate(item).model_dump(exclude_none=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError("validation_error", f"options.{field}: {first['msg']}",
                           f"options.{field}") from None
    merged = {**given, **{k: v for k, v in own.items() if k != "pipeline"}}
    return resolve_options(own.get("pipeline", pipeline), merged, default_pipeline)
