"""app.errors.ERROR_STATUS: the one place domain errors get their HTTP status."""
from __future__ import annotations

import inspect

import tasks.exceptions
from app.errors import ERROR_STATUS, status_for
from engine.exceptions import EncodingError, OptionError, UnknownVoiceError
from tasks.exceptions import (
    BatchAudioTooLong,
    IdempotencyConflict,
    JobNotFound,
    PipelineError,
)


def test_every_pipeline_error_has_its_own_status():
    errors = [cls for _, cls in inspect.getmembers(tasks.exceptions, inspect.isclass)
              if issubclass(cls, PipelineError)]
    assert len(errors) > 10
    assert [cls.__name__ for cls in errors if cls not in ERROR_STATUS] == []
    assert not any(hasattr(cls, "http_status") for cls in errors)  # the pipeline knows nothing of HTTP


def test_status_for_walks_the_class_hierarchy():
    assert status_for(JobNotFound("j")) == 404
    assert status_for(IdempotencyConflict("k", "j")) == 422
    assert status_for(BatchAudioTooLong(5000.0, 3600)) == 413

    class NewPipelineError(PipelineError):
        code = "new"

    assert status_for(NewPipelineError("x")) == 400
    assert status_for(UnknownVoiceError("x", ["heart"])) == 400
    assert status_for(OptionError("x")) == status_for(EncodingError("x")) == 400
    assert status_for(RuntimeError("x")) == 500
