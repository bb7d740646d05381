"""After training: record a closed-label run's label set and calibrate its reject threshold.

The label set is read off the training answers (`tunecraft.labels.detect_label_set`) and written
to `RUN_DIR/labels.json`. With a reject label, the delivered `model/` (the weights that will be
served, which may be an earlier step than the last) answers the validation split, constrained to
the label set, and `tunecraft.labels.calibrate` picks the threshold; the test set never sees it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunecraft import rundir
from tunecraft.constrained import build_trie, score_batched
from tunecraft.data.render import end_token_ids, prompt_ids, to_messages
from tunecraft.data.schema import Example
from tunecraft.labels import Calibration, LabelSet, calibrate, detect_label_set
from tunecraft.models.facts import inference_dtype, pick_device

MAX_CALIBRATION = 2000  # validation examples answered for the threshold (a seeded sample beyond)


def split_answer(example: Example, system_prompt: str | None) -> tuple[list[dict[str, Any]], str] | None:
    """(messages before the last assistant turn, that turn's text), or None (raw text, preference)."""
    if example.format not in ("chat", "prompt_completion", "instruction"):
        return None
    msgs = to_messages(example, system_prompt)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    return [{"role": m["role"], "content": m["content"]} for m in msgs[:last]], msgs[last]["content"]


def record_labels(run_dir: Path, cfg: Any, train_examples: list[Example], val_examples: list[Example],
                  model_path: Path, on_status: Callable[[str], None] | None = None) -> LabelSet | None:
    """Detect, calibrate and write labels.json; returns the label set (None: free-text answers)."""
    say = on_status or (lambda _m: None)
    pairs = [p for p in (split_answer(e, None) for e in train_examples) if p is not None]
    labels = detect_label_set([a for _, a in pairs], cfg.data.reject_label)
    log = rundir.RunLog(run_dir)
    if labels is None:
        if cfg.data.reject_label:
            say(f"data.reject_label={cfg.data.reject_label!r} is ignored: the training answers are not a closed label set")
        return None
    rundir.write_labels(run_dir, labels)
    message = f"closed label set: {len(labels.labels)} labels; {labels.detected}"
    if labels.reject_label:
        message += f"; reject label {labels.reject_label!r}"
    say(message)
    log.event("labels", message, labels=len(labels.labels), reject_label=labels.reject_label)
    if labels.reject_label is None:
        return labels
    val = [p for p in (split_answer(e, cfg.data.system_prompt) for e in val_examples) if p is not None]
    if not val:
        say("no validation examples: the reject threshold stays 0 (no rejection)")
        return labels
    cal = _calibrate(run_dir, cfg, labels, val, model_path)
    labels = labels.with_calibration(cal)
    rundir.write_labels(run_dir, labels)
    line = f"reject threshold {cal.threshold:.3f} on {cal.examples} validation examples ({cal.seconds:.0f} s): {cal.reason}"
    say(line)
    log.event("calibrated", line, threshold=cal.threshold)
    return labels


def _calibrate(run_dir: Path, cfg: Any, labels: LabelSet, val: list[tuple[list[dict[str, Any]], str]],
               base_path: Path) -> Calibration:
    t0 = time.time()
    if len(val) > MAX_CALIBRATION:
        val = random.Random(cfg.train.seed).sample(val, MAX_CALIBRATION)
    module, tokenizer, device = _load_delivered(run_dir, base_path)
    eos = end_token_ids(tokenizer)
    trie = build_trie(tokenizer, labels.labels, cfg.data.template, eos)
    prompts = [prompt_ids(tokenizer, msgs, cfg.data.template) for msgs, _ in val]
    reject = labels.labels.index(labels.reject_label)
    scores = score_batched(module, prompts, trie, device, keep=[reject])
    predicted = [labels.labels[s.best] for s in scores]
    confidence = [s.probs[s.best] for s in scores]
    cal = calibrate(predicted, confidence, [a.strip() for _, a in val], str(labels.reject_label))
    return Calibration(**{**cal.__dict__, "seconds": round(time.time() - t0, 2)})


def _load_delivered(run_dir: Path, base_path: Path) -> tuple[Any, Any, torch.device]:
    """RUN_DIR/model as it will be served: the base plus the adapter (LoRA) or the full model."""
    from tunecraft.models.load import load_model, load_peft, load_tokenizer

    model_dir = Path(run_dir) / rundir.MODEL
    device = pick_device()
    dtype = inference_dtype(device)
    tokenizer = load_tokenizer(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        module = load_peft(load_model(base_path, dtype=dtype, device=device), model_dir)
    else:
        module = load_model(model_dir, dtype=dtype, device=device)
    return module.eval(), tokenizer, device
