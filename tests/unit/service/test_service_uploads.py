"""Uploads through the real app (in process): bounded size (413), stored whole under a server name."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.engine import ModelCache
from tunecraft.service.api import Service


def _client(tmp_path: Path, limit: int) -> tuple[TestClient, Service]:
    service = Service(tmp_path / "data", {}, {}, ModelCache(), max_file_bytes=limit)
    app = create_app({}, ServeSettings(api_key="k", max_body_bytes=4096), service)
    return TestClient(app, headers={"Authorization": "Bearer k"}), service


def test_upload_over_the_limit_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    client, service = _client(tmp_path, 10_000)
    with client:
        small = client.post("/v1/files", data={"purpose": "fine-tune"},
                            files={"file": ("a.jsonl", b'{"text": "x"}\n' * 500)})  # 7 kB: over the 4 kB JSON limit
        assert small.status_code == 200, small.text
        assert small.json()["bytes"] == 7000
        big = client.post("/v1/files", data={"purpose": "fine-tune"},
                          files={"file": ("b.jsonl", b"x" * 20_000)})
        assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"
        listed = client.get("/v1/files").json()["data"]
        assert [f["filename"] for f in listed] == ["a.jsonl"]
    stored = sorted(p.name for p in service.files_dir.iterdir())
    assert stored == [f"{small.json()['id']}.jsonl"]  # no temp file, nothing of the refused upload


def test_wrong_purpose_and_unknown_ids_are_openai_errors(tmp_path: Path) -> None:
    client, _ = _client(tmp_path, 10_000)
    with client:
        res = client.post("/v1/files", data={"purpose": "assistants"}, files={"file": ("a.jsonl", b"{}\n")})
        assert res.status_code == 400 and res.json()["error"]["param"] == "purpose"
        assert client.get("/v1/files/file-nope").status_code == 404
        job = client.post("/v1/fine_tuning/jobs", json={"model": "not-served", "training_file": "file-x"})
        assert job.status_code == 400 and job.json()["error"]["param"] == "model"
        bad = client.post("/v1/fine_tuning/jobs", json={"model": "m", "training_file": "f", "seed": -1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "seed"
