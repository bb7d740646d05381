"""`tunecraft demo`: the whole loop on the embedded default model and the example data.

Fine-tunes SmolLM2-135M-Instruct with LoRA on the Quillfield Bank support set (examples/),
then shows held-out loss and answers before and after, and how to chat with and serve it.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from tunecraft.errors import TunecraftError
from tunecraft.out import escape, plain

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
    """Base vs prompt-engineered vs tuned on held-out data (tunecraft eval, bounded for time)."""
    from tunecraft.eval.evaluate import evaluate_run, options_for
    from tunecraft.eval.show import print_eval

    opts = options_for(run_dir, test_path, limit=TEST_LIMIT, max_new_tokens=64, batch_size=16)
    payload = evaluate_run(run_dir, opts, on_status=plain(console))
    for case in payload["cases"][:SHOW]:
        console.print(f"[bold]user:[/] {escape(case['prompt'])}", highlight=False)
        for name, answer in case["answers"].items():
            mark = "[green]✓[/]" if case["correct"][name] else "[red]✗[/]"
            console.print(f"  {mark} [dim]{name:>8}:[/] {escape(str(answer))}", highlight=False)
    print_eval(payload, console)
    return payload


def run_demo(console: Console, out: Path | None = None) -> int:
    import transformers

    from tunecraft.train.loop import build, train
    from tunecraft.train.show import print_outcome, print_plan

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # Deprecation notices from inside transformers/peft are for their developers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    t0 = time.time()
    root = examples_root()
    run_dir = out or Path("runs") / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    console.rule("[bold]1. model and data")
    cfg = demo_config(root, run_dir)
    plan, rt = build(cfg, on_status=console.print)
    print_plan(plan, console)
    console.rule("[bold]2. fine-tune (LoRA)")
    result = train(plan, rt, console=console)
    print_outcome(result.summary, result.run_dir, console)
    console.rule("[bold]3. before and after, on held-out test data")
    payload = compare(run_dir, root / "support" / "test.jsonl", console)
    better = bool(payload["ship"]["ship"])
    console.rule("[bold]4. use it")
    console.print(f"  chat:   tunecraft chat {run_dir}")
    console.print(f"  serve:  tunecraft serve {run_dir}   (OpenAI-compatible API on http://127.0.0.1:8000/v1)")
    console.print(f"  export: tunecraft export {run_dir} --format merged --out exported/")
    console.print(f"demo finished in {time.time() - t0:.0f} s")
    return 0 if better else 1
