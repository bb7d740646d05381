"""Fixtures for the dashboard's browser tests: Debian's chromium driven by Playwright, and a real
`tunecraft serve --data-dir` on loopback with a tiny model.

Playwright never downloads a browser here: it launches the system's chromium by path. A machine
without it fails these tests with the command that installs it (`make test` runs that command).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import ServiceProcess
from tiny import write_chat_data

KEY = "browser-key"
# One thread per training child (2 cores here); no early stop so every job runs all its steps.
JOB_SETTINGS = ["train.threads=1", "train.patience=null", "train.eval_every=8"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).parent / "screenshots"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.fail("the browser tests need Debian's chromium and did not find it on PATH: "
                "run `apt-get install -y chromium` (as root; `make test` does this when it can)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    srv = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("browser") / "data", KEY, JOB_SETTINGS).start()
    yield srv
    srv.stop()


LABELS = {"refund": "money back refund", "card_arrival": "card arrive delivery", "balance": "how much balance"}
NOISE_WORDS = "the quick brown fox jumps over lazy dog hello help order ships card refund thanks".split()


def _write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for user, answer in rows:
            fh.write(json.dumps({"messages": [{"role": "user", "content": user},
                                              {"role": "assistant", "content": answer}]}) + "\n")
    return path


def write_label_data(path: Path, n: int, seed: int) -> Path:
    """A closed-label task (three intents): eval adds the classical TF-IDF baseline for it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(LABELS))
        rows.append((f"{rng.choice(['hi', 'hello'])} {LABELS[label]} {rng.randrange(50)}", label))
    return _write_rows(path, rows)


def write_noise_data(path: Path, n: int, seed: int) -> Path:
    """Answers of random words: nothing to generalize beyond the word list, so a long run at a
    high learning rate memorizes training and validation loss turns up (an overfitting onset)."""
    rng = random.Random(seed)
    return _write_rows(path, [(f"say something {rng.randrange(1000)}", " ".join(rng.choice(NOISE_WORDS) for _ in range(8)))
                              for _ in range(n)])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser-data")
    bad = root / "broken.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
                   '{not json\n{"messages": [{"role": "robot", "content": "x"}]}\n', encoding="utf-8")
    train = write_chat_data(root / "support.jsonl", 48, seed=3)
    leaky = write_chat_data(root / "support-leaky-val.jsonl", 15, seed=4)
    with open(leaky, "a", encoding="utf-8") as fh:  # its line 16 is training line 1: a leak
        fh.write(train.read_text(encoding="utf-8").splitlines()[0] + "\n")
    return {"train": train, "val": write_chat_data(root / "support-val.jsonl", 16, seed=4), "leaky_val": leaky,
            "bad": bad, "labels": write_label_data(root / "intents.jsonl", 80, 1),
            "labels_val": write_label_data(root / "intents-val.jsonl", 24, 2),
            "labels_test": write_label_data(root / "intents-test.jsonl", 20, 3),
            "noise": write_noise_data(root / "noise.jsonl", 32, 1), "noise_val": write_noise_data(root / "noise-val.jsonl", 16, 2)}


@pytest.fixture
def page(browser: Any, server: ServiceProcess, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab at 1280x800, signed in; every request it makes must go to this server."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    elsewhere: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: elsewhere.append(r.url)
           if not r.url.startswith((server.url + "/", "data:", "blob:")) else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(server.url + "/")
    tab.fill("#login-key", KEY)
    tab.click("#login-submit")
    tab.wait_for_selector("#train-file")
    yield tab
    SCREENSHOTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not elsewhere, f"the page reached beyond this server: {elsewhere}"
    assert not errors, f"the page raised: {errors}"
