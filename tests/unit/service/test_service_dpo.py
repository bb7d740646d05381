"""Preference-tuning jobs: OpenAI's `method: {"type": "dpo", ...}` body becomes `train --method dpo`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tunecraft.service.jobs import JobRequest, train_command
from tunecraft.service.objects import job_object


def _dpo_body(**hyper: object) -> dict[str, object]:
    return {"model": "m", "training_file": "file-1",
            "method": {"type": "dpo", "dpo": {"hyperparameters": hyper}}}


def test_dpo_job_trains_with_method_dpo_and_its_beta() -> None:
    req = JobRequest.model_validate(_dpo_body(beta=0.25, n_epochs=2))
    hyper = req.hyper().model_dump()
    assert hyper["beta"] == 0.25 and hyper["n_epochs"] == 2
    job = {"run_dir": "/d/jobs/j/run", "resume": 0, "seed": 7, "hyperparameters": hyper,
           "method": {"type": req.method.type}}
    cmd = train_command(job, "m", Path("/d/files/p.jsonl"), None, [])
    joined = " ".join(cmd)
    assert "--method dpo" in joined and "train.dpo.beta=0.25" in joined and "--epochs 2" in joined
    auto = train_command({**job, "hyperparameters": JobRequest.model_validate(_dpo_body()).hyper().model_dump()},
                         "m", Path("/x"), None, [])
    assert "--method" in auto and not any(a.startswith("train.dpo.beta") for a in auto)
    supervised = train_command({**job, "method": {"type": "supervised"}}, "m", Path("/x"), None, [])
    assert "dpo" not in " ".join(supervised)


def test_dpo_job_object_reports_the_dpo_method() -> None:
    hyper = JobRequest.model_validate(_dpo_body(beta=0.5)).hyper().model_dump()
    row = {"id": "ftjob-1", "created_at": 1, "error": None, "fine_tuned_model": None, "finished_at": None,
           "hyperparameters": hyper, "resolved": {"n_epochs": 3}, "model": "m", "seed": 1, "status": "queued",
           "trained_tokens": None, "training_file": "file-1", "validation_file": None, "estimated_finish": None,
           "metadata": {}, "method": {"type": "dpo"}, "suffix": None}
    obj = job_object(row)
    assert obj["method"] == {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "n_epochs": 3}}}
    assert obj["method"]["dpo"]["hyperparameters"]["beta"] == 0.5


@pytest.mark.parametrize("beta", [0, -1, 11, "high"])
def test_bad_beta_is_refused(beta: object) -> None:
    with pytest.raises(ValidationError, match="beta"):
        JobRequest.model_validate(_dpo_body(beta=beta))
