"""The service's SQLite store and object shapes: pagination, one-shot events, race-free transitions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tunecraft.service import objects
from tunecraft.service.jobs import JobRequest, train_command
from tunecraft.service.store import Store


def _job(store: Store, n: int) -> str:
    job_id = f"ftjob-{n:04d}"
    store.add_job({"id": job_id, "created_at": n, "status": "queued", "model": "m", "training_file": "file-1",
                   "validation_file": None, "suffix": None, "seed": 42, "metadata": {}, "method": {"type": "supervised"},
                   "hyperparameters": {"n_epochs": "auto"}, "run_dir": f"/runs/{job_id}"})
    return job_id


def test_pages_are_newest_first_with_after_cursor(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    ids = [_job(store, n) for n in range(5)]
    first = store.jobs(None, 2)
    assert [r["id"] for r in first.rows] == [ids[4], ids[3]] and first.has_more
    second = store.jobs(first.rows[-1]["id"], 2)
    assert [r["id"] for r in second.rows] == [ids[2], ids[1]] and second.has_more
    last = store.jobs(second.rows[-1]["id"], 2)
    assert [r["id"] for r in last.rows] == [ids[0]] and not last.has_more
    assert store.jobs("ftjob-unknown", 2).rows == []


def test_an_event_is_recorded_once_per_key_and_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    job = _job(store, 1)
    assert store.add_event(job, "metrics:train:3", "Step 3")
    assert not store.add_event(job, "metrics:train:3", "Step 3 again")  # mirrored twice after a restart
    store.close()
    again = Store(tmp_path / "s.sqlite")
    rows = again.events(job, None, 10).rows
    assert [r["message"] for r in rows] == ["Step 3"]


def test_transition_only_from_allowed_states(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    job = _job(store, 1)
    assert store.transition(job, ("queued",), status="running")
    assert not store.transition(job, ("queued",), status="running")  # a second caller loses the race
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.transition(job, ("running",), status="cancelled")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and store.job(job)["status"] == "cancelled"


def test_job_object_has_the_fields_the_openai_client_reads(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    job = store.job(_job(store, 1))
    obj = objects.job_object(job)
    for key in ("id", "object", "created_at", "error", "fine_tuned_model", "finished_at", "hyperparameters",
                "model", "organization_id", "result_files", "seed", "status", "trained_tokens",
                "training_file", "validation_file", "estimated_finish", "method"):
        assert key in obj, key
    assert obj["object"] == "fine_tuning.job" and obj["method"]["type"] == "supervised"
    assert objects.fine_tuned_name("smollm2", "acme", "ftjob-abc") == "ft:smollm2:acme:abc"


def test_job_request_validates_like_openai() -> None:
    ok = JobRequest.model_validate({"model": "m", "training_file": "file-1", "hyperparameters": {"n_epochs": 3}})
    assert ok.hyper().n_epochs == 3 and ok.hyper().batch_size == "auto"
    via_method = JobRequest.model_validate({"model": "m", "training_file": "f", "method": {
        "type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 2.0}}}})
    assert via_method.hyper().learning_rate_multiplier == 2.0
    for bad in ({"suffix": "../x"}, {"seed": 2**40}, {"hyperparameters": {"n_epochs": 0}},
                {"hyperparameters": {"learning_rate_multiplier": -1}}, {"method": {"type": "reinforcement"}}):
        with pytest.raises(ValueError):
            JobRequest.model_validate({"model": "m", "training_file": "f", **bad})


def test_train_command_maps_hyperparameters_to_cli_flags(tmp_path: Path) -> None:
    job = {"run_dir": "/d/jobs/j/run", "resume": 0, "seed": 7,
           "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}}
    cmd = train_command(job, "smollm2-135m-instruct", Path("/d/files/a.jsonl"), None, ["train.threads=1"])
    assert cmd[1:4] == ["-m", "tunecraft.service.child", "train"]
    joined = " ".join(cmd)
    assert "--model smollm2-135m-instruct" in joined and "--epochs 2" in joined and "--seed 7" in joined
    assert "--batch-size" not in joined and "train.lr_multiplier=0.5" in joined and cmd[-1] == "train.threads=1"
    resumed = train_command({**job, "resume": 1}, "m", Path("/x"), None, [])
    assert resumed[-3:] == ["--resume", "--out", "/d/jobs/j/run"]


def test_job_settings_are_checked_and_come_last_on_the_command_line() -> None:
    req = JobRequest.model_validate({"model": "m", "training_file": "f",
                                     "settings": {"train.method": "lora", "train.time_budget": "2m", "lora.r": 4}})
    job = {"run_dir": "/d/jobs/j/run", "resume": 0, "seed": 1, "hyperparameters": {},
           "method": {"type": "supervised", "settings": req.settings}}
    cmd = train_command(job, "m", Path("/x"), None, ["train.method=full"])
    assert cmd[-4:] == ["train.method=full", "train.method=lora", "train.time_budget=2m", "lora.r=4"]
    for bad, says in (({"train.out": "/etc"}, "cannot be set per job"), ({"model.trust_remote_code": True}, "cannot"),
                      ({"train.method": "lorax"}, "train.method"), ({"train.lr": -1}, "train.lr")):
        with pytest.raises(ValueError, match=says):
            JobRequest.model_validate({"model": "m", "training_file": "f", "settings": bad})
