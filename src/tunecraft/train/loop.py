"""The training loop: one function for full fine-tuning and LoRA.

`build(cfg)` plans (validate, resolve, auto settings) and sets up the runtime; `train(plan, rt)`
then reads top to bottom in the order it runs: run directory -> model (LoRA, kernels) ->
optimizer -> resume -> steps (forward, masked loss, backward, clip, step, schedule, eval, early
stop, checkpoint) -> summary and the curves' verdict. LoRA changes only which parameters train
and what `model/` holds. Every setting comes from `plan.settings`; every cross-process
operation goes through `rt.dist` (a no-op with one process).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunecraft import rundir
from tunecraft.config import RunConfig
from tunecraft.curves import run_verdict
from tunecraft.data.batching import Batch, packed_batches, padded_batches, plan_steps, steps_per_epoch
from tunecraft.data.prepare import source_role
from tunecraft.data.render import sequences
from tunecraft.durable import DiskFullError, disk_full
from tunecraft.errors import TunecraftError
from tunecraft.models.facts import parameter_counts, unwrap
from tunecraft.models.load import load_model
from tunecraft.train import attention, dpo, linear, memory, schedule
from tunecraft.train import checkpoint as ckpt
from tunecraft.train.compiled import compile_decoder_layers
from tunecraft.train.deliver import save_deliverable
from tunecraft.train.lora import apply_lora, bf16_adapters, four_bit_config, merge_bytes, merged_for_eval
from tunecraft.train.loss import densify_grads
from tunecraft.train.optim import build_optimizer, set_lr
from tunecraft.train.plan import Plan, TrainSettings, Warmup, checkpoint_bytes, fit_budget, make_plan
from tunecraft.train.progress import Progress
from tunecraft.train.runtime import Runtime, seed_everything, setup_runtime
from tunecraft.train.schedule import Budget, Projection


class TrainingFailed(TunecraftError):
    """The run stopped on a non-finite loss or gradient (nothing was applied)."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # finished | early_stopped | interrupted | failed
    summary: dict[str, Any]
    model: Any = None  # the in-memory model at the end (tests compare weights)


@dataclass
class _State:
    """What the loop carries between steps (and what a checkpoint restores)."""

    step: int = 0
    tokens: int = 0  # cumulative loss-bearing tokens
    tokens_seen: int = 0  # cumulative non-padding tokens
    tokens_computed: int = 0  # cumulative positions the model ran (padding in, shared prefixes once)
    best_val_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the last improvement
    last_train_loss: float = math.nan
    elapsed_s: float = 0.0
    eval_s: float = 0.0  # of elapsed_s: validation passes
    checkpoint_s: float = 0.0  # of elapsed_s: checkpoints and model/ writes
    # The LR schedule's segments (see train.schedule): one, unless the run was extended
    # (--resume --epochs N after it ended: a new warmup and decay) or its time budget refitted
    # the decay's end.
    segments: list[list[float]] = field(default_factory=list)


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- entry


def build(cfg: RunConfig, on_status: Any = None, resume: bool = False) -> tuple[Plan, Runtime]:
    """The plan (nothing left on auto) and the runtime it asks for.

    With `train.time_budget`, a short warm-up measures the step time and the plan is refitted
    to end inside the budget (a resumed run keeps the plan it recorded in config.yaml).
    """
    t0 = time.perf_counter()
    plan = make_plan(cfg, on_status=on_status)
    s = plan.settings
    rt = setup_runtime(s.precision, s.deterministic, s.threads, s.sharding)
    if s.time_budget_s is not None and not resume:
        if on_status is not None:
            on_status("measuring a warm-up to fit the time budget ...")
        # Every rank fits the same plan: rank 0's measurement decides (as text: nothing pickled).
        step_s, load_s, state_bytes, eval_s = json.loads(rt.dist.agree(json.dumps(warm_up(plan, rt))))
        plan = fit_budget(cfg, plan, Warmup(step_s, load_s, state_bytes, time.perf_counter() - t0, eval_s))
    # Every rank uses rank 0's run directory (a default one is named after the start time,
    # which may differ by a second between ranks).
    agreed = Path(rt.dist.agree(str(plan.run_dir)))
    return (plan if agreed == plan.run_dir else plan.with_run_dir(agreed)), rt


