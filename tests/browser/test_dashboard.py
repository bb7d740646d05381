"""The dashboard in a real browser (headless chromium) against a real server and a tiny model:
a bad file's line errors; a good file to a job whose curve grows live, to `succeeded`, to a chat
with the tuned model; every view at 1280x800 and on a 390-px phone without horizontal scrolling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import ServiceProcess

from tunecraft import rundir

pytestmark = pytest.mark.browser
SCREENSHOTS = Path(__file__).parent / "screenshots"  # as the page fixture's (tests/browser/conftest.py)
FINAL = ("succeeded", "failed", "cancelled")


def test_a_bad_file_shows_its_line_errors(page: Any, files: dict[str, Path]) -> None:
    page.set_input_files("#train-file", str(files["bad"]))
    page.click("#upload")
    verdict = page.wait_for_selector("#check-verdict")
    assert "3 errors" in verdict.inner_text()
    where = page.locator("tr.issue.error td.where").all_inner_texts()
    assert "broken.jsonl:2" in where and "broken.jsonl:3" in where
    assert "invalid_json" in page.locator("tr.issue.error").first.inner_text()
    assert page.locator("#to-new-job").count() == 0  # no job from a file with errors


def _watch(page: Any, timeout: float = 150) -> list[tuple[str, int]]:
    """(status, training points on the chart) as the page shows them, until the job ends."""
    seen: list[tuple[str, int]] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = page.inner_text("#job-status")
        seen.append((status, int(page.get_attribute("#loss-chart", "data-train-points") or 0)))
        if status in FINAL:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the job did not end in {timeout} s: {seen[-3:]}")


def test_a_good_file_trains_live_and_the_tuned_model_answers(page: Any, files: dict[str, Path],
                                                             server: ServiceProcess) -> None:
    page.set_input_files("#train-file", str(files["train"]))
    page.set_input_files("#val-file", str(files["val"]))
    page.click("#upload")
    page.wait_for_selector("#to-new-job")
    assert page.locator("figure.example").count() == 2 and page.locator("figure.example mark").count() >= 2
    page.click("#to-new-job")
    page.wait_for_selector("#start-job")
    page.click("details summary")
    page.fill("input[name=n_epochs]", "10")
    page.fill("input[name=suffix]", "support")
    page.fill("input[name=time_budget]", "10m")
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    page.click("#start-job")
    page.wait_for_url("**/#job/*")
    job_id = page.url.rsplit("/", 1)[1]
    seen = _watch(page)
    assert seen[-1][0] == "succeeded", seen[-3:]
    running = [n for status, n in seen if status == "running" and n > 0]
    assert running and max(n for _, n in seen) > running[0], f"the curve never grew while running: {seen}"
    page.wait_for_selector("#curve-verdict")
    page.wait_for_function("document.querySelector('#loss-chart').dataset.valPoints > 0")
    assert page.evaluate("window.sameDocument") is True
    run = server.data_dir / "jobs" / job_id / "run"
    trained = [r for r in rundir.read_metrics(run) if r["type"] == "train"]
    assert int(page.get_attribute("#loss-chart", "data-train-points")) == len(trained)
    assert rundir.read_config(run).train.time_budget == 600  # the form's budget reached the job
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "job-page.png"), full_page=True)

    tuned = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}", headers=server.headers).json()["fine_tuned_model"]
    page.click("#to-play")
    page.wait_for_selector("#prompt")
    assert page.input_value("#model-b") == tuned
    page.fill("#prompt", "hello, about my refund")
    page.click("#send")
    page.wait_for_selector("#chat-a .msg.assistant.done", timeout=60_000)
    answer = page.wait_for_selector("#chat-b .msg.assistant.done", timeout=60_000)
    # The playground shows the tuned model's own (greedy) answer to that prompt, as the API gives it.
    direct = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, timeout=60, json={
        "model": tuned, "messages": [{"role": "user", "content": "hello, about my refund"}],
        "max_tokens": 128, "temperature": 0}).json()
    assert answer.text_content() == direct["choices"][0]["message"]["content"]
    assert answer.get_attribute("data-model") == tuned


@pytest.fixture(scope="module")
def finished_job(server: ServiceProcess, files: dict[str, Path]) -> str:
    """A succeeded job made through the API, for the views that show one."""
    with open(files["train"], "rb") as fh:
        fid = httpx.post(f"{server.url}/v1/files", headers=server.headers, files={"file": ("support.jsonl", fh)},
                         data={"purpose": "fine-tune"}).json()["id"]
    job = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.headers, json={
        "model": str(server.base), "training_file": fid, "hyperparameters": {"n_epochs": 1}}).json()
    deadline = time.time() + 150
    while (status := httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job['id']}", headers=server.headers).json()["status"]) \
            not in FINAL:
        assert time.time() < deadline, status
        time.sleep(0.5)
    assert status == "succeeded"
    return job["id"]


def _fits(page: Any) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


@pytest.mark.parametrize("size", [(1280, 800), (390, 844)], ids=["laptop", "phone"])
def test_every_view_fits_without_horizontal_scrolling(page: Any, finished_job: str, files: dict[str, Path],
                                                      size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    # The data view at its widest: a checked file with its tables and examples.
    page.set_input_files("#train-file", str(files["train"]))
    page.set_input_files("#val-file", str(files["val"]))
    page.click("#upload")
    page.wait_for_selector("#to-new-job")
    wide, inner = _fits(page)
    assert wide <= inner, f"data: {wide} > {inner}"
    for view, ready in (("#new", "#start-job"), ("#jobs", "table.jobs"), (f"#job/{finished_job}", "#to-export"),
                        (f"#compare/{finished_job}", "#run-eval"), (f"#export/{finished_job}", "#export-merged"),
                        ("#play", "#send")):
        page.evaluate(f"location.hash = '{view}'")
        page.wait_for_selector(ready)
        wide, inner = _fits(page)
        assert wide <= inner, f"{view}: {wide} > {inner} at {size}"
