"""Token statistics: counts, percentiles, truncation; the model context that bounds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunecraft.data.render import tokenize_example
from tunecraft.data.schema import Example, Message
from tunecraft.data.stats import length_issues, percentile, token_stats
from tunecraft.models.facts import DEFAULT_CONTEXT, context_length


def pc(line: int, prompt: str, completion: str) -> Example:
    return Example("prompt_completion", "f.jsonl", line, prompt=prompt, completion=completion)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 99) == 7 and percentile([], 50) == 0


def test_stats_match_tokenize_example(tiny_tokenizer: Any) -> None:
    examples = [pc(i + 1, "Classify: " + "word " * i, "refund") for i in range(10)]
    stats, issues = token_stats(examples, tiny_tokenizer, max_length=10_000)
    tokenized = [tokenize_example(e, tiny_tokenizer) for e in examples]
    assert issues == []
    assert stats.examples == 10
    assert stats.tokens == sum(t.n_tokens for t in tokenized)
    assert stats.loss_tokens == sum(t.n_loss for t in tokenized)
    assert stats.max == max(t.n_tokens for t in tokenized)
    assert stats.too_long == 0 and stats.tokens_cut == 0


def test_truncation_counts(tiny_tokenizer: Any) -> None:
    examples = [pc(1, "short", "ok"), pc(2, "long " * 50, "answer"), pc(3, "long " * 60, "answer")]
    lengths = [tokenize_example(e, tiny_tokenizer).n_tokens for e in examples]
    limit = lengths[0] + 1
    stats, _ = token_stats(examples, tiny_tokenizer, max_length=limit)
    assert stats.too_long == 2 and stats.too_long_lines == [2, 3]
    assert stats.tokens_cut == lengths[1] + lengths[2] - 2 * limit
    assert stats.tokens == lengths[0] + 2 * limit
    assert stats.no_loss_lines == [2, 3]  # the answers sit after the cut
    codes = [(i.code, i.severity) for i in length_issues(stats, "f.jsonl")]
    assert codes == [("too_long", "warning"), ("no_loss_after_truncation", "warning")]
    message = length_issues(stats, "f.jsonl")[0].message
    assert f"2 of 3 examples are longer than max length {limit}" in message
    assert f"cut {stats.tokens_cut} tokens" in message and "lines 2, 3" in message


def test_all_weight_zero_chat_is_not_double_reported(tiny_tokenizer: Any) -> None:
    ex = Example("chat", "f", 1, messages=(Message("user", "q"), Message("assistant", "a", 0)))
    stats, _ = token_stats([ex], tiny_tokenizer, max_length=1000)
    assert stats.loss_tokens == 0 and stats.no_loss_lines == []


def test_context_length(tiny_tokenizer: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert context_length(tiny_tokenizer, tiny_model_dir) == 512  # the config's positions

    class Tok:
        model_max_length = 256

    assert context_length(Tok(), tiny_model_dir) == 256  # the smaller limit wins
    Tok.model_max_length = int(1e30)  # "no limit" sentinel
    assert context_length(Tok(), tmp_path) == DEFAULT_CONTEXT


def test_long_raw_text_is_split_into_windows_not_cut(tiny_tokenizer: Any) -> None:
    """Every token of a long document bears loss exactly once across its windows; each window
    after the first repeats the previous one's last `overlap` tokens as loss-free context."""
    from tunecraft.data.prepare import window_count, windows
    from tunecraft.data.render import IGNORE

    doc = Example("text", "f.jsonl", 1, text=" ".join(f"w{i}" for i in range(400)))
    whole = tokenize_example(doc, tiny_tokenizer)
    limit, overlap = 64, 8
    parts = windows(whole, limit, overlap)
    assert len(parts) == window_count(whole.n_tokens, limit, overlap) > 2
    assert all(p.n_tokens <= limit for p in parts) and all(p.truncated == 0 for p in parts)
    step = limit - overlap
    for k, part in enumerate(parts):  # the windows are the document's own tokens, in order
        assert part.input_ids == whole.input_ids[k * step: k * step + limit]
        if k:
            assert part.labels[:overlap] == [IGNORE] * overlap
    learned = [t for p in parts for t in p.labels if t != IGNORE]
    assert learned == [t for t in whole.labels if t != IGNORE]  # each token once, none lost
    assert parts[-1].input_ids[-1] == whole.input_ids[-1]
    stats, _ = token_stats([doc, pc(2, "short", "ok")], tiny_tokenizer, max_length=limit, overlap=overlap)
    assert (stats.split_documents, stats.windows, stats.window_overlap) == (1, len(parts), overlap)
    assert stats.too_long == 0 and stats.tokens_cut == 0 and length_issues(stats, "f.jsonl") == []
    short = tokenize_example(pc(2, "short", "ok"), tiny_tokenizer)
    assert stats.loss_tokens == len(learned) + short.n_loss
    assert stats.tokens == sum(p.n_tokens for p in parts) + short.n_tokens
