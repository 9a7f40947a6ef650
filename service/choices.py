"""`/pipelines` and `/presets`: the choices a create request's options may make."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from models.pipeline import pipeline_names
from models.presets import DEFAULT_PRESET, PRESETS
from service.deps import Ctx, limited_key
from service.errors import error_responses
from service.schemas import PipelineList, PresetInfo, PresetList

router = APIRouter()


@router.get("/pipelines", response_model=PipelineList, summary="Registered pipelines",
            responses=error_responses("unauthorized", "rate_limited"),
            dependencies=[Depends(limited_key)])
def list_pipelines(ctx: Ctx) -> PipelineList:
    return PipelineList(default=ctx.settings.default_pipeline, pipelines=pipeline_names())


@router.get("/presets", response_model=PresetList,
            summary="Output presets: default size, background and formats, and what the "
            "compliance check holds a result to",
            responses=error_responses("unauthorized", "rate_limited"),
            dependencies=[Depends(limited_key)])
def list_presets() -> PresetList:
    return PresetList(default=DEFAULT_PRESET, presets=[
        PresetInfo(name=p.name, size=p.size, background=p.background,
                   formats=list(p.formats), min_fill=p.min_fill,
                   description=p.description)
        for p in PRESETS.values()])
