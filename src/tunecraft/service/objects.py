"""Store rows -> the OpenAI object shapes the official `openai` client parses, field by field.

Files: `file` objects. Jobs: `fine_tuning.job`, with `fine_tuning.job.event` and
`fine_tuning.job.checkpoint`. Lists: `{"object": "list", "data": [...], "has_more": bool}`
(plus `first_id`/`last_id`, which the client's cursor pages read when present).
"""

from __future__ import annotations

from typing import Any

from tunecraft.service.store import Page

# OpenAI statuses (a job is "paused" between a pause and a resume).
STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")
FINAL = ("succeeded", "failed", "cancelled")


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
        "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
        "status_details": None, "expires_at": None,
    }


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    hyper = {**row["hyperparameters"], **{k: v for k, v in row["resolved"].items() if k in
                                           ("n_epochs", "batch_size", "learning_rate_multiplier")}}
    method = row["method"]
    if method.get("type") in ("supervised", "dpo"):
        method = {"type": method["type"], method["type"]: {"hyperparameters": hyper}}
    return {
        "id": row["id"], "object": "fine_tuning.job", "created_at": row["created_at"],
        "error": row["error"], "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"], "hyperparameters": hyper, "model": row["model"],
        "organization_id": "org-local", "result_files": [], "seed": row["seed"],
        "status": row["status"], "trained_tokens": row["trained_tokens"],
        "training_file": row["training_file"], "validation_file": row["validation_file"],
        "estimated_finish": row["estimated_finish"], "integrations": [],
        "metadata": row["metadata"] or None, "method": method, "user_provided_suffix": row["suffix"],
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "fine_tuning.job.event", "created_at": row["created_at"],
        "level": row["level"], "message": row["message"], "type": row["type"], "data": row["data"] or {},
    }


def checkpoint_object(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "fine_tuning.job.checkpoint", "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": checkpoint_model_name(job, row["step"]),
        "fine_tuning_job_id": job["id"], "metrics": row["metrics"], "step_number": row["step"],
    }


def list_object(page: Page, convert: Any) -> dict[str, Any]:
    data = [convert(r) for r in page.rows]
    return {
        "object": "list", "data": data, "has_more": page.has_more,
        "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
    }


def fine_tuned_name(model: str, suffix: str | None, job_id: str) -> str:
    """`ft:<base>:<suffix>:<id>`, as OpenAI names tuned models (the org part is the suffix)."""
    return f"ft:{model}:{suffix or 'tunecraft'}:{job_id.removeprefix('ftjob-')}"


def checkpoint_model_name(job: dict[str, Any], step: int) -> str:
    return f"{fine_tuned_name(job['model'], job['suffix'], job['id'])}:ckpt-step-{step}"
