"""The dashboard in a real browser (headless chromium) against a real server and a tiny model:
sign-in (the key in this tab's sessionStorage only); a bad file's line errors; a good file's
statistics, leak and loss-bearing tokens; the plan's auto settings with their reasons; a job whose
curve grows live, to `succeeded`, to a chat with the tuned model beside the base; pause, resume,
cancel; an overfitting onset marked on the curve; base / prompted / tuned / classical compared with
intervals, flips and the report; exports with their commands; every view at 1280x800 and on a
390-px phone without horizontal scrolling or a word broken in two.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import ServiceProcess

from tunecraft import curves, rundir

pytestmark = pytest.mark.browser
SCREENSHOTS = Path(__file__).parent / "screenshots"  # as the page fixture's (tests/browser/conftest.py)
FINAL = ("succeeded", "failed", "cancelled")


def _upload(server: ServiceProcess, path: Path) -> str:
    with open(path, "rb") as fh:
        res = httpx.post(f"{server.url}/v1/files", headers=server.headers, files={"file": (path.name, fh)},
                         data={"purpose": "fine-tune"}, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()["id"]


def _create_job(server: ServiceProcess, train: Path, val: Path | None = None, **body: Any) -> str:
    """A job made through the API (the views under test only show it)."""
    request = {"model": str(server.base), "training_file": _upload(server, train), **body}
    if val is not None:
        request["validation_file"] = _upload(server, val)
    res = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=server.headers, json=request, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()["id"]


def _job(server: ServiceProcess, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}", headers=server.headers, timeout=30).json()


def _finish(server: ServiceProcess, job_id: str, timeout: float = 150) -> dict[str, Any]:
    deadline = time.time() + timeout
    while (job := _job(server, job_id))["status"] not in FINAL:
        assert time.time() < deadline, job["status"]
        time.sleep(0.5)
    assert job["status"] == "succeeded", job["error"]
    return job


def test_sign_in_keeps_the_key_in_this_tab_only(browser: Any, server: ServiceProcess) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    sent: list[str] = []
    tab.on("request", lambda r: sent.append(r.headers.get("authorization", "")) if "/v1/" in r.url else None)
    tab.goto(server.url + "/")
    tab.wait_for_selector("#login[open]")
    tab.fill("#login-key", "not-the-key")
    tab.click("#login-submit")
    tab.wait_for_function("() => document.querySelector('#login-error').textContent.includes('refused')")
    assert tab.evaluate("sessionStorage.getItem('tunecraft.apiKey')") is None  # a refused key is not kept
    tab.fill("#login-key", server.api_key)
    tab.click("#login-submit")
    tab.wait_for_selector("#train-file")
    assert tab.evaluate("sessionStorage.getItem('tunecraft.apiKey')") == server.api_key
    assert tab.evaluate("localStorage.length") == 0 and context.cookies() == []  # nothing outlives the tab
    assert sent[-1] == f"Bearer {server.api_key}"
    tab.reload()  # the same tab keeps it: no second prompt
    tab.wait_for_selector("#train-file")
    assert not tab.locator("#login").evaluate("d => d.open")
    other = browser.new_context().new_page()  # another browser session asks again
    other.goto(server.url + "/")
    other.wait_for_selector("#login[open]")
    other.context.close()
    tab.click("#logout")
    tab.wait_for_selector("#login[open]")
    assert tab.evaluate("sessionStorage.getItem('tunecraft.apiKey')") is None
    SCREENSHOTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / "sign-in.png"))
    context.close()


def test_a_bad_file_shows_its_line_errors(page: Any, files: dict[str, Path]) -> None:
    page.set_input_files("#train-file", str(files["bad"]))
    page.click("#upload")
    verdict = page.wait_for_selector("#check-verdict")
    assert "3 errors" in verdict.inner_text()
    where = page.locator("tr.issue.error td.where").all_inner_texts()
    assert "broken.jsonl:2" in where and "broken.jsonl:3" in where
    assert "invalid_json" in page.locator("tr.issue.error").first.inner_text()
    assert page.locator("#to-new-job").count() == 0  # no job from a file with errors


def test_a_good_file_shows_its_statistics_leak_and_loss_bearing_tokens(page: Any, files: dict[str, Path]) -> None:
    page.set_input_files("#train-file", str(files["train"]))
    page.set_input_files("#val-file", str(files["leaky_val"]))
    page.click("#upload")
    page.wait_for_selector("#to-new-job")
    assert "the data is valid" in page.inner_text("#check-verdict")
    stats = {row.split("\t")[0]: row.split("\t")[1:] for row in page.locator("table.stats tbody tr").all_inner_texts()}
    assert stats["examples"] == ["48", "16"] and int(stats["loss-bearing tokens"][0].replace(",", "")) > 0
    leaks = page.locator("ul.leaks li").all_inner_texts()
    assert any(t.startswith("support-leaky-val.jsonl:16") and "identical to training example support.jsonl:1;" in t
               for t in leaks), leaks
    # The examples as training sees them: the answers (and only those) highlighted as loss-bearing.
    rows = [json.loads(line) for line in files["train"].read_text(encoding="utf-8").splitlines()[:2]]
    for figure, row in zip(page.locator("figure.example").all(), rows, strict=True):
        marked = "".join(figure.locator("mark").all_text_contents())
        assert row["messages"][1]["content"] in marked and row["messages"][0]["content"] not in marked
        assert row["messages"][0]["content"] in figure.locator("pre").text_content()


def test_the_estimate_shows_each_auto_setting_with_its_reason(page: Any, files: dict[str, Path],
                                                              server: ServiceProcess) -> None:
    train_id = _upload(server, files["train"])
    page.evaluate(f"location.hash = '#new?file={train_id}'")
    page.wait_for_selector("#estimate")
    assert page.locator("select[name=model] option").all_inner_texts() == [str(server.base)]
    assert page.locator("select[name=method] option").all_inner_texts() == ["auto", "lora", "full"]
    page.select_option("select[name=method]", "lora")
    page.fill("input[name=time_budget]", "5m")
    page.click("details summary")
    page.fill("textarea[name=overrides]", "lora.r=4")
    with page.expect_response("**/v1/dashboard/plan", timeout=300_000) as answer:
        page.click("#estimate")
    plan = answer.value.json()
    page.wait_for_selector("#plan-estimate")
    assert plan["method"] == "lora" and plan["estimated_s"] > 0
    assert f"Estimated training time {plan['estimate']}" in page.inner_text("#plan-estimate")
    shown = [row.split("\t") for row in page.locator("table.choices tbody tr").all_inner_texts()]
    assert [r[0] for r in shown] == [c["field"] for c in plan["choices"]] and all(r[2].strip() for r in shown)
    assert any(r[0] == "train.max_steps" or r[0] == "train.epochs" for r in shown)


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
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.valPoints) > 0")
    assert page.evaluate("window.sameDocument") is True
    run = server.data_dir / "jobs" / job_id / "run"
    trained = [r for r in rundir.read_metrics(run) if r["type"] == "train"]
    assert int(page.get_attribute("#loss-chart", "data-train-points")) == len(trained)
    assert rundir.read_config(run).train.time_budget == 600  # the form's budget reached the job
    # Events and checkpoints as the API lists them (metrics events are drawn, not listed).
    events = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000},
                       headers=server.headers).json()["data"]
    page.wait_for_timeout(1500)  # the page's last refresh after the end
    listed = page.evaluate("[...document.querySelectorAll('#events li')]"
                           ".map((li) => li.textContent.slice(li.querySelector('time').textContent.length + 1))")
    assert listed == [e["message"] for e in events if e["type"] != "metrics"]
    kept = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=server.headers).json()["data"]
    steps = [row.split("\t")[0] for row in page.locator("table.checkpoints tbody tr").all_inner_texts()]
    assert kept and steps == [str(c["step_number"]) for c in kept]

    tuned = _job(server, job_id)["fine_tuned_model"]
    page.click("#to-play")
    page.wait_for_selector("#prompt")
    served = [m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=server.headers).json()["data"]]
    assert page.locator("#model-a option").all_inner_texts() == served  # any served model can be picked
    assert page.input_value("#model-a") == str(server.base) and page.input_value("#model-b") == tuned
    page.fill("#prompt", "hello, about my refund")
    page.click("#send")
    # The same prompt to both, side by side; each pane shows its model's own (greedy) answer as the API gives it.
    for pane, model in (("#chat-a", str(server.base)), ("#chat-b", tuned)):
        answer = page.wait_for_selector(f"{pane} .msg.assistant.done", timeout=60_000)
        assert page.inner_text(f"{pane} .msg.user") == "hello, about my refund"
        direct = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": "hello, about my refund"}],
            "max_tokens": 128, "temperature": 0}).json()
        assert answer.text_content() == direct["choices"][0]["message"]["content"]
        assert answer.get_attribute("data-model") == model


def _status_is(page: Any, *wanted: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while (status := page.inner_text("#job-status")) not in wanted:
        assert time.time() < deadline and status not in FINAL, f"{status}, not {wanted}: {page.inner_text('#progress')}"
        time.sleep(0.1)
    return status


def test_pause_resume_and_cancel_from_the_job_page(page: Any, files: dict[str, Path], server: ServiceProcess) -> None:
    job_id = _create_job(server, files["train"], hyperparameters={"n_epochs": 40})  # long enough to act on
    page.evaluate(f"location.hash = '#job/{job_id}'")
    _status_is(page, "running")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.trainPoints) > 0")
    assert page.is_enabled("#pause") and page.is_disabled("#resume") and page.is_enabled("#cancel")
    page.click("#pause")
    _status_is(page, "paused")
    assert _job(server, job_id)["status"] == "paused"
    assert page.is_disabled("#pause") and page.is_enabled("#resume")
    page.wait_for_selector("#events li:has-text('paused')")  # the runner stopped the child
    page.click("#resume")
    _status_is(page, "queued", "running")
    _status_is(page, "running")
    page.click("#cancel")
    _status_is(page, "cancelled")
    assert _job(server, job_id)["status"] == "cancelled"
    assert page.is_disabled("#pause") and page.is_disabled("#resume") and page.is_disabled("#cancel")


def test_the_overfitting_onset_is_marked_on_the_curve(page: Any, files: dict[str, Path], server: ServiceProcess) -> None:
    # Random-word answers at a high learning rate: validation loss falls, then turns as training memorizes.
    job_id = _create_job(server, files["noise"], files["noise_val"], suffix="noise", hyperparameters={"n_epochs": 20},
                         settings={"train.method": "full", "train.lr": 0.01, "train.eval_every": 4})
    page.evaluate(f"location.hash = '#job/{job_id}'")
    _status_is(page, "succeeded", timeout=150)
    verdict = curves.run_verdict(server.data_dir / "jobs" / job_id / "run")
    assert verdict.status in ("overfitting", "memorizing") and verdict.onset_step is not None, verdict.message
    page.wait_for_selector("#loss-chart g.onset")
    assert page.get_attribute("#loss-chart", "data-onset") == str(verdict.onset_step)
    assert page.text_content("#loss-chart g.onset text") == f"overfitting from step {verdict.onset_step}"
    assert page.inner_text("#curve-verdict") == f"Curves: {verdict.message}"
    # Over 200 steps of metrics events: the plan's events from the start are still listed.
    page.wait_for_selector("#events li:first-child:has-text('successfully completed')")  # the last event, on top
    page.wait_for_selector("#events li:last-child:has-text('Created fine-tuning job')")
    assert page.locator("#events li:has-text('train.batch_size')").count() == 1
    # The README's picture of the job page: live curves with the onset, the verdicts, checkpoints, events.
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "job-page.png"), full_page=True)


@pytest.fixture(scope="module")
def labelled_job(server: ServiceProcess, files: dict[str, Path]) -> str:
    """A succeeded job on a closed-label task (so eval adds the classical baseline), trained long
    enough that tuning fixes examples the base gets wrong (flips to show)."""
    job_id = _create_job(server, files["labels"], files["labels_val"], suffix="intents", hyperparameters={"n_epochs": 15},
                         settings={"train.method": "full", "train.lr": 0.01})
    _finish(server, job_id)
    return job_id


def _eval_done(page: Any, timeout: float = 300) -> None:
    page.wait_for_selector("#ship", timeout=timeout * 1000)


def test_compare_shows_every_baseline_with_intervals_flips_and_the_report(
        page: Any, labelled_job: str, files: dict[str, Path], server: ServiceProcess) -> None:
    test_id = _upload(server, files["labels_test"])
    page.evaluate(f"location.hash = '#compare/{labelled_job}'")
    page.wait_for_selector("#run-eval")
    page.select_option("#test-file", test_id)
    page.click("#run-eval")
    _eval_done(page)
    written = rundir.read_eval(server.data_dir / "jobs" / labelled_job / "run")
    assert written["data"].endswith(".jsonl") and written["examples"] == 20
    rows = {r.split("\t")[0].strip(): r.split("\t")[1] for r in page.locator("table.systems tbody tr").all_inner_texts()}
    assert set(rows) == {"base", "prompted", "tuned", "tfidf+logreg (classical)"}
    for name in ("base", "prompted", "tuned"):
        main = written["systems"][name]["main"]
        assert rows[name] == f"{main['mean']:.3f} [{main['low']:.3f}, {main['high']:.3f}]"
    cl = written["classical"]["main"]
    assert rows["tfidf+logreg (classical)"] == f"{cl['mean']:.3f} [{cl['low']:.3f}, {cl['high']:.3f}]"
    assert page.inner_text("#ship") == written["ship"]["line"]
    assert written["classical"]["line"] in page.inner_text("#classical-line")
    flips = written["comparison"]["flips"]
    assert flips["fixed"], "the job should fix some of the base model's mistakes"
    for kind, title in (("fixed", "fixed by tuning"), ("broken", "broken by tuning")):
        assert page.locator(f"h4:has-text('{title} ({min(20, len(flips[kind]))})')").count() == 1
    assert page.locator("table.flips tbody tr").count() == min(20, len(flips["fixed"])) + min(20, len(flips["broken"]))
    first = written["cases"][flips["fixed"][0]]
    assert page.locator("table.flips td.where").first.inner_text() == "intents-test.jsonl:" + first["where"].rsplit(":", 1)[1]
    assert page.input_value("#test-file") == test_id  # evaluating again starts from the same file
    with page.context.expect_page() as opened:
        page.click("#open-report")
    report = opened.value
    report.wait_for_load_state()
    assert "TF-IDF + logistic regression" in report.content() and "Flipped examples" in report.content()
    for width, label in ((1280, "laptop"), (390, "phone")):  # wide tables scroll in their box, not the page
        report.set_viewport_size({"width": width, "height": 800})
        report.screenshot(path=str(SCREENSHOTS / f"report-{label}.png"), full_page=True)
        wide, inner = _fits(report)
        assert wide <= inner, f"the report at {width} px: {wide} > {inner}"
    report.close()


def test_compare_on_held_out_documents_shows_loss_per_system(
        page: Any, labelled_job: str, server: ServiceProcess, tmp_path: Path) -> None:
    """A test file of raw text is scored, not answered: the page shows each system's held-out
    loss and perplexity and the tuned - base line, as eval.json has them."""
    docs = tmp_path / "held-out-docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"card {i} arrived late and the fee was refunded " * (i + 1)}) + "\n"
                            for i in range(6)), encoding="utf-8")
    test_id = _upload(server, docs)
    page.evaluate(f"location.hash = '#compare/{labelled_job}'")
    page.wait_for_selector("#run-eval")
    page.select_option("#test-file", test_id)
    page.click("#run-eval")
    page.wait_for_selector("p.muted:has-text('held-out documents')", timeout=300_000)
    written = rundir.read_eval(server.data_dir / "jobs" / labelled_job / "run")
    assert written["kind"] == "text" and written["examples"] == 6
    rows = {r.split("\t")[0].strip(): r.split("\t")[1:] for r in page.locator("table.systems tbody tr").all_inner_texts()}
    assert set(rows) == {"base", "tuned"}
    for name in ("base", "tuned"):
        assert rows[name][0] == f"{written['systems'][name]['loss']:.3f}"
    assert page.inner_text("#ship") == written["ship"]["line"]


def test_export_gives_the_files_and_the_commands_to_run_them(page: Any, labelled_job: str, server: ServiceProcess) -> None:
    page.evaluate(f"location.hash = '#export/{labelled_job}'")
    page.wait_for_selector("#export-merged")
    # A full fine-tune has no adapter: the button is off and says why, with no commands for it.
    assert page.is_disabled("#export-adapter") and "has no adapter" in page.inner_text("div.export.adapter")
    assert page.locator("div.export.adapter pre.command").count() == 0
    for fmt, made, runs in (("merged", "model.safetensors", "vllm serve"), ("gguf", "model.gguf", "llama-server -m")):
        page.click(f"#export-{fmt}")
        box = f"div.export.{fmt}"
        page.wait_for_selector(f"{box} p.state.succeeded, {box} p.state.failed", timeout=180_000)
        assert page.inner_text(f"{box} p.state") == "succeeded"
        where = server.data_dir / "jobs" / labelled_job / "export" / fmt
        assert (where / made).is_file() and made in page.inner_text(box)
        commands = page.locator(f"{box} pre.command").all_inner_texts()
        assert commands[0] == f"tunecraft export {where.parent.parent / 'run'} --format {fmt} --out {where}"
        assert any(c.startswith(runs) and str(where) in c for c in commands[1:]), commands
    assert "ollama create" in page.inner_text("div.export.gguf")


def _fits(page: Any) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


# Boxes wider than their place (a table in its .scroll wrapper): the page fits, but that part of
# it scrolls sideways.
SCROLLED = """() => [...document.querySelectorAll("#view .scroll, #view pre")]
  .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => (e.firstElementChild || e).className || e.tagName)"""


@pytest.fixture(scope="module")
def evaluated_job(labelled_job: str, files: dict[str, Path], server: ServiceProcess) -> str:
    """The labelled job with an evaluation (the Compare view at its widest), through the API."""
    if not (server.data_dir / "jobs" / labelled_job / "run" / rundir.EVAL).is_file():
        res = httpx.post(f"{server.url}/v1/dashboard/jobs/{labelled_job}/eval", headers=server.headers, timeout=30,
                         json={"test_file": _upload(server, files["labels_test"])})
        assert res.status_code == 200, res.text
        deadline = time.time() + 300
        while (task := httpx.get(f"{server.url}/v1/dashboard/jobs/{labelled_job}", headers=server.headers,
                                 timeout=30).json()["tasks"]["eval"])["state"] == "running":
            assert time.time() < deadline
            time.sleep(1)
        assert task["state"] == "succeeded", task
    return labelled_job


# Words the layout broke in two (a table header wrapped as "ste / p", "tfidf+logr / eg"): for each
# run of letters and digits in the page's text, the lines it landed on. A break at a hyphen, dot or
# slash is allowed, and so is any break in a chunk over 24 characters (an id or a path must wrap
# somewhere on a phone).
BROKEN_WORDS = """() => {
  const out = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (n.parentElement.closest("dialog:not([open]), [hidden]")) continue;
    for (const chunk of n.data.matchAll(/\\S+/g)) {
      if (chunk[0].length > 24) continue;
      for (const m of chunk[0].matchAll(/[\\p{L}\\p{N}]+/gu)) {
        const r = document.createRange();
        r.setStart(n, chunk.index + m.index);
        r.setEnd(n, chunk.index + m.index + m[0].length);
        const lines = new Set([...r.getClientRects()].filter((b) => b.width > 0).map((b) => Math.round(b.top)));
        if (lines.size > 1) out.push(`${n.parentElement.tagName.toLowerCase()} "${chunk[0]}"`);
      }
    }
  }
  return out;
}"""


@pytest.mark.parametrize("size", [(1280, 800), (390, 844)], ids=["laptop", "phone"])
def test_every_view_fits_without_horizontal_scrolling(page: Any, evaluated_job: str, files: dict[str, Path],
                                                      size: tuple[int, int]) -> None:
    page.set_viewport_size({"width": size[0], "height": size[1]})
    label = "laptop" if size[0] > 600 else "phone"
    SCREENSHOTS.mkdir(exist_ok=True)
    # The data view at its widest: a checked file with its tables and examples.
    page.set_input_files("#train-file", str(files["train"]))
    page.set_input_files("#val-file", str(files["leaky_val"]))
    page.click("#upload")
    page.wait_for_selector("#to-new-job")
    views = [("data", None, "#to-new-job"), ("new", "#new", "#start-job"), ("jobs", "#jobs", "table.jobs"),
             ("job", f"#job/{evaluated_job}", "#to-export"), ("compare", f"#compare/{evaluated_job}", "#run-eval"),
             ("export", f"#export/{evaluated_job}", "#export-merged"), ("play", "#play", "#send")]
    for name, view, ready in views:
        if view:
            page.evaluate(f"location.hash = '{view}'")
        page.wait_for_selector(ready)
        if name == "new":  # at its widest: the plan's table of settings and reasons
            page.click("#estimate")
            page.wait_for_selector("#plan-estimate", timeout=300_000)
        page.screenshot(path=str(SCREENSHOTS / f"view-{name}-{label}.png"), full_page=True)
        wide, inner = _fits(page)
        assert wide <= inner, f"{name}: {wide} > {inner} at {size}"
        assert page.evaluate(SCROLLED) == [], f"{name} at {size}: scrolled sideways inside the page"
        assert page.evaluate(BROKEN_WORDS) == [], f"{name} at {size}: words broken across lines"
