"""Command line: each verb is one function that parses flags and calls the library. No logic here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from tunecraft.config import describe, settings_help
from tunecraft.errors import TunecraftError
from tunecraft.out import escape, plain

app = typer.Typer(
    help="Fine-tune a pre-trained language model on your data, prove it helped, and deploy it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Validate and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help=describe("model.name"))]
# Only this flag of the command being run lets a model's own code run: a run directory's
# config.yaml may come from anyone, so it never does.
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let the model run its own Python code (auto_map in config.json). Off by default; "
        "only for models whose code you have read and trust. A run directory's config never turns it on.",
    ),
]
LabelOpt = Annotated[
    bool,
    typer.Option(
        "--label-constraint/--no-label-constraint",
        help="A closed-label run answers with a label of its set (labels.json) and its probability; "
        "--no-label-constraint decodes free text.",
    ),
]


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the models tunecraft knows, the default first."""
    from tunecraft.models.listing import list_models, print_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_models(rows, console)


@app.command()
def doctor() -> None:
    """Check this machine: versions, CPU/GPU, threads, cache, default model."""
    from tunecraft.doctor import run_doctor

    raise typer.Exit(run_doctor(console))


@data_app.command("check")
def data_check(
    data: Annotated[Path, typer.Argument(help="Training data (JSONL or CSV).")],
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation data.")] = None,
    model: ModelOpt = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Max tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Validate a dataset: every problem as PATH:LINE: code: message, then statistics."""
    from tunecraft.data.check import check_data, print_report

    report = check_data(data, val=val, model=model, max_length=max_length)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report, console)
    raise typer.Exit(1 if report.n_errors else 0)


@data_app.command("show")
def data_show(
    data: Annotated[Path, typer.Argument(help="Data file.")],
    model: ModelOpt = None,
    n: Annotated[int, typer.Option("-n", help="How many examples.")] = 3,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Max tokens.")] = None,
) -> None:
    """Render examples exactly as training sees them; loss-bearing tokens highlighted."""
    from tunecraft.data.show import show_examples

    show_examples(data, model=model, n=n, max_length=max_length, console=console)


_DIST = "Several processes or machines (torchrun)"
_SERVICE = "Fine-tuning service (OpenAI's files and jobs API)"


def _train_epilog() -> str:
    """Every setting a key=value override (or a YAML file) can set, from the config itself."""
    rows = "\n\n".join(f"[bold]{key}[/]  {text}" for key, text in settings_help())
    return "Settings (key=value; each flag above sets one of them):\n\n" + rows


@app.command(context_settings={"allow_extra_args": False}, epilog=_train_epilog())
def train(
    args: Annotated[
        Optional[list[str]],
        typer.Argument(help="[CONFIG.yaml] [key=value ...] e.g. train.lr=1e-4 lora.r=8", show_default=False),
    ] = None,
    model: ModelOpt = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help=describe("data.train"))] = None,
    val: Annotated[Optional[str], typer.Option("--val", help=describe("data.val"))] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=describe("train.method"))] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help=describe("train.epochs"))] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help=describe("train.max_steps"))] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time-budget", help=describe("train.time_budget"))] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=describe("train.lr"))] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=describe("data.max_length"))] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=describe("train.batch_size"))] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help=describe("train.seed"))] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", help=describe("train.engine"))] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help=describe("train.out"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and a measured time estimate; train nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as one JSON object.")] = False,
    sharding: Annotated[Optional[str], typer.Option("--sharding", help=describe("train.sharding"), rich_help_panel=_DIST)] = None,
    nproc_per_node: Annotated[Optional[str], typer.Option("--nproc-per-node", help="Processes on this machine (one per GPU); runs under torchrun.", rich_help_panel=_DIST)] = None,
    nnodes: Annotated[Optional[str], typer.Option("--nnodes", help="Machines taking part (torchrun).", rich_help_panel=_DIST)] = None,
    node_rank: Annotated[Optional[int], typer.Option("--node-rank", help="This machine's rank (torchrun, static rendezvous).", rich_help_panel=_DIST)] = None,
    rdzv_endpoint: Annotated[Optional[str], typer.Option("--rdzv-endpoint", help="HOST:PORT where the machines meet (torchrun).", rich_help_panel=_DIST)] = None,
    rdzv_id: Annotated[Optional[str], typer.Option("--rdzv-id", help="Job id shared by all machines (torchrun).", rich_help_panel=_DIST)] = None,
    rdzv_backend: Annotated[Optional[str], typer.Option("--rdzv-backend", help="Rendezvous backend, e.g. c10d (torchrun).", rich_help_panel=_DIST)] = None,
    rdzv_conf: Annotated[Optional[str], typer.Option("--rdzv-conf", help="Rendezvous options key=value,... (torchrun).", rich_help_panel=_DIST)] = None,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Rank 0's address (torchrun, static rendezvous).", rich_help_panel=_DIST)] = None,
    master_port: Annotated[Optional[int], typer.Option("--master-port", help="Rank 0's port (torchrun, static rendezvous).", rich_help_panel=_DIST)] = None,
) -> None:
    """Fine-tune a model (LoRA or full) and write a run directory."""
    from tunecraft.train.entry import run_train
    from tunecraft.train.launch import launcher_args, relaunch

    launcher = launcher_args({
        "--nproc-per-node": nproc_per_node, "--nnodes": nnodes, "--node-rank": node_rank,
        "--rdzv-endpoint": rdzv_endpoint, "--rdzv-id": rdzv_id, "--rdzv-backend": rdzv_backend,
        "--rdzv-conf": rdzv_conf, "--master-addr": master_addr, "--master-port": master_port,
    })
    if launcher:
        raise typer.Exit(relaunch(launcher, sys.argv[1:]))
    code = run_train(
        args or [],
        {
            "model.name": model, "data.train": data, "data.val": val,
            # --method dpo is preference tuning: the objective; the weights stay train.method's.
            "train.method": None if method == "dpo" else method,
            "train.objective": "dpo" if method == "dpo" else None,
            "train.epochs": epochs, "train.max_steps": max_steps, "train.time_budget": time_budget,
            "train.lr": lr,
            "data.max_length": max_length, "train.batch_size": batch_size, "train.seed": seed,
            "train.engine": engine, "train.out": out, "train.sharding": sharding,
        },
        resume=resume,
        dry_run=dry_run,
        console=console,
        as_json=as_json,
    )
    raise typer.Exit(code)


@app.command()
def serve(
    targets: Annotated[
        Optional[list[str]],
        typer.Argument(help="Run directories or models to serve (default: the embedded default model).", show_default=False),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Bind address; anything but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option("--api-key", envvar="TUNECRAFT_API_KEY", help="Require Authorization: Bearer KEY on every route but /health."),
    ] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Waiting requests before answering 429.")] = 64,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Requests decoded together in one batch.")] = 8,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", min=1, help="The most max_tokens one request may ask for (more: a 400).")
    ] = 4096,
    trust_remote_code: TrustOpt = False,
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", help="Also run OpenAI's files and fine-tuning jobs API, keeping its state here.",
                     rich_help_panel=_SERVICE),
    ] = None,
    max_jobs: Annotated[int, typer.Option("--max-jobs", min=1, help="Jobs trained at once.", rich_help_panel=_SERVICE)] = 1,
    job_setting: Annotated[
        Optional[list[str]],
        typer.Option("--job-setting", help="A training setting key=value for every job (repeatable).",
                     rich_help_panel=_SERVICE),
    ] = None,
) -> None:
    """Serve run directories or models over an OpenAI-compatible HTTP API (and fine-tune with --data-dir)."""
    from tunecraft.config import DEFAULT_MODEL
    from tunecraft.serve.app import ServeSettings
    from tunecraft.serve.server import serve as run_server

    settings = ServeSettings(max_queue=max_queue, max_batch=max_batch, max_tokens_limit=max_tokens_limit)
    extension = None
    if data_dir is not None:
        from tunecraft.service.api import service_factory

        extension = service_factory(data_dir, max_jobs, job_setting or [])
    run_server(
        targets or [DEFAULT_MODEL], host, port, api_key, settings, on_status=plain(err_console),
        trust_remote_code=trust_remote_code, extension=extension,
    )


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `tunecraft train`.")],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="adapter, merged, gguf, or gguf-lora (the LoRA adapter as a GGUF for llama.cpp's --lora)."
    )],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (written only if every check passes).")],
    dtype: Annotated[
        Optional[str], typer.Option("--dtype", help="merged: float32, bfloat16 or float16 (default: float32).")
    ] = None,
    gguf_type: Annotated[
        str, typer.Option("--gguf-type", help="gguf: f16, q8_0, q4_0 or f32; gguf-lora: f16, q8_0 or f32.")
    ] = "f16",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out.")] = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Export a run as a PEFT adapter, a merged HF model, a GGUF file or a GGUF LoRA adapter; verified before success."""
    from tunecraft.export import export_run

    result = export_run(
        run_dir, fmt, out, dtype=dtype, gguf_type=gguf_type, overwrite=overwrite, on_status=plain(err_console),
        trust_remote_code=trust_remote_code,
    )
    for check in result.checks:
        console.print(f"  [green]ok[/] {escape(check)}", highlight=False)
    console.print(f"exported {result.format} to {result.path}", markup=False, highlight=False)


@app.command()
def chat(
    target: Annotated[str, typer.Argument(help="RUN_DIR or MODEL to chat with.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Answer length limit.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    system: Annotated[Optional[str], typer.Option("--system", help="System message.")] = None,
    trust_remote_code: TrustOpt = False,
    label_constraint: LabelOpt = True,
) -> None:
    """Chat in the terminal with a tuned run or a model (streamed, training's chat template)."""
    from tunecraft.serve.chat import run_chat

    run_chat(target, max_tokens, temperature, system, trust_remote_code=trust_remote_code,
             label_constraint=label_constraint)


@app.command()
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory.")] = None,
) -> None:
    """Fine-tune the embedded default on the example data, compare before/after, show how to serve."""
    from tunecraft.demo import run_demo

    raise typer.Exit(run_demo(console, out))


@app.command("eval")
def eval_run(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `tunecraft train`.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Held-out test data (never trained on).")],
    baselines: Annotated[
        Optional[str], typer.Option("--baselines", help="Comma-separated: base,prompted (empty: none).")
    ] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate at most N examples.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Generation budget per answer.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Generation batch size.")] = None,
    few_shot: Annotated[Optional[int], typer.Option("--few-shot", help="Few-shot examples in the prompted baseline.")] = None,
    prompt_file: Annotated[Optional[str], typer.Option("--prompt-file", help="Your own system prompt for the prompted baseline.")] = None,
    checkpoint: Annotated[
        Optional[list[str]], typer.Option("--checkpoint", help="Also evaluate this checkpoint (e.g. step-000040); repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print eval.json instead of the table.")] = False,
    label_constraint: LabelOpt = True,
    general: Annotated[
        bool, typer.Option("--general/--no-general", help="Measure how far tuning moved the model on generic prompts.")
    ] = True,
) -> None:
    """Compare base, prompt-engineered and tuned models on held-out data; verdicts and HTML report."""
    from tunecraft.eval.evaluate import evaluate_run, options_for
    from tunecraft.eval.show import print_eval

    names = None if baselines is None else [b.strip() for b in baselines.split(",") if b.strip()]
    opts = options_for(
        run_dir, data, baselines=names, limit=limit, max_new_tokens=max_new_tokens,
        batch_size=batch_size, few_shot=few_shot, prompt_file=prompt_file, checkpoints=checkpoint,
        label_constraint=label_constraint, general=general,
    )
    payload = evaluate_run(run_dir, opts, on_status=plain(err_console))
    if as_json:
        print(json.dumps(payload, indent=1))
    else:
        print_eval(payload, console)


@app.command()
def sweep(
    args: Annotated[
        Optional[list[str]],
        typer.Argument(help="[CONFIG.yaml] and grid axes key=v1,v2 (e.g. lr=1e-4,3e-4 epochs=1,3 r=8,16).", show_default=False),
    ] = None,
    grid: Annotated[
        Optional[list[str]], typer.Option("--grid", help="A grid axis key=v1,v2 (more may follow as arguments).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Sweep directory (one run dir per variant).")] = None,
) -> None:
    """Train a small grid of variants and rank them by validation loss (table + sweep.json)."""
    import datetime as dt

    from tunecraft.train.sweep import run_sweep, sweep_table
    from tunecraft.train.entry import split_args

    config, axes = split_args(args or [])
    out_dir = out or Path("runs") / f"sweep-{dt.datetime.now():%Y%m%d-%H%M%S}"
    result = run_sweep(
        config, [*(grid or []), *axes], out_dir, console=console,
        on_variant=lambda i, n, v: console.rule(f"[bold]variant {i + 1}/{n}: {v.name}"),
    )
    console.print(sweep_table(result))
    console.print(result["evidence"], markup=False, highlight=False)
    console.print(f"  sweep.json: {out_dir / 'sweep.json'}", markup=False, highlight=False)


jobs_app = typer.Typer(help="Fine-tuning jobs on a running `tunecraft serve --data-dir` (OpenAI's jobs API).",
                       no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
UrlOpt = Annotated[str, typer.Option("--url", help="The server's API base URL.")]
KeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="TUNECRAFT_API_KEY", help="The server's API key.")]
DEFAULT_URL = "http://127.0.0.1:8000/v1"


def _client(url: str, api_key: str | None) -> Any:
    from tunecraft.service.client import Client

    return Client(url, api_key)


@jobs_app.command("create")
def jobs_create(
    model: Annotated[str, typer.Option("--model", "-m", help="A base model the server serves (see /v1/models).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Training data (uploaded first).")],
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation data (uploaded first).")] = None,
    suffix: Annotated[Optional[str], typer.Option("--suffix", help="Part of the tuned model's name.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="n_epochs (default: auto).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Upload the data and create a fine-tuning job."""
    from tunecraft.service.client import create_job, job_line

    console.print(job_line(create_job(_client(url, api_key), model, data, val, suffix, epochs, seed)), markup=False, highlight=False)


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first.")] = 20,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """List fine-tuning jobs, newest first."""
    from tunecraft.service.client import job_line

    for job in _client(url, api_key).get(f"/fine_tuning/jobs?limit={limit}")["data"]:
        console.print(job_line(job), markup=False, highlight=False)


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="ftjob-...")], url: UrlOpt = DEFAULT_URL,
              api_key: KeyOpt = None) -> None:
    """Print one job as JSON."""
    print(json.dumps(_client(url, api_key).get(f"/fine_tuning/jobs/{job_id}"), indent=2))


@jobs_app.command("events")
def jobs_events(
    job_id: Annotated[str, typer.Argument(help="ftjob-...")],
    limit: Annotated[int, typer.Option("--limit", help="How many, newest last.")] = 100,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Print a job's events, oldest first (validation, plan, steps, evaluations, verdict)."""
    for event in reversed(_client(url, api_key).get(f"/fine_tuning/jobs/{job_id}/events?limit={limit}")["data"]):
        console.print(f"[dim]{event['level']:>5}[/] {escape(str(event['message']))}", highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="ftjob-...")], url: UrlOpt = DEFAULT_URL,
                api_key: KeyOpt = None) -> None:
    """Cancel a job (a running one stops at its next step and keeps its last checkpoint)."""
    from tunecraft.service.client import job_line

    console.print(job_line(_client(url, api_key).post_json(f"/fine_tuning/jobs/{job_id}/cancel", {})), markup=False, highlight=False)


def main() -> None:
    """Console entry point: user errors print one clear message, never a stack trace."""
    from tunecraft.hardware import keep_freed_memory

    keep_freed_memory()  # training, evaluation and serving alike allocate tensors of changing size
    try:
        app()
    except TunecraftError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
