"""The HTML report parses, has every section and plot, and escapes user text."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from tunecraft.eval.report import SECTIONS, write_report


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id") or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _iv(m: float) -> dict:
    return {"mean": m, "low": m - 0.1, "high": m + 0.1}


def payload(run_dir: Path) -> dict:
    evil = "<script>alert('x')</script> & more"
    metrics = {"exact_match": 0.5, "token_f1": 0.6, "rouge_l": 0.6, "valid_json_rate": 1.0,
               "accuracy": 0.5, "macro_f1": 0.4, "confusions": [{"reference": "a", "predicted": evil, "count": 1}]}
    system = {"loss": 1.0, "perplexity": 2.7, "token_accuracy": 0.5, "metrics": metrics, "main": _iv(0.5), "seconds": 1}
    cases = [{"where": f"t.jsonl:{i}", "prompt": evil, "reference": '{"intent": "a"}',
              "answers": {"base": "x", "prompted": "y", "tuned": evil}, "correct": {"base": False, "prompted": True, "tuned": i % 2 == 0}}
             for i in range(4)]
    return {
        "run_dir": str(run_dir), "data": "test.jsonl", "examples": 4, "main_metric": "accuracy",
        "answer_kind": {"kind": "json", "label_field": "intent", "labels": ["a", "b"], "json_keys": ["intent"]},
        "prompt": {"system": evil, "source": "auto", "few_shot": ["train.jsonl:3"]},
        "systems": {"base": system, "prompted": system, "tuned": system},
        "comparison": {"best_baseline": "prompted", "diff": {"base": _iv(0.2), "prompted": _iv(0.0)},
                       "beyond_interval": {"base": True, "prompted": False},
                       "flips": {"against": "prompted", "fixed": [0], "broken": [1, 3]}},
        "verdict": {"status": "overfitting", "message": "overfitting: turned at step 4", "best_step": 4,
                    "onset_step": 4, "recommended": {"step": 4, "path": "model/", "checkpoint": None, "reason": "r"},
                    "suggestions": ["fewer epochs"], "notes": []},
        "ship": {"ship": False, "line": "do not ship: " + evil},
        "data_stats": {"train_examples": 10, "test_examples": 4, "test_labels": {"a": 2, "b": 2}},
        "cases": cases,
    }


def test_report_has_every_section_and_plot_and_escapes(tmp_path: Path) -> None:
    rows = [{"type": "train", "step": s, "loss": 3.0 / s} for s in range(1, 9)]
    rows += [{"type": "eval", "step": s, "val_loss": v} for s, v in [(2, 2.0), (4, 1.5), (6, 1.7), (8, 1.9)]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.001  # <b>not bold</b>\n")
    out = write_report(tmp_path, payload(tmp_path))
    assert out == tmp_path / "report" / "index.html"
    html = out.read_text()
    parser = _Collect()
    parser.feed(html)
    assert parser.sections == list(SECTIONS)
    assert len(parser.images) == 2 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert parser.scripts == 0 and "<b>not bold</b>" not in html
    text = "".join(parser.text)
    assert "<script>alert('x')</script>" in text  # shown as text, not run
    assert "Fixed by tuning (1)" in text and "Broken by tuning (2)" in text
    assert "lr: 0.001" in text
