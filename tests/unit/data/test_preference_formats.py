"""Preference pairs: both layouts parse, problems name their line, rendering shares the prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunecraft.data.check import check_data
from tunecraft.data.formats import parse_file
from tunecraft.data.render import IGNORE, tokenize_pair
from tunecraft.data.schema import Message


def _write(tmp_path: Path, rows: list[Any]) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


OPENAI = {"input": {"messages": [{"role": "system", "content": "Classify."}, {"role": "user", "content": "my card?"}]},
          "preferred_output": [{"role": "assistant", "content": "card_arrival"}],
          "non_preferred_output": [{"role": "assistant", "content": "change_pin"}]}


def test_openai_preference_rows_are_pairs_not_instructions(tmp_path: Path) -> None:
    """OpenAI's layout carries "input", which once read as the instruction format."""
    parsed = parse_file(_write(tmp_path, [OPENAI]))
    assert parsed.format == "preference" and not parsed.issues
    (ex,) = parsed.examples
    assert ex.messages == (Message("system", "Classify."), Message("user", "my card?"))
    assert ex.chosen == (Message("assistant", "card_arrival"),)
    assert ex.rejected == (Message("assistant", "change_pin"),)


def test_prompt_chosen_rejected_strings_lists_and_implicit_prompt(tmp_path: Path) -> None:
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "card?"}]
    rows = [
        {"prompt": "where is my card?", "chosen": "card_arrival", "rejected": "lost_card"},
        {"prompt": convo, "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
        {"chosen": convo + [{"role": "assistant", "content": "yes"}], "rejected": convo + [{"role": "assistant", "content": "no"}]},
    ]
    parsed = parse_file(_write(tmp_path, rows))
    assert not parsed.issues and parsed.format == "preference"
    first, second, third = parsed.examples
    assert first.messages == (Message("user", "where is my card?"),) and first.rejected == (Message("assistant", "lost_card"),)
    assert len(second.messages) == 3 and second.rejected == (Message("assistant", "b"),)
    assert len(third.messages) == 3  # the shared turns are the prompt
    assert third.chosen == (Message("assistant", "yes"),) and third.rejected == (Message("assistant", "no"),)


@pytest.mark.parametrize(("row", "code", "words"), [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "no_preference", "same text"),
    ({"prompt": "q", "chosen": "a"}, "missing_field", '"rejected"'),
    ({"chosen": "a", "rejected": "b"}, "missing_field", '"prompt"'),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "bad_role", "assistant messages only"),
    ({**OPENAI, "preferred_output": "card_arrival"}, "not_an_object", "array"),
    ({"input": OPENAI["input"], "preferred_output": OPENAI["preferred_output"]}, "missing_field", "non_preferred_output"),
    ({"input": {"messages": [{"role": "user", "content": "q"}]}}, "missing_field", "preference format"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty_field", '"prompt"'),
])
def test_bad_pairs_are_errors_at_their_line(tmp_path: Path, row: dict[str, Any], code: str, words: str) -> None:
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    parsed = parse_file(_write(tmp_path, [good, row]))
    errors = [i for i in parsed.issues if i.severity == "error"]
    assert errors and all(i.line == 2 for i in errors), [str(i) for i in parsed.issues]
    assert any(i.code == code and words in i.message for i in errors), [str(i) for i in errors]
    assert str(errors[0]).startswith(f"{tmp_path / 'pairs.jsonl'}:2: ")


def test_pair_sequences_share_the_prompt_and_only_answers_bear_loss(tmp_path: Path, tiny_tokenizer: Any) -> None:
    rows = [{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "my card?"}], "chosen": "card arrival", "rejected": "refund"}]
    (ex,) = parse_file(_write(tmp_path, rows)).examples
    pair = tokenize_pair(ex, tiny_tokenizer)
    c, r = pair.chosen, pair.rejected
    start = next(i for i, t in enumerate(c.labels) if t != IGNORE)
    assert c.input_ids[:start] == r.input_ids[:start]  # the same prompt tokens, rendered once each
    assert all(t == IGNORE for t in r.labels[:start])  # the prompt's assistant turn bears no loss
    answer = tiny_tokenizer.decode([t for t in c.labels if t != IGNORE])
    assert answer == "card arrival<|im_end|>"
    assert tiny_tokenizer.decode([t for t in r.labels if t != IGNORE]) == "refund<|im_end|>"


def test_data_check_counts_both_sequences(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _write(tmp_path, [OPENAI, {"prompt": "q", "chosen": "a", "rejected": "b"}])
    report = check_data(path, model=str(tiny_model_dir))
    (f,) = report.files
    assert report.n_errors == 0 and f.format == "preference" and f.examples == 2
    assert f.stats is not None and f.stats.examples == 2
    # Loss tokens: each answer plus its end-of-turn token, both answers of both pairs.
    assert f.stats.loss_tokens > 4 and f.stats.p50 > 0
