"""The one shape of a typed failure (torch-free; the service shares it): a stable,
machine-readable `code` and a message a person can act on. Ingest (`models.io.IngestError`),
the pipelines (`models.pipeline.PipelineError`) and fetching (`service.fetch.FetchError`)
raise its subclasses; a job records the code, the API answers it."""

from __future__ import annotations


class TypedError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
