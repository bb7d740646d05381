"""The web dashboard: its static page at `/`, and the JSON it needs beyond OpenAI's API.

The page (`service/web/`) is a client of the service's REST API: files, jobs, events,
checkpoints, cancel / pause / resume and chat go through the same `/v1` routes any script uses.
What OpenAI's API has no route for lives under `/v1/dashboard/`, each answer computed by the
function the CLI itself calls:

- a file's check: `data check` (problems as file:line, token statistics, duplicates, leakage) and
  two examples as `data show` renders them, loss-bearing tokens marked;
- a job's plan: `train --dry-run --json` in a child process (auto settings with reasons, the
  measured estimate), for exactly the command the job would run;
- a job's run: its curves (metrics.jsonl), the curves' verdict with the overfitting onset, the
  summary and eval.json, read through `rundir` and `curves`;
- eval and export: `tunecraft eval` / `tunecraft export` as background children (`tasks`).

The static files hold no data, so they are served without the API key; the page asks for the
key once and keeps it in the tab's sessionStorage.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from tunecraft import curves, rundir
from tunecraft.errors import TunecraftError
from tunecraft.serve.app import APIError
from tunecraft.service import objects
from tunecraft.service.ids import new_id
from tunecraft.service.jobs import DEFAULT_SEED, SETTING_KEYS, JobRequest, train_command
from tunecraft.service.validate import file_or_404, job_or_404, json_body, json_object, parse_job, service_of

if TYPE_CHECKING:
    from tunecraft.service.api import Service

WEB = Path(__file__).parent / "web"
# name -> media type: the only files served (a request names one of these or gets a 404).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "play.js": "text/javascript; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
}
PUBLIC_PATHS = frozenset({"/", *(f"/dashboard/{name}" for name in ASSETS)})
# Everything comes from this server (no CDN, no web fonts); the report opens from a blob: URL,
# and its inline styles and data: plots need the two exceptions.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
           "Referrer-Policy": "no-referrer"}
SHOWN_EXAMPLES = 2
PLAN_TIMEOUT_S = 600.0
EXPORT_FORMATS = ("adapter", "merged", "gguf")
EVAL_SUMMARY_KEYS = ("kind", "examples", "main_metric", "answer_kind", "systems", "comparison", "verdict", "ship",
                     "prompt", "data_stats")


def _names(service: Service, *file_ids: str | None) -> dict[str, str]:
    """Server path -> the client's file name, for every file named."""
    out: dict[str, str] = {}
    for fid in file_ids:
        if fid:
            row = file_or_404(service, fid)
            out[row["path"]] = row["filename"]
    return out


def _base_target(service: Service, model: str | None) -> str:
    """The base model's load argument (default: the first base model served)."""
    if not service.base_targets:
        raise APIError(400, "this server serves no base model to fine-tune", param="model")
    name = model or next(iter(service.base_targets))
    if name not in service.base_targets:
        raise APIError(400, f"model {name!r} is not a base model here; base models: {', '.join(service.base_targets)}",
                       param="model", code="model_not_available")
    return service.base_targets[name]


# ----------------------------------------------------------------------------- static page


async def page(_request: Request) -> FileResponse:
    return asset(_request, "index.html")


def asset(_request: Request, name: str) -> FileResponse:
    if name not in ASSETS:
        raise APIError(404, f"no such dashboard file: {name}", code="not_found")
    return FileResponse(WEB / name, media_type=ASSETS[name], headers=HEADERS)


# ----------------------------------------------------------------------------- data


async def info(request: Request) -> dict[str, Any]:
    service = service_of(request)
    return {"base_models": list(service.base_targets), "tuned_models": await run_in_threadpool(service.listed),
            "setting_keys": list(SETTING_KEYS), "export_formats": list(EXPORT_FORMATS)}


def _check(service: Service, file_id: str, val_id: str | None, model: str | None) -> dict[str, Any]:
    from tunecraft.data.check import check_data

    train, val = file_or_404(service, file_id), file_or_404(service, val_id) if val_id else None
    target = _base_target(service, model)
    try:
        report = check_data(Path(train["path"]), val=Path(val["path"]) if val else None, model=target)
    except TunecraftError as exc:
        raise APIError(400, str(exc), param="file_id") from None
    names = _names(service, file_id, val_id)
    body = report.to_json()
    body["model"] = model or next(iter(service.base_targets))
    for item in (*body["issues"], *body["files"]):
        item["path"] = names.get(item["path"], item["path"])
    for issue in body["issues"]:  # a leak names the other file's line: the client's name there too
        for path, name in names.items():
            issue["message"] = issue["message"].replace(path, name)
    body["examples"] = _examples(Path(train["path"]), target, report.max_length) if body["ok"] else []
    return body


