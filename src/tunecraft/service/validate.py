"""Request validation shared by the service's handlers (`api`) and the dashboard's (`dashboard`).

One place for the shapes every handler repeats: the JSON body (any JSON, or an object), a job
request checked by its pydantic model, and a file or job id that must name a row (404
otherwise), each failing as OpenAI's error object (`APIError`) with the offending parameter named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import ValidationError

from tunecraft.serve.app import APIError
from tunecraft.service.jobs import JobRequest

if TYPE_CHECKING:
    from tunecraft.service.api import Service


def service_of(request: Request) -> Service:
    """The `Service` this app was built with (`serve.app.create_app(extension=...)`)."""
    return request.app.state.extension


async def json_body(request: Request) -> Any:
    """The body as JSON of any shape (400 when it does not parse); a job request's model names
    a wrong shape itself."""
    try:
        return await request.json()
    except ValueError:
        raise APIError(400, "the body is not valid JSON") from None


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (400 when it is not JSON, or not an object)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def parse_job(body: Any) -> JobRequest:
    """A job request, its first problem named as `param: message`."""
    try:
        return JobRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}", param=param) from None


def file_or_404(service: Service, file_id: str, param: str = "file_id") -> dict[str, Any]:
    """The file row, or 404 naming `param` (the request field that carried the id)."""
    row = service.store.file(file_id)
    if row is None:
        raise APIError(404, f"No such File object: {file_id}", param=param, code="file_not_found")
    return row


def job_or_404(service: Service, job_id: str) -> dict[str, Any]:
    """The job row, or 404."""
    row = service.store.job(job_id)
    if row is None:
        raise APIError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return row