def train(plan: Plan, rt: Runtime, resume: bool = False, console: Any = None) -> RunResult:
    """Run (or resume) the planned fine-tuning job; returns how it ended and its summary."""
    s, run_dir = plan.settings, plan.run_dir
    rt.dist.on_main(lambda: _prepare_run_dir(plan, resume))
    log = rundir.RunLog(run_dir, enabled=rt.is_main)
    seed_everything(s.seed)
    t0 = time.perf_counter()
    model, kernels = build_model(plan, rt)  # weights, LoRA, the kernel probe
    model = rt.dist.prepare(model, rt.dtype)  # before the optimizer sees the parameters
    probe_s = kernels.seconds if kernels is not None else 0.0
    startup = {**plan.timings, "load_model_s": round(time.perf_counter() - t0 - probe_s, 3),
               "kernel_probe_s": probe_s}
    if s.objective == "dpo":  # before a checkpoint is restored: the model as loaded is the reference
        t0 = time.perf_counter()
        plan = dpo.with_reference(plan, rt, model)
        startup["reference_logps_s"] = round(time.perf_counter() - t0, 3)
    optimizer = build_optimizer(_trainable(model), s.lr, s.weight_decay, s.fused_optimizer)
    st = _restore(plan, rt, model, optimizer, log) if resume else _State()
    _extend_schedule(plan, st, log)
    steps = plan_steps(len(plan.train), s.batch_size, plan.step_limit, s.seed)  # a refit may grow the run
    trainable, total_params = parameter_counts(model)
    log.event(
        "started",
        f"{s.method} on {s.base_model}: {len(plan.train)} examples, {plan.total_steps} steps, "
        f"{trainable:,} of {total_params:,} parameters trainable",
        step=st.step, total_steps=plan.total_steps,
    )
    for choice in plan.choices:  # the auto settings, as the plan printed them, for every reader
        log.event("auto", f"{choice.field} = {choice.value}: {choice.reason}", field=choice.field)
    log.event("startup", "start-up: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in startup.items()),
              **startup)
    if kernels is not None:
        log.event("kernels", f"linear layers: {kernels.reason}", onednn=kernels.onednn)
    progress = Progress(plan.total_steps, st.step, enabled=rt.is_main and console is not None, console=console)
    budget = Budget.of(plan, sum(startup.values()), trainable)
    saver = _Saver(plan, rt, log)
    full = None
    try:
        with _StopSignal() as stop, progress:
            status, message, full = _run_steps(plan, rt, model, optimizer, steps, st, log, stop, progress, saver,
                                               budget)
        t0 = time.time()
        saver.wait()
        st.checkpoint_s += time.time() - t0
        st.elapsed_s += time.time() - t0
    except TrainingFailed as exc:
        _record_failure(plan, st, log, str(exc), st.step + 1)
        raise
    except (DiskFullError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOSPC:
            raise
        full = _disk_full(plan, exc)
        _record_failure(plan, st, log, str(full), st.step)
        raise full from exc
    finally:
        saver.close()
    if status in ("finished", "early_stopped"):
        log.event(status, message, step=st.step)
    summary = _summary(plan, st, status, message)
    # Not part of wall_s's breakdown: these writes ran beside the steps, on the writer thread.
    summary["background_write_s"] = round(saver.writer.busy_s, 2)
    if full is not None:
        summary["final_val_loss_full"], summary["final_val_ci95_full"] = full.loss, full.ci95
    summary["linear_kernels"] = kernels.reason if kernels is not None else None
    summary["startup_s"] = startup
    if rt.is_main:  # the curves are on disk now: judge them (healthy / under- / overfitting)
        summary["verdict"] = run_verdict(run_dir).to_json()
    log.summary(summary)
    return RunResult(run_dir, status, summary, model)


def _record_failure(plan: Plan, st: _State, log: rundir.RunLog, message: str, step: int) -> None:
    """The `failed` event and summary; best effort, since a full disk may refuse them too."""
    with contextlib.suppress(OSError, DiskFullError):
        log.event("failed", message, step=step)
    with contextlib.suppress(OSError, DiskFullError):
        log.summary(_summary(plan, st, "failed", message))


def _disk_full(plan: Plan, exc: BaseException) -> DiskFullError:
    """What ran out of space, how much to free, and that the last checkpoint still resumes."""
    cause = exc if isinstance(exc, DiskFullError) else disk_full(plan.run_dir, None)
    done = rundir.complete_checkpoints(plan.run_dir)
    kept = (f"the last complete checkpoint, {done[-1].name}, is intact" if done
            else "no checkpoint was written yet")
    return DiskFullError(f"{cause}. Training stopped; {kept}. Free the space, then run "
                         f"`tunecraft train --resume --out {plan.run_dir}`")


# The first steps pay one-time costs: kernels chosen for new shapes, and for full fine-tuning
# AdamW's two moments (twice the weights) allocated and first touched. Measured on the default
# model over 1,000 BANKING77 examples, full bf16: 3.7, 2.2, 1.4, 1.7 s for the first four steps
# against ~1.2 s later, so a median over steps 2-4 said 1.65 s and the run used 64% of its budget.
# LoRA's second step is already steady. Steps also differ by their tokens (0.98-1.8 s full), so
# the measure is seconds per token, scaled to the average step.
WARMUP_SKIP, WARMUP_STEPS = 2, 5


def measure_step_time(plan: Plan, rt: Runtime, steps: int = WARMUP_STEPS) -> float:
    """Seconds per optimizer step of an average batch, from a short warm-up (weights thrown away)."""
    return warm_up(plan, rt, steps)[0]


def warm_up(plan: Plan, rt: Runtime, steps: int = WARMUP_STEPS) -> tuple[float, float, int, float | None]:
    """(seconds per optimizer step of an average batch, seconds to load the model, bytes a
    checkpoint writes, seconds per validation example), measured on `steps` real steps after
    WARMUP_SKIP that pay one-time costs, and on two evaluations of a few validation examples
    (the second timed); the weights are thrown away."""
    s = plan.settings
    seed_everything(s.seed)
    t0 = time.perf_counter()
    model, _ = build_model(plan, rt)
    load_s = time.perf_counter() - t0
    optimizer = build_optimizer(_trainable(model), s.lr, 0.0, True)
    per_token = []
    for indices in plan_steps(len(plan.train), s.batch_size, steps + WARMUP_SKIP, s.seed):
        tokens = sum(len(e.input_ids) for e in sequences([plan.train[i] for i in indices]))
        t0 = time.perf_counter()
        train_step(model, optimizer, step_batches(plan, indices, rt), s, rt)
        per_token.append((time.perf_counter() - t0) / max(1, tokens))
    steady = sorted(per_token[WARMUP_SKIP:]) or per_token
    average_step_tokens = plan.train_tokens / max(1, len(plan.train)) * min(s.batch_size, len(plan.train))
    trainable = sum(p.numel() for p in _trainable(model))
    return (steady[len(steady) // 2] * average_step_tokens, load_s, checkpoint_bytes(trainable),
            _eval_seconds_per_example(model, plan, rt))


WARMUP_EVAL_EXAMPLES = 32


def _eval_seconds_per_example(model: Any, plan: Plan, rt: Runtime) -> float | None:
    """Seconds per validation example of an evaluation, scaled by tokens to the average example
    (the first pass pays for new shapes, so the second is timed); None with no validation set."""
    n = min(len(plan.val), WARMUP_EVAL_EXAMPLES)
    if n == 0:
        return None
    indices = tuple(range(n))
    evaluate(model, plan, rt, indices)
    t0 = time.perf_counter()
    evaluate(model, plan, rt, indices)
    seconds = time.perf_counter() - t0
    vals = sequences(plan.val)
    timed = sum(len(e.input_ids) for e in sequences([plan.val[i] for i in indices]))
    average = sum(len(e.input_ids) for e in vals) / max(1, len(plan.val))
    return seconds / max(1, timed) * average


# ----------------------------------------------------------------------------- run directory


def _prepare_run_dir(plan: Plan, resume: bool) -> None:
    run_dir = plan.run_dir
    if rundir.has_run(run_dir) and not resume:
        raise TunecraftError(
            f"{run_dir} already holds a run. Resume it with --resume, or choose another --out."
        )
    if resume:
        _check_same_data(plan)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, plan.config)
    # The files' SHA-256 beside the split: a resume on other data is refused (above).
    rundir.write_split(run_dir, {**plan.data.split, "sha256": plan.data.digests})


def _check_same_data(plan: Plan) -> None:
    """Resuming on a changed data file would silently continue on other examples: refuse."""
    recorded = rundir.read_split(plan.run_dir).get("sha256") or {}
    files = {source_role(k): s.path for k, s in enumerate(plan.config.data.sources())}
    files["val"] = plan.config.data.val
    for role, digest in plan.data.digests.items():
        before = recorded.get(role)
        if before is not None and before != digest:
            raise TunecraftError(
                f"--resume: data.{role} {files[role]} changed since this run started (SHA-256 "
                f"{before[:12]}... then, {digest[:12]}... now), so the run cannot continue on "
                f"it. Restore the original file to resume {plan.run_dir}, or train on the new "
                "data as a new run with another --out."
            )


def _readable_checkpoint(plan: Plan, log: rundir.RunLog) -> Path | None:
    """The newest checkpoint that reads back whole; unreadable newer ones are set aside."""
    for path in reversed(rundir.complete_checkpoints(plan.run_dir)):
        try:
            ckpt.read_checkpoint(path)
        except ckpt.UnreadableCheckpoint as exc:
            aside = ckpt.set_aside(path)
            log.event("checkpoint_unreadable", f"{exc}; set aside as {aside.name}, falling back "
                      "to the checkpoint before it", step=rundir.checkpoint_step(path))
            continue
        return path
    return None


def _restore(plan: Plan, rt: Runtime, model: Any, optimizer: torch.optim.Optimizer, log: rundir.RunLog) -> _State:
    # Rank 0 picks (and sets aside what it cannot read); every rank then loads its pick.
    picked = rt.dist.on_main(lambda: _readable_checkpoint(plan, log))
    name = rt.dist.agree(picked.name if picked is not None else "")
    if not name:
        log.event("resume", "no readable complete checkpoint found: starting from step 0")
        return _State()
    checkpoint = plan.run_dir / rundir.CHECKPOINTS / name
    saved = rt.dist.load_checkpoint(checkpoint, model, optimizer)
    st = _State(step=int(saved["step"]))
    for key, value in saved.items():
        if key in _State.__dataclass_fields__ and key != "step":
            setattr(st, key, math.inf if value is None and key == "best_val_loss" else value)
    if log.enabled:  # rank 0 owns the run directory's logs
        rundir.truncate_metrics(plan.run_dir, st.step)
    log.event("resume", f"resumed from {name}", step=st.step)
    return st


def _extend_schedule(plan: Plan, st: _State, log: rundir.RunLog) -> None:
    """Record the schedule's segments: one for a new run; a new one when a resumed run was asked
    for a different length (`--resume --epochs N`): warmup and decay again over the new steps.
    A shorter length (a refit that config.yaml recorded after the last checkpoint, or
    `--resume --max-steps N` below the plan) ends the decay sooner instead, continuously."""
    if not st.segments:  # a new run, or a checkpoint from before segments were recorded
        st.segments = [[0, plan.total_steps]]
    end = int(st.segments[-1][1])
    if end == plan.total_steps or st.step >= plan.total_steps:
        return
    if plan.total_steps < end:
        st.segments.append(schedule.refit(st.segments, st.step, plan.total_steps, plan.settings))
        log.event("refit", f"the schedule now ends at step {plan.total_steps} instead of {end}, its decay "
                  f"going on from step {st.step}", step=st.step, start=st.step, end=plan.total_steps, old_end=end,
                  total_steps=plan.total_steps)
        return
    st.segments.append([st.step, plan.total_steps])
    epochs = plan.total_steps / steps_per_epoch(len(plan.train), plan.settings.batch_size)
    log.event(
        "segment",
        f"extended from step {st.step} to {plan.total_steps} ({epochs:g} epochs in all): a new "
        f"{plan.settings.schedule} schedule with {plan.settings.warmup_ratio:.0%} warmup over the "
        f"{plan.total_steps - st.step} new steps (the run had {end} planned)",
        step=st.step, start=st.step, end=plan.total_steps, total_steps=plan.total_steps,
    )


def _refit_schedule(plan: Plan, st: _State, log: rundir.RunLog, got: Projection | None, new_end: int) -> None:
    """Move the schedule's end to `new_end` (rank 0's projection `got`; the other ranks follow
    its vote). config.yaml records the new length, so that a resume replays the same schedule."""
    old = int(st.segments[-1][1])
    st.segments.append(schedule.refit(st.segments, st.step, new_end, plan.settings))
    if not log.enabled or got is None:
        return
    cfg = plan.config.model_copy(deep=True)
    cfg.train.max_steps = new_end
    rundir.write_config(plan.run_dir, cfg)
    log.event("refit", f"time budget: the schedule now ends at step {new_end} instead of {old}, so that "
              f"its decay ends inside the budget (recent steps averaged {got.step_s:.2f} s; {got.left_s:.0f} s "
              "of the budget left for steps)", step=st.step, start=st.step, end=new_end, old_end=old,
              total_steps=new_end, step_s=round(got.step_s, 4))


# ----------------------------------------------------------------------------- model


def build_model(plan: Plan, rt: Runtime) -> tuple[Any, linear.Probe | None]:
    """The model ready to train, and the linear-kernel choice (None: not considered)."""
    s = plan.settings
    # LoRA: frozen base in the compute dtype, adapters in fp32 (peft upcasts them).
    # Full: fp32 master weights; bf16 compute comes from autocast.
    dtype = rt.dtype if s.method == "lora" else torch.float32
    # QLoRA: the frozen base's linear weights in 4 bits, multiplied in the compute dtype.
    four_bit = four_bit_config(s.lora.quantize, rt.dtype) if s.method == "lora" else None
    model = load_model(plan.model.path, dtype, s.trust_remote_code, rt.device, quantization=four_bit)
    model.config.use_cache = False
    if s.method == "lora":
        model = apply_lora(model, s.lora, s.seed)
    else:
        model.requires_grad_(True)
    if s.engine == "fast":
        attention.enable(unwrap(model))  # plain SDPA unless a packed layout is passed
    if s.gradient_checkpointing:
        # Non-reentrant: recomputation sees the same keyword arguments (the packed layout) and
        # needs no input that requires grad, so a frozen LoRA base works as is.
        base, kwargs = unwrap(model), {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):  # transformers 5.x's name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    kernels = _linear_choice(model, s, rt)
    if kernels is not None and kernels.onednn:
        linear.use_fast_linears(model)
    if s.compile:
        compile_decoder_layers(model)
    model.train()
    return model, kernels


def _linear_choice(model: Any, s: TrainSettings, rt: Runtime) -> linear.Probe | None:
    """Whether linears take oneDNN forward products (fp32 CPU runs only)."""
    if s.engine != "fast" or rt.device.type != "cpu" or rt.dtype != torch.float32:
        return None  # bf16 linears already run in oneDNN; CUDA has cuBLAS
    if s.compile:
        return None  # compiled layers pick their own kernels
    if rt.world_size > 1 and s.sharding == "fsdp":
        return None  # FSDP owns its parameters' storage around each forward: leave them be
    config = unwrap(model).config
    return linear.probe(getattr(config, "hidden_size", 512), getattr(config, "intermediate_size", 2048))


def _trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _autocast(rt: Runtime, s: TrainSettings, model: Any) -> contextlib.AbstractContextManager[Any]:
    """bf16 products over the fp32 weights a bf16 run trains: full fine-tuning's master weights,
    and LoRA's adapters (`lora.bf16_adapters`; its frozen base is bf16 already)."""
    if rt.dtype != torch.bfloat16:
        return contextlib.nullcontext()
    if s.method == "full":
        return torch.autocast(rt.device.type, dtype=torch.bfloat16)
    return bf16_adapters(model, rt.device.type, s.lora)


# ----------------------------------------------------------------------------- batches


def micro_batches(plan: Plan, indices: list[int], examples: list[Any], size: int | None = None) -> list[Batch]:
    """The examples at `indices` as micro-batches in the engine's layout (`size`: the plan's)."""
    s = plan.settings
    if s.objective == "dpo":
        return dpo.micro_batches(plan, indices, examples)  # type: ignore[return-value]
    size = size or s.micro_batch_size
    if s.engine == "fast":
        return packed_batches(examples, indices, size)
    return padded_batches(examples, indices, size, plan.tokenizer.pad_token_id)


def step_batches(plan: Plan, indices: list[int], rt: Runtime) -> list[Batch]:
    """This rank's micro-batches of one optimizer step (none when its share is empty)."""
    share = rt.dist.share(indices)
    return micro_batches(plan, share, plan.train) if share else []


# ----------------------------------------------------------------------------- steps


def _run_steps(
    plan: Plan,
    rt: Runtime,
    model: Any,
    optimizer: torch.optim.Optimizer,
    steps: list[list[int]],
    st: _State,
    log: rundir.RunLog,
    stop: _StopSignal,
    progress: Progress,
    saver: _Saver,
    budget: Budget | None = None,
) -> tuple[str, str, ValResult | None]:
    """The optimizer steps with their evaluations and checkpoints; (status, message, the full
    validation pass at the end when evaluations used a subsample)."""
    s = plan.settings
    full = None
    per_epoch = steps_per_epoch(len(plan.train), s.batch_size)
    t_start = time.time() - st.elapsed_s
    t_saved = time.time()  # the wall-clock cadence counts from this process's start
    # Where the schedule ends (a refit of the budget may move it), never past the step limit.
    end = min(int(st.segments[-1][1]), plan.step_limit)
    while st.step < end:
        step_idx = st.step
        saver.poll()  # a checkpoint written in the background: its event now, or its error
        lr = s.lr * schedule.factor(st.segments, step_idx, s)
        set_lr(optimizer, lr)
        batches = step_batches(plan, steps[step_idx], rt)
        t0 = time.time()
        extra: dict[str, float] = {}  # DPO: preference accuracy, rewards, log-probs
        loss, norm = train_step(model, optimizer, batches, s, rt, extra)
        dt_step = time.time() - t0
        st.step = step_idx + 1
        # Every rank's counts, one stop vote so that all ranks stop (and checkpoint) together, and
        # rank 0's clock for the checkpoint cadence and the budget (clocks differ a little between ranks).
        due = s.save_every is None and rt.is_main and time.time() - t_saved >= s.save_interval_s
        got = None
        if budget is not None and rt.is_main:
            budget.stepped(dt_step)
            if schedule.progress(st.segments, st.step, s) is not None:  # not while it warms up
                got = budget.refit(st.step, end, time.time() - t_start)
        late = (budget is not None and rt.is_main and st.step < end
                and budget.out_of_time(time.time() - t_start, dt_step))
        n_loss, n_tok, n_run, votes, due_votes, late_votes, refit_to = rt.dist.sum(
            [sum(b.n_loss for b in batches), sum(b.n_tokens for b in batches),
             sum(b.n_computed for b in batches), stop.received is not None, due, late,
             got.end if got is not None else 0]
        )
        if refit_to > 0:  # the decay now ends where the budget does
            end = int(refit_to)
            _refit_schedule(plan, st, log, got, end)
            progress.resize(end)
        stopping, out_of_time = votes > 0, late_votes > 0
        st.tokens += int(n_loss)
        st.tokens_seen += int(n_tok)
        st.tokens_computed += int(n_run)
        st.last_train_loss = loss
        st.elapsed_s = time.time() - t_start
        log.metric(
            "train", step=st.step, epoch=round(st.step / per_epoch, 4), loss=loss, lr=lr,
            grad_norm=norm, tokens=st.tokens, tokens_seen=st.tokens_seen, tokens_computed=st.tokens_computed,
            tokens_per_s=round(n_tok / dt_step, 1), elapsed_s=round(st.elapsed_s, 3), **extra,
        )
        progress.update(st.step, loss, n_tok / dt_step)
        last = st.step >= end or out_of_time
        stopped_early = False
        if st.step % s.eval_every == 0 or last:
            t0 = time.time()
            val, stopped_early = _eval_and_keep_best(plan, rt, model, st, log, progress, saver, final=last)
            if budget is not None:
                budget.evaluated(time.time() - t0, len(plan.eval_indices))
            if last or stopped_early:  # before the last checkpoint is written, not beside it
                full = _full_validation(plan, rt, model, st, log, val)
        on_cadence = st.step % s.save_every == 0 if s.save_every is not None else due_votes > 0
        final = last or stopped_early or stopping  # no step follows: nothing to copy first
        if on_cadence or final:
            t0 = time.time()
            st.elapsed_s = t0 - t_start
            saver.checkpoint(st, model, optimizer, copy=not final)
            t_saved = time.time()
            st.checkpoint_s += t_saved - t0
            if budget is not None:
                budget.checkpointed(t_saved - t0)
        if stopped_early:
            return "early_stopped", (
                f"validation loss did not improve for {s.patience} evaluations; best step "
                f"{st.best_step} (val loss {st.best_val_loss:.4f}) kept as model/"
            ), full
        if stopping:
            name = signal.Signals(stop.received).name if stop.received else "stop signal on another rank"
            msg = f"{name} received: stopped at step {st.step}; resume with --resume"
            saver.wait()  # the checkpoint is on disk before the run says it stopped
            log.event("interrupted", msg, step=st.step)
            return "interrupted", msg, None
        if out_of_time:
            msg = (f"time budget reached: stopped at step {st.step} of {end} with a "
                   f"checkpoint (continue with --resume); best step {st.best_step} (val loss "
                   f"{st.best_val_loss:.4f}) kept as model/")
            log.event("time_budget", msg, step=st.step)
            st.elapsed_s = time.time() - t_start
            return "finished", msg, full
    st.elapsed_s = time.time() - t_start
    return "finished", (
        f"{st.step} steps; best step {st.best_step} (val loss {st.best_val_loss:.4f}) kept as model/"
    ), full


class _Saver:
    """Checkpoints and `model/`, written off the training thread.

    An improvement keeps a memory copy of the weights (`keep_best`); the next checkpoint
    (by wall clock, at the end, or on a stop) writes `model/` from it and then the checkpoint,
    in one background job, so that a checkpoint on disk never records a best step that
    `model/` does not hold yet. Only rank 0 writes; every rank joins the snapshots (fsdp
    gathers in them).
    """

    def __init__(self, plan: Plan, rt: Runtime, log: rundir.RunLog) -> None:
        self.plan, self.rt, self.log = plan, rt, log
        self.writer = ckpt.BackgroundWriter()
        self.best: dict[str, torch.Tensor] | None = None  # weights model/ does not hold yet
        self.best_is_live = False  # `best` is the live weights: the last checkpoint's too

    def keep_best(self, model: Any, copy: bool = True) -> None:
        """`copy=False` when no step follows: the live weights are what model/ will hold."""
        self.best = self.rt.dist.snapshot_model(model, self.plan.settings.method, copy=copy)
        self.best_is_live = not copy

    def checkpoint(self, st: _State, model: Any, optimizer: torch.optim.Optimizer, copy: bool = True) -> None:
        """Written in the background; `copy=False` (no step follows) writes the live tensors,
        sparing a copy of the weights and AdamW's moments (~2 s for a full fine-tune of the default)."""
        snap = self.rt.dist.snapshot_checkpoint(st.step, model, optimizer, _state_dict(st), copy=copy)
        best, self.best = self.best, None
        if snap is None:
            return
        plan, protect = self.plan, {st.best_step}
        # A full fine-tune's model/ written from the very tensors of this checkpoint holds its
        # weights: the checkpoint links that file instead of writing 540 MB again.
        same = (plan.run_dir / rundir.MODEL / "model.safetensors"
                if best is not None and self.best_is_live and plan.settings.method == "full" else None)

        def job() -> Path:
            if best is not None:
                save_deliverable(model, plan.tokenizer, plan.run_dir / rundir.MODEL, plan.settings.method,
                                 state_dict=best)
            return ckpt.write_checkpoint(plan.run_dir / rundir.CHECKPOINTS, snap, plan.settings.keep_checkpoints,
                                         protect, same_weights=same)

        self.writer.submit(job, lambda path: self.log.event("checkpoint", f"saved {path.name}", step=snap.step))

    def poll(self) -> None:
        self.writer.poll()

    def wait(self) -> None:
        self.writer.wait()

    def close(self) -> None:
        self.writer.close()


def train_step(
    model: Any, optimizer: torch.optim.Optimizer, batches: list[Batch], s: TrainSettings, rt: Runtime,
    metrics: dict[str, float] | None = None,
) -> tuple[float, float]:
    """One optimizer step over micro-batches; returns (mean loss, grad norm).

    The loss of each micro-batch is its summed cross-entropy divided by the loss-bearing
    tokens of the *whole step*, so gradients equal those of one big batch (DPO: its pairs, see
    `train.dpo`, whose step metrics land in `metrics`). A non-finite loss or gradient raises
    before the optimizer touches the weights.
    """
    if s.objective == "dpo":
        with _autocast(rt, s, model):
            loss, step_metrics = dpo.accumulate(model, batches, s, rt)  # type: ignore[arg-type]
        if metrics is not None:
            metrics.update(step_metrics)
    else:
        loss = _accumulate_sft(model, batches, s, rt)
    return _apply_step(model, optimizer, loss, s, rt)


def _accumulate_sft(model: Any, batches: list[Batch], s: TrainSettings, rt: Runtime) -> float:
    # With several ranks, `batches` is this rank's share and the divisor counts every rank's.
    (n_loss,) = rt.dist.sum([sum(b.n_loss for b in batches)])
    total = 0.0
    with _autocast(rt, s, model):
        for batch in rt.dist.micro_batches(batches):
            out = rt.dist.loss(model, batch.to(rt.device), s.engine)
            (out.loss_sum / max(1, n_loss)).backward()
            total += float(out.loss_sum.detach())
    (total,) = rt.dist.sum([total])
    return total / max(1, n_loss)


def _apply_step(model: Any, optimizer: torch.optim.Optimizer, loss: float, s: TrainSettings, rt: Runtime
                ) -> tuple[float, float]:
    """Reduce, clip and apply the accumulated gradients, unless loss or norm is not finite."""
    params = _trainable(model)
    densify_grads(params)  # a sparse embedding gradient no LM head gradient was added to
    rt.dist.reduce_gradients(params)  # before clipping: the norm is the global one
    norm = rt.dist.clip_grad_norm(params, s.grad_clip)
    if not math.isfinite(loss) or not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingFailed(
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
            f"(loss={loss}, grad_norm={norm}); the step was not applied. Try a lower learning "
            "rate (--lr), precision=fp32, or check the data for extreme examples."
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, norm


# ----------------------------------------------------------------------------- eval


def _eval_and_keep_best(
    plan: Plan, rt: Runtime, model: Any, st: _State, log: rundir.RunLog, progress: Progress, saver: _Saver,
    final: bool = False,
) -> tuple[ValResult, bool]:
    """Evaluate on the fixed subsample; keep the weights on improvement (`final`: no step
    follows); (the evaluation, True when patience ran out)."""
    t0 = time.time()
    val = evaluate(model, plan, rt, plan.eval_indices)
    seconds = time.time() - t0
    st.eval_s += seconds
    log.metric("eval", step=st.step, **val.row(), seconds=round(seconds, 3))
    ci = f" ± {val.ci95:.4f}" if val.ci95 is not None else ""
    progress.note(f"step {st.step}: val loss {val.loss:.4f}{ci}, {val.kind} accuracy {val.accuracy:.3f}"
                  + (f" ({val.examples} of {len(plan.val)} examples)" if val.examples < len(plan.val) else ""))
    if val.loss < st.best_val_loss:
        st.best_val_loss, st.best_step, st.bad_evals = val.loss, st.step, 0
        t0 = time.time()
        saver.keep_best(model, copy=not final)
        st.checkpoint_s += time.time() - t0
        return val, False
    st.bad_evals += 1
    patience = plan.settings.patience
    return val, patience is not None and st.bad_evals >= patience


def _full_validation(
    plan: Plan, rt: Runtime, model: Any, st: _State, log: rundir.RunLog, subsample: ValResult
) -> ValResult | None:
    """Every validation example at the end, when the evaluations used a subsample: the examples
    the last evaluation left out, merged with its result (the subsample is not run twice)."""
    if len(plan.eval_indices) >= len(plan.val):
        return None
    t0 = time.time()
    if plan.settings.objective == "dpo":  # its results hold no per-pair sums to merge
        full = evaluate(model, plan, rt)
    else:
        chosen = set(plan.eval_indices)
        rest = evaluate(model, plan, rt, tuple(i for i in range(len(plan.val)) if i not in chosen))
        full = merge_results(subsample, rest)
    seconds = time.time() - t0
    st.eval_s += seconds
    log.metric("eval_full", step=st.step, **full.row(), seconds=round(seconds, 3))
    return full


@dataclass(frozen=True)
class ValResult:
    loss: float  # mean over loss-bearing tokens (DPO: over pairs)
    accuracy: float  # next-token accuracy over the same tokens (DPO: preference accuracy)
    examples: int
    ci95: float | None  # half-width of the loss's 95% interval (None: too few batches to say)
    kind: str = "token"  # what `accuracy` counts: "token" or "preference"
    extra: dict[str, float] = field(default_factory=dict)  # DPO: margins, rewards, log-probs
    # Supervised only, for merging two evaluations: the totals over every rank, and this
    # rank's (loss sum, loss tokens) per example (the interval's clusters).
    loss_sum: float = 0.0
    count: int = 0
    correct: int = 0
    sums: tuple[tuple[float, int], ...] = field(default=(), repr=False)
    clustered: bool = False  # `sums` covers every evaluated example (one process)

    def row(self) -> dict[str, Any]:
        """The metrics.jsonl fields of an evaluation."""
        return {"val_loss": self.loss, f"val_{self.kind}_accuracy": self.accuracy,
                "val_examples": self.examples, "val_loss_ci95": self.ci95, **self.extra}


# An evaluation keeps no activations for a backward pass, so its micro-batches can hold more
# examples than a training step's: 300 BANKING77 examples on the default model, full bf16,
# took 4.9 s at 16 examples per micro-batch and 3.9 s at 64.
EVAL_BATCH_FACTOR = 4


def evaluate(model: Any, plan: Plan, rt: Runtime, indices: tuple[int, ...] | None = None) -> ValResult:
    """Validation loss and token accuracy on `indices` of the validation set (default: all).

    The interval treats each evaluated example as a cluster of tokens: the ratio estimator's
    linearized variance, which needs a few examples (at least 4) to mean anything.
    """
    s = plan.settings
    with rt.without_grad(s.method):
        if s.objective == "dpo":
            with _autocast(rt, s, model):
                return ValResult(**dpo.evaluate_pairs(model, plan, rt, indices))
        return _evaluate_sft(model, plan, rt, indices)


def _evaluate_sft(model: Any, plan: Plan, rt: Runtime, indices: tuple[int, ...] | None) -> ValResult:
    s = plan.settings
    was_training = model.training
    model.eval()
    chosen = list(range(len(plan.val))) if indices is None else list(indices)
    mine = rt.dist.share(chosen)  # each rank its share
    batches = micro_batches(plan, mine, plan.val, s.micro_batch_size * EVAL_BATCH_FACTOR)
    sums: list[tuple[float, int]] = []  # (loss sum, loss tokens) per example
    correct = 0
    with _autocast(rt, s, model), merged_for_eval(model, _merge_for_eval(plan, rt, model)):
        for batch in rt.dist.micro_batches(batches):
            out = rt.dist.loss(model, batch.to(rt.device), s.engine, with_accuracy=True)
            if out.example_sums is not None and out.example_tokens is not None:
                sums += zip(out.example_sums.tolist(), out.example_tokens.tolist())
            correct += int(out.n_correct)
    total, count = sum(x for x, _ in sums), sum(n for _, n in sums)
    total, correct, count = rt.dist.sum([total, correct, count])
    model.train(was_training)
    return _sft_result(float(total), int(count), int(correct), len(chosen), tuple(sums), rt.world_size == 1)


def _merge_for_eval(plan: Plan, rt: Runtime, model: Any) -> bool:
    """Whether a LoRA evaluation runs on merged weights (`lora.merged_for_eval`): one process
    (a wrapped or sharded model keeps its own copies), no compiled layers (a swapped weight
    would recompile them), and room for one copy of the adapted weights beside the step's peak."""
    s = plan.settings
    if s.method != "lora" or rt.world_size > 1 or s.compile:
        return False
    room = memory.HEADROOM * memory.device_bytes(rt.device) - (plan.memory.total if plan.memory else 0)
    return merge_bytes(model) <= room


def _sft_result(total: float, count: int, correct: int, examples: int, sums: tuple[tuple[float, int], ...],
                with_ci: bool) -> ValResult:
    if count == 0:
        return ValResult(math.nan, math.nan, examples, None, sums=sums, clustered=with_ci)
    mean = total / count
    return ValResult(mean, correct / count, examples, _ratio_ci95(list(sums), mean) if with_ci else None,
                     loss_sum=total, count=count, correct=correct, sums=sums, clustered=with_ci)


def merge_results(a: ValResult, b: ValResult) -> ValResult:
    """One supervised evaluation over the examples of two (disjoint) ones."""
    return _sft_result(a.loss_sum + b.loss_sum, a.count + b.count, a.correct + b.correct, a.examples + b.examples,
                       a.sums + b.sums, a.clustered and b.clustered)


def _ratio_ci95(sums: list[tuple[float, int]], mean: float) -> float | None:
    """95% half-width of sum(loss)/sum(tokens) with examples as clusters (linearized ratio estimator)."""
    clusters = [(x, n) for x, n in sums if n > 0]
    k = len(clusters)
    if k < 4:
        return None
    avg_tokens = sum(n for _, n in clusters) / k
    var = sum((x - mean * n) ** 2 for x, n in clusters) / (k - 1) / k / avg_tokens**2
    return 1.96 * math.sqrt(var)


# ----------------------------------------------------------------------------- summary


def _state_dict(st: _State) -> dict[str, Any]:
    return {k: getattr(st, k) for k in _State.__dataclass_fields__ if k != "step"}


def _summary(plan: Plan, st: _State, status: str, message: str = "") -> dict[str, Any]:
    return {
        "status": status,
        "message": message,
        "method": plan.settings.method,
        "objective": plan.settings.objective,
        "base_model": plan.settings.base_model,
        "base_model_path": str(plan.model.path),
        "train_examples": len(plan.train),
        "val_examples": len(plan.val),
        "train_tokens": plan.train_tokens,
        "train_loss_tokens": plan.train_loss_tokens,
        "steps": st.step,
        "total_steps": int(st.segments[-1][1]) if st.segments else plan.total_steps,
        "wall_s": round(st.elapsed_s, 2),
        "tokens_per_s": round(st.tokens_seen / st.elapsed_s, 1) if st.elapsed_s else None,
        "best_step": st.best_step,
        "best_val_loss": None if math.isinf(st.best_val_loss) else st.best_val_loss,
        "final_train_loss": None if math.isnan(st.last_train_loss) else st.last_train_loss,
        "n_params": plan.n_params,
        "time_budget_s": plan.settings.time_budget_s,
        # Where the wall time went (seconds): the rest of wall_s is the optimizer steps themselves.
        "time_breakdown": {"eval_s": round(st.eval_s, 2), "checkpoint_s": round(st.checkpoint_s, 2),
                           "steps_s": round(max(0.0, st.elapsed_s - st.eval_s - st.checkpoint_s), 2)},
    }