def _examples(path: Path, target: str, max_length: int | None) -> list[dict[str, Any]]:
    """The first examples as `data show` renders them: the text in runs, loss-bearing or not."""
    from tunecraft.data.loader import load_examples
    from tunecraft.data.render import tokenize_example
    from tunecraft.data.show import token_runs
    from tunecraft.models.load import load_tokenizer
    from tunecraft.models.resolve import resolve_model

    tokenizer = load_tokenizer(resolve_model(target).path)
    shown = []
    for ex in load_examples(path)[:SHOWN_EXAMPLES]:
        tok = tokenize_example(ex, tokenizer, max_length or 10**9)
        runs = [{"text": tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                 "loss": loss} for ids, loss in token_runs(tok)]
        shown.append({"line": ex.line, "format": ex.format, "tokens": tok.n_tokens, "loss_tokens": tok.n_loss,
                      "truncated": tok.truncated, "runs": runs})
    return shown


async def check_file(request: Request, file_id: str, validation_file: str | None = None,
                     model: str | None = None) -> dict[str, Any]:
    return await run_in_threadpool(_check, service_of(request), file_id, validation_file, model)


# ----------------------------------------------------------------------------- plan

_plan_lock = threading.Lock()  # one dry run at a time: each loads the model and times real steps


def _plan(service: Service, req: JobRequest) -> dict[str, Any]:
    target = _base_target(service, req.model)
    train = file_or_404(service, req.training_file)
    val = file_or_404(service, req.validation_file) if req.validation_file else None
    preview = service.data_dir / "previews" / new_id("plan")
    job = {"run_dir": str(preview / "run"), "resume": 0, "seed": req.seed if req.seed is not None else DEFAULT_SEED,
           "hyperparameters": req.hyper().model_dump(), "method": {"settings": req.settings}}
    cmd = train_command(job, target, Path(train["path"]), Path(val["path"]) if val else None,
                        service.runner.settings.job_settings)
    at = cmd.index("train") + 1
    cmd[at:at] = ["--dry-run", "--json"]  # the job's own command, planned and timed, training nothing
    env = {"TUNECRAFT_SERVICE_PID": str(os.getpid()), "COLUMNS": "120"}
    with _plan_lock:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=PLAN_TIMEOUT_S,
                                  env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise APIError(504, f"the dry run took over {PLAN_TIMEOUT_S:.0f} s", "server_error", code="timeout") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error:")]
        message = "\n".join(errors or lines[-5:]) or f"the dry run exited with code {done.returncode}"
        for path, name in _names(service, req.training_file, req.validation_file).items():
            message = message.replace(path, name)
        raise APIError(400, message, code="plan_failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def plan(request: Request) -> dict[str, Any]:
    req = parse_job(await json_body(request))
    return await run_in_threadpool(_plan, service_of(request), req)


# ----------------------------------------------------------------------------- a job's run


def _curve(run: Path) -> dict[str, list[list[float]]]:
    rows = rundir.read_metrics(run) if run.is_dir() else []
    return {"train": [[r["step"], r["loss"]] for r in rows if r.get("type") == "train" and r.get("loss") is not None],
            "val": [[r["step"], r["val_loss"]] for r in rows if r.get("type") == "eval" and r.get("val_loss") is not None]}


def _verdict(run: Path) -> dict[str, Any] | None:
    """The curves' verdict so far (onset step included); None before there is a curve."""
    if not rundir.has_run(run):
        return None
    try:
        return curves.run_verdict(run).to_json()
    except (TunecraftError, ValueError):  # nothing to judge yet
        return None


def _renamed(value: Any, path: str, name: str) -> Any:
    """`value` with every mention of the server path `path` replaced by the client's file name."""
    if isinstance(value, str):
        return value.replace(path, name)
    if isinstance(value, dict):
        return {k: _renamed(v, path, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, path, name) for v in value]
    return value


def _eval_summary(service: Service, run: Path) -> dict[str, Any] | None:
    if not (run / rundir.EVAL).is_file():
        return None
    payload = rundir.read_eval(run)
    # The test file as the client named it (cases say PATH:LINE; uploads live at files/<id>.<ext>).
    data = str(payload.get("data") or "")
    row = service.store.file(Path(data).stem) if data else None
    if row is not None and row["path"] == data:
        payload = _renamed(payload, data, row["filename"])
    out = {k: payload.get(k) for k in EVAL_SUMMARY_KEYS}
    out["test_file"] = {"id": row["id"], "filename": row["filename"]} if row is not None and row["path"] == data else None
    flips = (payload.get("comparison") or {}).get("flips") or {}
    cases = payload.get("cases") or []
    out["flipped"] = {kind: [cases[i] for i in flips.get(kind, []) if i < len(cases)][:20] for kind in ("fixed", "broken")}
    out["has_report"] = (run / rundir.REPORT).is_file()
    classical = payload.get("classical")  # closed-label tasks only; its per-example predictions stay on disk
    out["classical"] = {k: v for k, v in classical.items() if k != "predictions"} if classical else None
    return out


def _run_view(service: Service, job_id: str) -> dict[str, Any]:
    job = job_or_404(service, job_id)
    run = Path(job["run_dir"])
    summary = rundir.read_summary(run) if (run / rundir.SUMMARY).is_file() else {}
    total = None
    for event in rundir.read_events(run) if run.is_dir() else []:
        total = event.get("total_steps") or total
    tasks = {kind: t.to_json() for kind in ("eval", *(f"export:{f}" for f in EXPORT_FORMATS))
             if (t := service.tasks.get(job_id, kind)) is not None}
    return {"job": objects.job_object(job), "curve": _curve(run), "total_steps": total, "verdict": _verdict(run),
            "summary": summary, "settings": (job["method"] or {}).get("settings") or {}, "run_dir": str(run),
            "eval": _eval_summary(service, run), "exports": _exports(service, job), "tasks": tasks}


async def run_view(request: Request, job_id: str) -> dict[str, Any]:
    return await run_in_threadpool(_run_view, service_of(request), job_id)


async def report(request: Request, job_id: str) -> HTMLResponse:
    run = Path(job_or_404(service_of(request), job_id)["run_dir"])
    path = run / rundir.REPORT
    if not path.is_file():
        raise APIError(404, "this job has no report yet: evaluate it first", code="report_not_found")
    return HTMLResponse(path.read_text(encoding="utf-8"), headers={"Content-Security-Policy": "sandbox"})


# ----------------------------------------------------------------------------- eval and export


def _succeeded(service: Service, job_id: str) -> dict[str, Any]:
    job = job_or_404(service, job_id)
    if job["status"] != "succeeded":
        raise APIError(400, f"a {job['status']} job has no model yet", param="fine_tuning_job_id", code="invalid_state")
    return job


async def start_eval(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    job = _succeeded(service, job_id)
    body = await json_object(request)
    test = file_or_404(service, str(body.get("test_file") or ""))
    args = ["eval", job["run_dir"], "--data", test["path"]]
    if body.get("limit") is not None:
        if not isinstance(body["limit"], int) or body["limit"] < 1:
            raise APIError(400, "limit: a positive number of examples", param="limit")
        args += ["--limit", str(body["limit"])]
    task = service.tasks.start(job_id, "eval", args, Path(job["run_dir"]).parent / "eval.log")
    if task is None:
        raise APIError(409, "an evaluation of this job is already running", code="already_running")
    return task.to_json()


def _export_dir(job: dict[str, Any], fmt: str) -> Path:
    return Path(job["run_dir"]).parent / "export" / fmt


def _commands(job: dict[str, Any], fmt: str, out: Path) -> list[str]:
    """How to run the artifact elsewhere (docs/deploy.md has the details)."""
    name = job["suffix"] or "tuned"
    summary = rundir.read_summary(Path(job["run_dir"])) if (Path(job["run_dir"]) / rundir.SUMMARY).is_file() else {}
    base = summary.get("base_model") or job["model"]
    export = f"tunecraft export {job['run_dir']} --format {fmt} --out {out}"
    if fmt == "adapter":
        return [export, f"vllm serve {base} --enable-lora --lora-modules {name}={out}"]
    if fmt == "merged":
        return [export, f"vllm serve {out} --served-model-name {name}"]
    return [export, f"llama-server -m {out / 'model.gguf'} --port 8080",
            f"cd {out} && printf 'FROM ./model.gguf\\n' > Modelfile && ollama create {name} -f Modelfile && ollama run {name}"]


def _exports(service: Service, job: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for fmt in EXPORT_FORMATS:
        where = _export_dir(job, fmt)
        files = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        out[fmt] = {"path": str(where), "files": files, "commands": _commands(job, fmt, where)}
    return out


async def start_export(request: Request, job_id: str) -> dict[str, Any]:
    service = service_of(request)
    job = _succeeded(service, job_id)
    fmt = (await json_object(request)).get("format")
    if fmt not in EXPORT_FORMATS:
        raise APIError(400, f"format: one of {', '.join(EXPORT_FORMATS)}", param="format")
    out = _export_dir(job, fmt)
    args = ["export", job["run_dir"], "--format", fmt, "--out", str(out), "--overwrite"]
    task = service.tasks.start(job_id, f"export:{fmt}", args, out.parent / f"{fmt}.log")
    if task is None:
        raise APIError(409, f"a {fmt} export of this job is already running", code="already_running")
    return task.to_json()


def add_routes(r: APIRouter) -> None:
    r.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    r.add_api_route("/dashboard/{name}", asset, methods=["GET"], include_in_schema=False)
    r.add_api_route("/v1/dashboard/info", info, methods=["GET"])
    r.add_api_route("/v1/dashboard/files/{file_id}/check", check_file, methods=["GET"])
    r.add_api_route("/v1/dashboard/plan", plan, methods=["POST"])
    r.add_api_route("/v1/dashboard/jobs/{job_id}", run_view, methods=["GET"])
    r.add_api_route("/v1/dashboard/jobs/{job_id}/report", report, methods=["GET"])
    r.add_api_route("/v1/dashboard/jobs/{job_id}/eval", start_eval, methods=["POST"])
    r.add_api_route("/v1/dashboard/jobs/{job_id}/export", start_export, methods=["POST"])

