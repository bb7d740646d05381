"""`tunecraft demo`: the whole loop on the embedded default model and the example data.

Fine-tunes SmolLM2-135M-Instruct with LoRA on the Quillfield Bank support set (examples/),
then shows held-out loss and answers before and after, and how to chat with and serve it.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunecraft.errors import TunecraftError

TEST_LIMIT = 60  # held-out examples scored in the demo (keeps it well under 10 minutes)
SHOW = 3  # answers shown side by side


def examples_root() -> Path:
    """examples/ of the source tree: next to the current directory or to the installed package."""
    candidates = [Path.cwd() / "examples", Path(__file__).resolve().parents[2] / "examples"]
    for root in candidates:
        if (root / "configs" / "demo.yaml").is_file() and (root / "support" / "train.jsonl").is_file():
            return root
    raise TunecraftError(
        "the demo needs the repository's examples/ folder (examples/configs/demo.yaml); run "
        "`tunecraft demo` from a clone of the repository, or `make demo`"
    )


def demo_config(root: Path, out: Path) -> Any:
    from tunecraft.config import build_config

    support = root / "support"
    return build_config(
        root / "configs" / "demo.yaml",
        values={"data.train": str(support / "train.jsonl"), "data.val": str(support / "val.jsonl"),
                "train.out": str(out)},
    )


def compare(run_dir: Path, test_path: Path, console: Console) -> dict[str, Any]:
    """Held-out loss and a few answers, base vs tuned (both share the base weights in memory)."""
    from tunecraft.data.loader import load_examples
    from tunecraft.data.render import to_messages
    from tunecraft.eval.heldout import heldout_loss, tokenize_for
    from tunecraft.serve.engine import ModelCache, SamplingParams, generate_chat, load_target
    from tunecraft.serve.rundir import read_run

    info = read_run(run_dir)
    cache = ModelCache()
    tuned = load_target(str(run_dir), cache=cache)
    base = load_target(info.base_model, cache=cache)
    test = load_examples(test_path)[:TEST_LIMIT]
    losses = {
        "base": heldout_loss(base, tokenize_for(base, test)),
        "tuned": heldout_loss(tuned, tokenize_for(tuned, test)),
    }
    table = Table(title=f"held-out loss on {len(test)} test examples ({test_path.name})", title_justify="left")
    for col in ("model", "loss", "perplexity", "token accuracy"):
        table.add_column(col)
    for name, res in losses.items():
        table.add_row(name, f"{res.loss:.4f}", f"{res.perplexity:.2f}", f"{res.token_accuracy:.3f}")
    console.print(table)
    prompts = [[m for m in to_messages(e) if m["role"] != "assistant"] for e in test[:SHOW]]
    params = SamplingParams(max_tokens=64)
    before = generate_chat(base, prompts, params)
    after = generate_chat(tuned, prompts, params)
    for e, b, a in zip(test[:SHOW], before, after):
        user = next(m.content for m in e.messages if m.role == "user")
        console.print(f"[bold]user:[/] {user}", highlight=False)
        console.print(f"  [dim]base :[/] {b.text.strip()}", highlight=False)
        console.print(f"  [green]tuned:[/] {a.text.strip()}", highlight=False)
    return {name: res.loss for name, res in losses.items()}


def run_demo(console: Console, out: Path | None = None) -> int:
    import transformers

    from tunecraft.train.loop import build, train
    from tunecraft.train.show import print_outcome, print_plan

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    t0 = time.time()
    root = examples_root()
    run_dir = out or Path("runs") / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    console.rule("[bold]1. model and data")
    cfg = demo_config(root, run_dir)
    plan, rt = build(cfg, on_status=console.print)
    print_plan(plan, console)
    console.rule("[bold]2. fine-tune (LoRA)")
    result = train(plan.cfg, console=console, plan=plan, rt=rt)
    print_outcome(result.summary, result.run_dir, console)
    console.rule("[bold]3. before and after, on held-out test data")
    losses = compare(run_dir, root / "support" / "test.jsonl", console)
    better = losses["tuned"] < losses["base"]
    verdict = "lower" if better else "NOT lower"
    console.print(f"tuned held-out loss {losses['tuned']:.4f} is {verdict} than the base model's {losses['base']:.4f}")
    console.rule("[bold]4. use it")
    console.print(f"  chat:   tunecraft chat {run_dir}")
    console.print(f"  serve:  tunecraft serve {run_dir}   (OpenAI-compatible API on http://127.0.0.1:8000/v1)")
    console.print(f"  export: tunecraft export {run_dir} --format merged --out exported/")
    console.print(f"demo finished in {time.time() - t0:.0f} s")
    return 0 if better else 1
