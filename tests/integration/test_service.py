"""The fine-tuning service end to end: the official `openai` client against `tunecraft serve --data-dir`.

A real server process on loopback, a tiny random base model, real jobs trained by child
processes, a real SQLite file; kill -9 and restart included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from safetensors.torch import load_file
from processes import ServiceProcess
from tiny import write_chat_data

KEY = "service-key"
# Deterministic jobs (bit-identical resume) on one thread each: the test machine has 2 cores.
JOB_SETTINGS = ["train.deterministic=true", "train.threads=1", "train.save_every=1", "train.eval_every=2",
                "train.patience=null", "train.batch_size=8"]


class Server(ServiceProcess):
    """`tunecraft serve BASE --data-dir DIR` with this file's key and job settings."""

    def __init__(self, base: Path, data_dir: Path, port: int | None = None) -> None:
        super().__init__(base, data_dir, KEY, JOB_SETTINGS, port)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service-data")
    bad = root / "bad.jsonl"
    rows = [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}),
            "{not json", json.dumps({"messages": [{"role": "robot", "content": "x"}]})]
    bad.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"train": write_chat_data(root / "train.jsonl", 48, seed=3),
            "val": write_chat_data(root / "val.jsonl", 16, seed=4), "bad": bad}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_model_dir, tmp_path_factory.mktemp("service") / "data").start()
    yield srv
    srv.stop()


