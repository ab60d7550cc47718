"""How refusals become HTTP answers: one status per kind of refusal, never the input."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from providers.errors import ConfigurationError, ProviderUnavailable
from registry.errors import InstanceNotFound, RegistryError, RulesetNotFound
from registry.experiments import ExperimentNotFound


class ErrorBody(BaseModel):
    """Every refusal's body: one sentence saying what is wrong, never the input."""

    detail: str


_MEANINGS = {
    400: "the request cannot be read",
    401: "missing or wrong credentials (or a signature, for webhooks)",
    403: "refused for this caller or origin",
    404: "no such resource",
    409: "conflicts with what is already recorded",
    413: "the body is larger than this route takes",
    422: "a field is invalid; the detail names it",
    503: "a dependency (Vault, a provider's API) did not answer; try again",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` for these statuses, each with :class:`ErrorBody`."""
    return {s: {"model": ErrorBody, "description": _MEANINGS[s]} for s in statuses}


@contextmanager
def operator_errors() -> Iterator[None]:
    """Registry refusals as HTTP answers: unknown instance 404, bad input 422."""
    try:
        yield
    except (InstanceNotFound, RulesetNotFound, ExperimentNotFound) as exc:
        raise HTTPException(404, str(exc)) from None
    except (RegistryError, ConfigurationError) as exc:
        raise HTTPException(422, str(exc)) from None
    except ProviderUnavailable as exc:  # Vault did not answer: try again later
        raise HTTPException(503, str(exc)) from None


def describe_request_errors(exc: RequestValidationError) -> str:
    """'body.priority: Input should be a valid integer': where and why, never the input."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


async def request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field. FastAPI's default echoes the input, which may be a key."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": describe_request_errors(exc)})


def parse_instance_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InstanceNotFound(f"{value!r} is not an instance id") from None
