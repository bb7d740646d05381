"""`tunecraft jobs ...`: the fine-tuning service from the terminal (stdlib HTTP, no SDK needed).

A thin client of the same REST API that the `openai` package talks to: upload a file and create
a job, list jobs, show one, print its events, cancel it.
"""

from __future__ import annotations

import json
import mimetypes
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecraft.errors import TunecraftError


class ServiceError(TunecraftError):
    """The server refused a request, or could not be reached."""


@dataclass(frozen=True)
class Client:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    api_key: str | None = None
    timeout_s: float = 60.0

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None) -> dict[str, Any]:
        req = urllib.request.Request(self.base_url.rstrip("/") + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"{method} {path}: HTTP {exc.code}: {_error_message(exc.read())}") from None
        except urllib.error.URLError as exc:
            raise ServiceError(f"cannot reach {self.base_url} ({exc.reason}); is `tunecraft serve --data-dir DIR` "
                               "running there?") from None

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path)

    def post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json.dumps(payload).encode(), "application/json")

    def upload(self, path: Path, purpose: str = "fine-tune") -> dict[str, Any]:
        """multipart/form-data with the file and its purpose, as `client.files.create` sends it."""
        boundary = secrets.token_hex(16)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n".encode(),
            path.read_bytes(), f"\r\n--{boundary}--\r\n".encode(),
        ]
        return self._request("POST", "/files", b"".join(parts), f"multipart/form-data; boundary={boundary}")


def _error_message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", errors="replace")[:500]


def create_job(client: Client, model: str, train: Path, val: Path | None = None, suffix: str | None = None,
               epochs: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Upload the files, then create the job (the two calls of OpenAI's fine-tuning guide)."""
    payload: dict[str, Any] = {"model": model, "training_file": client.upload(train)["id"]}
    if val is not None:
        payload["validation_file"] = client.upload(val)["id"]
    if suffix:
        payload["suffix"] = suffix
    if seed is not None:
        payload["seed"] = seed
    if epochs is not None:
        payload["method"] = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}}
    return client.post_json("/fine_tuning/jobs", payload)


def job_line(job: dict[str, Any]) -> str:
    done = f" -> {job['fine_tuned_model']}" if job.get("fine_tuned_model") else ""
    error = f" ({job['error']['message'].splitlines()[0]})" if job.get("error") else ""
    return f"{job['id']}  {job['status']:<16} {job['model']}{done}{error}"