def _wait(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still {job.status} after {timeout} s")


def _start_job(server: Server, data: dict[str, Path], base: Path, epochs: int) -> tuple[openai.OpenAI, object, Path]:
    """Upload the training file and create a job: (client, job, its run directory)."""
    client = server.client()
    training = client.files.create(file=open(data["train"], "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model=str(base),
                                         hyperparameters={"n_epochs": epochs})
    return client, job, server.data_dir / "jobs" / job.id / "run"


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_openai_fine_tuning_guide_script(server: Server, data: dict[str, Path], tiny_model_dir: Path) -> None:
    """OpenAI's guide, unchanged but for base_url and api_key."""
    client = server.client()
    base = str(tiny_model_dir)
    assert base in {m.id for m in client.models.list().data}
    training = client.files.create(file=open(data["train"], "rb"), purpose="fine-tune")
    validation = client.files.create(file=open(data["val"], "rb"), purpose="fine-tune")
    assert training.object == "file" and training.filename == "train.jsonl" and training.bytes > 0
    job = client.fine_tuning.jobs.create(
        training_file=training.id, validation_file=validation.id, model=base, suffix="guide", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        metadata={"team": "support"},
    )
    assert job.status == "validating_files" and job.model == base and job.seed == 7
    # The API answers within a second while the job trains in its child process.
    while client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued"):
        time.sleep(0.2)
    t0 = time.time()
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert time.time() - t0 < 1.0
    t0 = time.time()  # chat with the base model is answered meanwhile too
    client.chat.completions.create(model=base, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert time.time() - t0 < 1.0
    done = _wait(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{base}:guide:{job.id.removeprefix('ftjob-')}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at
    assert done.metadata == {"team": "support"}
    assert done.method.supervised.hyperparameters.n_epochs == 2

    events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=200).data
    messages = [e.message for e in events]
    assert any(m.startswith("Files validated") for m in messages)
    assert any(m.startswith("train.lr = ") for m in messages)  # the plan's auto settings
    assert any(m.startswith("Step 12/12: training loss=") for m in messages)  # 48 rows / 8 x 2 epochs
    assert any("validation loss=" in m for m in messages)
    assert any(m.startswith("Training curves: ") for m in messages)  # the verdict
    assert messages[0].startswith("The job has successfully completed")  # newest first
    page = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=3)
    assert len(page.data) == 3 and page.has_more
    nxt = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=3, after=page.data[-1].id)
    assert [e.id for e in nxt.data] == [e.id for e in events[3:6]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 12
    assert checkpoints[0].metrics.train_loss is not None and checkpoints[0].metrics.valid_loss is not None
    name = checkpoints[-1].fine_tuned_model_checkpoint
    assert name.startswith(done.fine_tuned_model + ":ckpt-step-")

    assert done.fine_tuned_model in {m.id for m in client.models.list().data}  # hot-loaded
    reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=8,
                                           messages=[{"role": "user", "content": "hello, about my refund"}])
    assert reply.choices[0].message.content is not None and reply.model == done.fine_tuned_model
    reply = client.chat.completions.create(model=name, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert reply.model == name  # a checkpoint is servable by its name

    second = client.fine_tuning.jobs.create(training_file=training.id, model=base)
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"
    listed = client.fine_tuning.jobs.list(limit=1)
    assert len(listed.data) == 1 and listed.data[0].id == second.id and listed.has_more
    older = client.fine_tuning.jobs.list(limit=1, after=second.id)
    assert older.data[0].id == job.id
    assert {j.id for j in client.fine_tuning.jobs.list(limit=1)} >= {job.id, second.id}  # the client pages itself
    # The run directory is the CLI's: the deliverable and the verdict are where `tunecraft` puts them.
    run = server.data_dir / "jobs" / job.id / "run"
    assert json.loads((run / "summary.json").read_text())["verdict"]["status"] in ("healthy", "underfitting")


def test_malformed_upload_fails_at_validating_files_with_its_lines(server: Server, data: dict[str, Path],
                                                                 tiny_model_dir: Path) -> None:
    client = server.client()
    bad = client.files.create(file=("support.jsonl", data["bad"].read_bytes()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=bad.id, model=str(tiny_model_dir))
    failed = _wait(client, job.id, ("failed", "succeeded", "running"), timeout=60)
    assert failed.status == "failed"
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "support.jsonl:2:" in failed.error.message and "support.jsonl:3:" in failed.error.message
    assert not (server.data_dir / "jobs" / job.id / "run" / "model").exists()  # no weights were loaded


def test_every_route_needs_the_key_but_health(server: Server) -> None:
    routes = [("GET", "/v1/models"), ("GET", "/v1/files"), ("POST", "/v1/files"), ("GET", "/v1/files/file-x"),
              ("DELETE", "/v1/files/file-x"), ("GET", "/v1/files/file-x/content"), ("POST", "/v1/fine_tuning/jobs"),
              ("GET", "/v1/fine_tuning/jobs"), ("GET", "/v1/fine_tuning/jobs/ftjob-x"),
              ("POST", "/v1/fine_tuning/jobs/ftjob-x/cancel"), ("POST", "/v1/fine_tuning/jobs/ftjob-x/pause"),
              ("POST", "/v1/fine_tuning/jobs/ftjob-x/resume"), ("GET", "/v1/fine_tuning/jobs/ftjob-x/events"),
              ("GET", "/v1/fine_tuning/jobs/ftjob-x/checkpoints"), ("POST", "/v1/chat/completions"),
              ("POST", "/v1/completions")]
    for method, path in routes:
        res = httpx.request(method, server.url + path, timeout=10)
        assert res.status_code == 401, (method, path, res.status_code)
        assert res.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_a_file_name_is_metadata_never_a_path(server: Server, data: dict[str, Path]) -> None:
    client = server.client()
    sneaky = client.files.create(file=("../../escape.jsonl", data["train"].read_bytes()), purpose="fine-tune")
    assert sneaky.filename == "../../escape.jsonl"
    stored = list((server.data_dir / "files").glob(f"{sneaky.id}*"))
    assert len(stored) == 1 and stored[0].parent == server.data_dir / "files"
    assert not (server.data_dir.parent / "escape.jsonl").exists()
    assert not list(server.data_dir.parent.parent.glob("escape.jsonl"))
    assert client.files.content(sneaky.id).read() == data["train"].read_bytes()
    assert client.files.retrieve(sneaky.id).filename == "../../escape.jsonl"
    assert client.files.delete(sneaky.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(sneaky.id)


def test_two_clients_at_once_get_two_jobs_queued_in_order(server: Server, data: dict[str, Path],
                                                          tiny_model_dir: Path) -> None:
    client = server.client()
    training = client.files.create(file=open(data["train"], "rb"), purpose="fine-tune")
    created: list[object] = []
    gate = threading.Barrier(2)

    def create() -> None:
        gate.wait()
        created.append(server.client().fine_tuning.jobs.create(
            training_file=training.id, model=str(tiny_model_dir), hyperparameters={"n_epochs": 1}))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [j.id for j in created]
    assert len(set(ids)) == 2
    order = [j.id for j in client.fine_tuning.jobs.list(limit=2).data][::-1]  # oldest first
    assert set(order) == set(ids)
    first, second = (client.fine_tuning.jobs.retrieve(i) for i in order)
    done_first = _wait(client, first.id, ("succeeded", "failed"))
    assert done_first.status == "succeeded"
    done_second = _wait(client, second.id, ("succeeded", "failed"))
    assert done_second.status == "succeeded"
    assert done_second.finished_at >= done_first.finished_at  # one at a time, in creation order


def test_pause_and_resume_continue_to_the_same_model(server: Server, data: dict[str, Path],
                                                     tiny_model_dir: Path) -> None:
    client, job, run = _start_job(server, data, tiny_model_dir, 3)
    _wait_for_checkpoint(run, 2)
    paused = httpx.post(f"{server.url}/v1/fine_tuning/jobs/{job.id}/pause",
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert paused["status"] == "paused"
    time.sleep(1.0)
    resumed = httpx.post(f"{server.url}/v1/fine_tuning/jobs/{job.id}/resume",
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert resumed["status"] == "queued"
    assert _wait(client, job.id, ("succeeded", "failed")).status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=500).data]
    assert any("paused" in m for m in messages) and any(m.startswith("Resuming") for m in messages)


def _wait_for_checkpoint(run: Path, step: int, timeout: float = 120) -> None:
    from tunecraft.rundir import checkpoint_steps

    deadline = time.time() + timeout
    while time.time() < deadline:
        if run.is_dir() and any(s >= step for s in checkpoint_steps(run)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint >= {step} in {run}")


def test_kill9_mid_job_then_restart_resumes_to_the_same_weights(tiny_model_dir: Path, data: dict[str, Path],
                                                                tmp_path: Path) -> None:
    straight_srv = Server(tiny_model_dir, tmp_path / "straight").start()
    try:
        client = straight_srv.client()
        f = client.files.create(file=open(data["train"], "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(training_file=f.id, model=str(tiny_model_dir), hyperparameters={"n_epochs": 3})
        assert _wait(client, job.id, ("succeeded", "failed")).status == "succeeded"
        straight = _weights(straight_srv.data_dir / "jobs" / job.id / "run")
    finally:
        straight_srv.stop()

    srv = Server(tiny_model_dir, tmp_path / "broken").start()
    client = srv.client()
    f = client.files.create(file=open(data["train"], "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model=str(tiny_model_dir), hyperparameters={"n_epochs": 3})
    run = srv.data_dir / "jobs" / job.id / "run"
    _wait_for_checkpoint(run, 4)
    srv.kill9()
    time.sleep(0.5)
    children = subprocess.run(["pgrep", "-f", f"tunecraft.service.child.*{job.id}"], capture_output=True, text=True)
    assert children.stdout.strip() == "", "a training child outlived the server"
    srv = Server(tiny_model_dir, tmp_path / "broken", srv.port).start()
    try:
        client = srv.client()
        done = _wait(client, job.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert len(client.fine_tuning.jobs.list(limit=100).data) == 1  # no duplicate job
        assert client.files.retrieve(f.id).bytes == data["train"].stat().st_size  # the upload survived
        events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=1000).data
        messages = [e.message for e in events]
        assert any("server restarted" in m for m in messages)
        for step in (1, 2, 3, 4):  # events from before the kill are still there
            assert any(m.startswith(f"Step {step}/18:") for m in messages), step
        broken = _weights(run)
    finally:
        srv.stop()
    assert straight.keys() == broken.keys()
    for key, value in straight.items():
        assert (value == broken[key]).all(), key


def test_jobs_cli_mirrors_the_api(server: Server, data: dict[str, Path], tiny_model_dir: Path) -> None:
    def cli(*args: str) -> str:
        res = subprocess.run([sys.executable, "-m", "tunecraft", "jobs", *args, "--url", f"{server.url}/v1",
                              "--api-key", KEY], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "200"})
        assert res.returncode == 0, res.stderr
        return res.stdout

    created = cli("create", "--model", str(tiny_model_dir), "--data", str(data["train"]), "--suffix", "cli",
                  "--epochs", "1")
    job_id = created.split()[0]
    assert job_id.startswith("ftjob-") and "validating_files" in created
    assert job_id in cli("list", "--limit", "5")
    assert _wait(server.client(), job_id, ("succeeded", "failed")).status == "succeeded"
    shown = json.loads(cli("show", job_id))
    assert shown["fine_tuned_model"].startswith(f"ft:{tiny_model_dir}:cli:")
    events = cli("events", job_id, "--limit", "200")
    assert events.index("Created fine-tuning job") < events.index("successfully completed")  # oldest first
    second = cli("create", "--model", str(tiny_model_dir), "--data", str(data["train"])).split()[0]
    assert "cancelled" in cli("cancel", second)
    res = subprocess.run([sys.executable, "-m", "tunecraft", "jobs", "list", "--url", f"{server.url}/v1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "HTTP 401" in res.stderr  # no key: a clear error, no traceback


def test_cancel_stops_a_running_child_within_seconds_and_keeps_its_checkpoint(
        server: Server, data: dict[str, Path], tiny_model_dir: Path) -> None:
    client, job, run = _start_job(server, data, tiny_model_dir, 50)
    _wait_for_checkpoint(run, 3)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.time() + 15
    while time.time() < deadline:
        messages = [e.message for e in client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=5).data]
        if any(m.startswith("The job was cancelled") for m in messages):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the child did not stop within 15 s of the cancel")
    from tunecraft.rundir import checkpoint_steps, read_events

    assert checkpoint_steps(run)  # the last checkpoint is kept
    assert read_events(run)[-1]["event"] == "interrupted"  # the loop stopped at a step boundary
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
