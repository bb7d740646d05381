"""The fine-tuning service's HTTP routes: OpenAI's `/v1/files` and `/v1/fine_tuning/jobs`.

`Service` ties the store, the uploaded files, the job runner and the served models together;
`router(service)` is the FastAPI router that `serve.app.create_app` mounts beside chat and
completions. Handlers validate and record; the runner (another thread) does the work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from tunecraft import rundir
from tunecraft.serve.app import APIError
from tunecraft.serve.engine import LoadedModel, ModelCache, load_target
from tunecraft.service import dashboard, objects
from tunecraft.service.files import MAX_FILE_BYTES, PURPOSES, UploadTooLarge, save_upload
from tunecraft.service.ids import new_id
from tunecraft.service.jobs import DEFAULT_SEED
from tunecraft.service.runner import Runner, RunnerSettings
from tunecraft.service.store import Store
from tunecraft.service.tasks import Tasks
from tunecraft.service.validate import file_or_404, job_or_404, json_body, parse_job, service_of

CHUNK = 1 << 20


class Service:
    """The service's state: where it keeps things, which base models it tunes, what it serves."""

    def __init__(self, data_dir: Path, models: dict[str, LoadedModel], base_targets: dict[str, str],
                 cache: ModelCache, settings: RunnerSettings | None = None,
                 max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.files_dir = self.data_dir / "files"
        self.store = Store(self.data_dir / "service.sqlite")
        self.models, self.base_targets, self.cache = models, base_targets, cache
        self.max_file_bytes = max_file_bytes
        self.upload_limits = {"/v1/files": max_file_bytes + (1 << 20)}  # the file plus multipart framing
        self.public_paths = dashboard.PUBLIC_PATHS  # the dashboard's static files (no data in them)
        self.tasks = Tasks()  # the dashboard's eval and export children
        self._load_lock = threading.Lock()  # one model load at a time (they share the base)
        self.runner = Runner(self.store, self.data_dir, lambda: dict(self.base_targets), self.hot_load, settings)

    def router(self) -> APIRouter:
        return router()

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()
        self.tasks.stop()
        self.store.close()

    # -- served models

    def hot_load(self, job: dict[str, Any]) -> LoadedModel | None:
        """Serve a succeeded job's model under its `fine_tuned_model` name (the base is shared)."""
        name = job["fine_tuned_model"]
        with self._load_lock:
            if name not in self.models:
                self.models[name] = load_target(job["run_dir"], name=name, cache=self.cache)
        return self.models[name]

    def listed(self) -> list[str]:
        """Tuned models this service can serve (loaded now or on first use)."""
        return [j["fine_tuned_model"] for j in self.store.jobs_in("succeeded") if j["fine_tuned_model"]]

    def resolve(self, name: str) -> LoadedModel | None:
        """Load a tuned model or a job checkpoint named in a request (None: not ours)."""
        if name in self.models:
            return self.models[name]
        for job in self.store.jobs_in("succeeded", "cancelled", "failed", "running", "paused", "queued"):
            if job["fine_tuned_model"] == name and job["status"] == "succeeded":
                return self.hot_load(job)
            prefix = objects.fine_tuned_name(job["model"], job["suffix"], job["id"]) + ":ckpt-step-"
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                return self._load_checkpoint(job, int(name[len(prefix):]), name)
        return None

    def _load_checkpoint(self, job: dict[str, Any], step: int, name: str) -> LoadedModel | None:
        from tunecraft.eval.checkpoints import materialize

        run = Path(job["run_dir"])
        ckpt = run / rundir.CHECKPOINTS / f"step-{step:06d}"
        if not (ckpt / rundir.COMPLETE).is_file() or not rundir.is_run_dir(run):
            return None
        with self._load_lock:
            if name not in self.models:
                target = materialize(rundir.read_run(run), ckpt, run.parent / "checkpoint-models" / ckpt.name)
                self.models[name] = load_target(str(target), name=name, cache=self.cache)
        return self.models[name]


def service_factory(data_dir: Path, max_jobs: int = 1, job_settings: list[str] | None = None) -> Any:
    """What `serve(..., extension=...)` calls once the models are loaded."""
    from tunecraft.config import parse_override

    for item in job_settings or []:
        parse_override(item)  # a typo fails now, not in every job
    settings = RunnerSettings(max_parallel=max_jobs, job_settings=list(job_settings or []))

    def make(models: dict[str, LoadedModel], cache: ModelCache, bases: dict[str, str]) -> Service:
        return Service(data_dir, models, bases, cache, settings)

    return make


# ----------------------------------------------------------------------------- helpers


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


# ----------------------------------------------------------------------------- files


async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> dict[str, Any]:
    service = service_of(request)
    if purpose not in PURPOSES:
        raise APIError(400, f"purpose {purpose!r} is not supported here; use one of {', '.join(PURPOSES)}", param="purpose")
    try:
        row = await save_upload(service.store, service.files_dir, file.filename or "upload.jsonl", purpose,
                                _chunks(file), service.max_file_bytes)
    except UploadTooLarge:
        raise APIError(413, f"the file exceeds {service.max_file_bytes} bytes", param="file", code="file_too_large") from None
    return objects.file_object(row)


async def list_files(request: Request, purpose: str | None = None, after: str | None = None,
                     limit: int = Query(10000, ge=1, le=10000)) -> dict[str, Any]:
    return objects.list_object(service_of(request).store.files(purpose, after, limit), objects.file_object)


async def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    return objects.file_object(file_or_404(service_of(request), file_id))


async def file_content(request: Request, file_id: str) -> FileResponse:
    row = file_or_404(service_of(request), file_id)
    return FileResponse(row["path"], media_type="application/octet-stream")


async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    service = service_of(request)
    file_or_404(service, file_id)
    service.store.delete_file(file_id)  # the bytes stay until no job needs them (jobs keep working)
    return {"id": file_id, "object": "file", "deleted": True}


# ----------------------------------------------------------------------------- jobs


async def create_job(request: Request) -> dict[str, Any]:
    service = service_of(request)
    req = parse_job(await json_body(request))
    if req.model not in service.base_targets:
        raise APIError(400, f"model {req.model!r} cannot be fine-tuned here; base models served: "
                       f"{', '.join(service.base_targets) or 'none'}", param="model", code="model_not_available")
    file_or_404(service, req.training_file, "training_file")
    if req.validation_file:
        file_or_404(service, req.validation_file, "validation_file")
    job_id = new_id("ftjob")
    hyper = req.hyper().model_dump()
    row = {
        "id": job_id, "created_at": int(time.time()), "status": "validating_files", "model": req.model,
        "training_file": req.training_file, "validation_file": req.validation_file, "suffix": req.suffix,
        "seed": req.seed if req.seed is not None else DEFAULT_SEED, "metadata": req.metadata or {},
        "method": {"type": req.method.type if req.method else "supervised",
                   **({"settings": req.settings} if req.settings else {})},
        "hyperparameters": hyper,
        "run_dir": str(service.data_dir / "jobs" / job_id / "run"),
    }
    service.store.add_job(row)
    service.store.add_event(job_id, "created", f"Created fine-tuning job: {job_id}")
    service.runner.wake()
    return objects.job_object(job_or_404(service, job_id))


async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    return objects.list_object(service_of(request).store.jobs(after, limit), objects.job_object)


async def retrieve_job(request: Request, job_id: str) -> dict[str, Any]:
    return objects.job_object(job_or_404(service_of(request), job_id))


def _control(service: Service, job_id: str, allowed: tuple[str, ...], verb: str, **fields: Any) -> dict[str, Any]:
    job = job_or_404(service, job_id)
    if not service.store.transition(job_id, allowed, **fields):
        raise APIError(400, f"a {job['status']} job cannot be {verb}", param="fine_tuning_job_id", code="invalid_state")
    service.runner.wake()
    return objects.job_object(job_or_404(service, job_id))


async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    return _control(service, job_id, ("validating_files", "queued", "running", "paused"), "cancelled",
                    status="cancelled", requested="cancel", finished_at=int(time.time()), estimated_finish=None)


async def pause_job(request: Request, job_id: str) -> dict[str, Any]:
    return _control(service_of(request), job_id, ("queued", "running"), "paused", status="paused", requested="pause")


async def resume_job(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    job = job_or_404(service, job_id)
    resumable = int(bool(rundir.complete_checkpoints(Path(job["run_dir"]))))
    return _control(service, job_id, ("paused",), "resumed", status="queued", requested=None, resume=resumable)


async def job_events(request: Request, job_id: str, after: str | None = None,
                     limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    service = service_of(request)
    job_or_404(service, job_id)
    return objects.list_object(service.store.events(job_id, after, limit), objects.event_object)


async def job_checkpoints(request: Request, job_id: str, after: str | None = None,
                          limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    service = service_of(request)
    job = job_or_404(service, job_id)
    kept = rundir.checkpoint_steps(Path(job["run_dir"]))
    page = service.store.checkpoints(job_id, after, limit)
    page.rows[:] = [r for r in page.rows if r["step"] in kept]  # only those still servable
    return objects.list_object(page, lambda r: objects.checkpoint_object(r, job))


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/v1/files", create_file, methods=["POST"])
    r.add_api_route("/v1/files", list_files, methods=["GET"])
    r.add_api_route("/v1/files/{file_id}", retrieve_file, methods=["GET"])
    r.add_api_route("/v1/files/{file_id}", delete_file, methods=["DELETE"])
    r.add_api_route("/v1/files/{file_id}/content", file_content, methods=["GET"])
    r.add_api_route("/v1/fine_tuning/jobs", create_job, methods=["POST"])
    r.add_api_route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"])
    r.add_api_route("/v1/fine_tuning/jobs/{job_id}", retrieve_job, methods=["GET"])
    r.add_api_route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, methods=["POST"])
    r.add_api_route("/v1/fine_tuning/jobs/{job_id}/pause", pause_job, methods=["POST"])
    r.add_api_route("/v1/fine_tuning/jobs/{job_id}/resume", resume_job, methods=["POST"])
    r.add_api_route("/v1/fine_tuning/jobs/{job_id}/events", job_events, methods=["GET"])
    r.add_api_route("/v1/fine_tuning/jobs/{job_id}/checkpoints", job_checkpoints, methods=["GET"])
    dashboard.add_routes(r)
    return r
