"""The dashboard's server side: its static page (no key, no data, nothing from elsewhere) and the
`/v1/dashboard` JSON, against a real `tunecraft serve --data-dir` process and a tiny model.

Each answer is checked against what the CLI's own functions write: the run directory's
metrics, config and eval.json, the export folder.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from processes import ServiceProcess
from tiny import write_chat_data

from tunecraft import rundir
from tunecraft.service.dashboard import ASSETS, WEB

KEY = "dashboard-key"
JOB_SETTINGS = ["train.threads=1", "train.eval_every=2", "train.patience=null", "train.batch_size=8"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    srv = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("dashboard") / "data", KEY, JOB_SETTINGS).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dashboard-data")
    train = write_chat_data(root / "train.jsonl", 48, seed=3)
    val = write_chat_data(root / "val.jsonl", 15, seed=4)
    with open(val, "a", encoding="utf-8") as fh:  # line 16 is training line 1: a leak
        fh.write(train.read_text(encoding="utf-8").splitlines()[0] + "\n")
    bad = root / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
                   '{not json\n{"messages": [{"role": "robot", "content": "x"}]}\n', encoding="utf-8")
    return {"train": train, "val": val, "bad": bad, "test": write_chat_data(root / "test.jsonl", 8, seed=5)}


def _upload(server: ServiceProcess, path: Path) -> str:
    with open(path, "rb") as fh:
        res = httpx.post(f"{server.url}/v1/files", headers=server.headers, files={"file": (path.name, fh)},
                         data={"purpose": "fine-tune"}, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()["id"]


def _get(server: ServiceProcess, path: str, **params: str) -> dict:
    res = httpx.get(f"{server.url}{path}", headers=server.headers, params=params, timeout=120)
    assert res.status_code == 200, res.text
    return res.json()


def _wait(predicate, timeout: float = 180, what: str = "") -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_needs_no_key_the_data_does_and_nothing_comes_from_elsewhere(server: ServiceProcess) -> None:
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ASSETS:
        assert httpx.get(f"{server.url}/dashboard/{name}", timeout=10).status_code == 200, name
    assert httpx.get(f"{server.url}/v1/dashboard/info", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/dashboard/secret.py", timeout=10).status_code == 401  # not a public file
    assert httpx.get(f"{server.url}/dashboard/secret.py", headers=server.headers, timeout=10).status_code == 404
    # Every file the page loads is on disk in the package, and none names another host.
    for path in WEB.iterdir():
        text = path.read_text(encoding="utf-8")
        elsewhere = [u for u in re.findall(r"https?://[^\s\"'`)]+", text) if u != "http://www.w3.org/2000/svg"]
        assert not elsewhere, f"{path.name}: {elsewhere}"
    assert {p.name for p in WEB.iterdir()} == set(ASSETS)


def test_check_gives_a_bad_files_lines_and_a_good_files_stats_examples_and_leaks(
        server: ServiceProcess, files: dict[str, Path]) -> None:
    bad = _get(server, f"/v1/dashboard/files/{_upload(server, files['bad'])}/check")
    errors = [(i["path"], i["line"], i["code"]) for i in bad["issues"] if i["severity"] == "error"]
    assert ("bad.jsonl", 2, "invalid_json") in errors and any(line == 3 for _, line, _ in errors)
    assert bad["ok"] is False and bad["examples"] == []

    train_id, val_id = _upload(server, files["train"]), _upload(server, files["val"])
    good = _get(server, f"/v1/dashboard/files/{train_id}/check", validation_file=val_id)
    assert good["ok"] is True
    stats = {f["role"]: f for f in good["files"]}
    assert stats["train"]["path"] == "train.jsonl" and stats["train"]["examples"] == 48
    assert stats["train"]["stats"]["loss_tokens"] > 0
    leak = [i for i in good["issues"] if i["code"] == "leak_exact"]
    assert leak and leak[0]["path"] == "val.jsonl" and leak[0]["line"] == 16
    assert str(server.data_dir) not in json.dumps(good)  # server paths never reach the page
    assert len(good["examples"]) == 2
    first = json.loads(files["train"].read_text(encoding="utf-8").splitlines()[0])
    trained = "".join(r["text"] for r in good["examples"][0]["runs"] if r["loss"])
    context = "".join(r["text"] for r in good["examples"][0]["runs"] if not r["loss"])
    assert first["messages"][1]["content"] in trained and first["messages"][0]["content"] in context


def test_plan_is_the_jobs_own_dry_run_with_reasons_and_estimate(server: ServiceProcess, files: dict[str, Path]) -> None:
    train_id = _upload(server, files["train"])
    body = {"model": str(server.base), "training_file": train_id, "hyperparameters": {"n_epochs": 2},
            "settings": {"train.method": "lora", "lora.r": 4}}
    res = httpx.post(f"{server.url}/v1/dashboard/plan", headers=server.headers, json=body, timeout=300)
    assert res.status_code == 200, res.text
    plan = res.json()
    assert plan["method"] == "lora" and plan["epochs"] == 2 and plan["batch_size"] == 8  # job, then server settings
    assert plan["estimated_s"] > 0 and all(c["reason"] for c in plan["choices"])
    assert not list((server.data_dir / "previews").glob("*/run"))  # a dry run writes no run
    refused = httpx.post(f"{server.url}/v1/dashboard/plan", headers=server.headers,
                         json={**body, "settings": {"train.out": "/tmp/x"}}, timeout=30)
    assert refused.status_code == 400 and "cannot be set per job" in refused.json()["error"]["message"]


def test_a_jobs_curves_verdict_eval_and_export(server: ServiceProcess, files: dict[str, Path]) -> None:
    train_id, test_id = _upload(server, files["train"]), _upload(server, files["test"])
    job = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.headers, timeout=30, json={
        "model": str(server.base), "training_file": train_id, "suffix": "dash",
        "hyperparameters": {"n_epochs": 2}, "settings": {"train.method": "lora", "lora.r": 4}}).json()
    early = httpx.post(f"{server.url}/v1/dashboard/jobs/{job['id']}/export", headers=server.headers,
                       json={"format": "adapter"}, timeout=30)
    assert early.status_code == 400 and "no model yet" in early.json()["error"]["message"]
    _wait(lambda: _get(server, f"/v1/fine_tuning/jobs/{job['id']}")["status"] in ("succeeded", "failed"), what="the job")
    view = _get(server, f"/v1/dashboard/jobs/{job['id']}")
    assert view["job"]["status"] == "succeeded", view["job"]["error"]
    run = Path(view["run_dir"])
    metrics = rundir.read_metrics(run)
    assert view["curve"]["train"] == [[r["step"], r["loss"]] for r in metrics if r["type"] == "train"]
    assert len(view["curve"]["val"]) == len([r for r in metrics if r["type"] == "eval"]) >= 2
    assert view["total_steps"] == len(view["curve"]["train"])
    assert view["verdict"]["status"] in ("healthy", "underfitting", "overfitting", "memorizing")
    assert rundir.read_config(run).lora.r == 4 and view["settings"] == {"train.method": "lora", "lora.r": 4}

    started = httpx.post(f"{server.url}/v1/dashboard/jobs/{job['id']}/eval", headers=server.headers,
                         json={"test_file": test_id, "limit": 4}, timeout=30)
    assert started.status_code == 200, started.text
    _wait(lambda: _get(server, f"/v1/dashboard/jobs/{job['id']}")["tasks"]["eval"]["state"] != "running", what="eval")
    view = _get(server, f"/v1/dashboard/jobs/{job['id']}")
    assert view["tasks"]["eval"]["state"] == "succeeded", view["tasks"]["eval"]
    written = rundir.read_eval(run)
    assert view["eval"]["systems"] == written["systems"] and {"base", "prompted", "tuned"} <= set(written["systems"])
    assert view["eval"]["ship"] == written["ship"] and view["eval"]["has_report"]
    # The test file by the client's name, as the data check does: server paths never reach the page.
    assert view["eval"]["test_file"] == {"id": test_id, "filename": "test.jsonl"}
    assert str(server.data_dir / "files") not in json.dumps(view["eval"])
    assert all(c["where"].startswith("test.jsonl:") for kind in ("fixed", "broken") for c in view["eval"]["flipped"][kind])
    report = httpx.get(f"{server.url}/v1/dashboard/jobs/{job['id']}/report", headers=server.headers, timeout=30)
    assert report.status_code == 200 and "<html" in report.text.lower()

    assert httpx.post(f"{server.url}/v1/dashboard/jobs/{job['id']}/export", headers=server.headers,
                      json={"format": "adapter"}, timeout=30).status_code == 200
    _wait(lambda: _get(server, f"/v1/dashboard/jobs/{job['id']}")["tasks"]["export:adapter"]["state"] != "running",
          what="export")
    view = _get(server, f"/v1/dashboard/jobs/{job['id']}")
    assert view["tasks"]["export:adapter"]["state"] == "succeeded", view["tasks"]["export:adapter"]
    adapter = view["exports"]["adapter"]
    assert "adapter_model.safetensors" in adapter["files"]
    assert (Path(adapter["path"]) / "adapter_model.safetensors").is_file()
    assert any(c.startswith("vllm serve") for c in adapter["commands"])
