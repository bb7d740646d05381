"""`tunecraft data check`: validate a dataset, report every problem at once, then token statistics.

Everything that needs no model runs first (format, fields, duplicates, leakage). Statistics need
only the tokenizer, never the weights, and are skipped for files with errors: those are listed
in full instead. Errors make the command exit 1; warnings alone exit 0. A raw-text JSONL file is
streamed, and its tokens land in the cache entry that training then reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunecraft.data.dedup import duplicate_issues, find_duplicates, find_leaks, leak_issues
from tunecraft.data.formats import ParsedFile
from tunecraft.data.render import TemplateMode
from tunecraft.data.schema import Format, Issue
from tunecraft.data.stats import TokenStats, length_issues, token_stats
from tunecraft.data.textfile import read_file
from tunecraft.errors import ConfigError
from tunecraft.out import escape

# Below this many training examples fine-tuning rarely changes behaviour reliably; OpenAI's
# fine-tuning guide asks for at least 10 and sees clear gains from 50-100 well-made examples.
FEW_TRAIN = 50
# Validation loss over fewer examples than this is too noisy to compare checkpoints with.
FEW_VAL = 10

Role = Literal["train", "val"]


@dataclass
class FileReport:
    role: Role
    path: str
    format: Format | None
    examples: int  # valid examples
    stats: TokenStats | None = None  # None: skipped (the file has errors, or no model)

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role, "path": self.path, "format": self.format,
            "examples": self.examples, "stats": self.stats.to_json() if self.stats else None,
        }


@dataclass
class CheckReport:
    files: list[FileReport]
    issues: list[Issue] = field(default_factory=list)
    model: str | None = None  # the model whose tokenizer measured the statistics
    max_length: int | None = None

    @property
    def n_errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")

    @property
    def n_warnings(self) -> int:
        return sum(1 for i in self.issues if i.severity == "warning")

    @property
    def stats(self) -> dict[str, TokenStats | None]:
        """Statistics per file role ("train", "val")."""
        return {f.role: f.stats for f in self.files}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.n_errors == 0,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "model": self.model,
            "max_length": self.max_length,
            "files": [f.to_json() for f in self.files],
            "issues": [
                {"path": i.path, "line": i.line, "code": i.code, "message": i.message,
                 "severity": i.severity}
                for i in self.issues
            ],
        }


def _count_issues(parsed: ParsedFile, role: Role) -> list[Issue]:
    n, path = len(parsed.examples), str(parsed.path)
    if parsed.n_errors or n == 0:
        return []
    if role == "train" and n < FEW_TRAIN:
        return [Issue(path, 0, "few_examples", f"only {n} training examples; fine-tuning usually "
                      f"needs at least {FEW_TRAIN}-100 varied, high-quality examples to change "
                      "the model's behaviour reliably (more helps)", "warning")]
    if role == "val" and n < FEW_VAL:
        return [Issue(path, 0, "few_examples", f"only {n} validation examples; the validation "
                      f"loss will be noisy: use at least {FEW_VAL} (50+ is better)", "warning")]
    return []


def _data_issues(parsed: dict[Role, ParsedFile]) -> list[Issue]:
    """Everything that needs no model: parse issues, counts, duplicates, leakage."""
    issues: list[Issue] = []
    for role, pf in parsed.items():
        issues += pf.issues + _count_issues(pf, role)
        issues += duplicate_issues(find_duplicates(pf.examples), str(pf.path))
    if "val" in parsed:
        train, val = parsed["train"], parsed["val"]
        leaks = find_leaks(train.examples, val.examples)
        issues += leak_issues(leaks, str(val.path), str(train.path))
    return issues


def _load_tokenizer(model: str | None, on_status: Callable[[str], None] | None) -> tuple[Any, Path, str]:
    from tunecraft.models.load import load_tokenizer
    from tunecraft.models.registry import DEFAULT_MODEL
    from tunecraft.models.resolve import resolve_model

    name = model or DEFAULT_MODEL
    resolved = resolve_model(name, on_status)
    return load_tokenizer(resolved.path), resolved.path, name


def check_data(
    data: Path,
    val: Path | None = None,
    model: str | None = None,
    max_length: int | None = None,
    template: TemplateMode = "auto",
    system_prompt: str | None = None,
    on_status: Callable[[str], None] | None = None,
) -> CheckReport:
    """Validate `data` (and `val`); token statistics with `model`'s tokenizer for clean files."""
    if max_length is not None and max_length < 1:
        raise ConfigError(f"--max-length {max_length}: must be a positive number of tokens")
    # Raw-text JSONL streams (data.textfile): a large corpus is checked in bounded memory.
    parsed: dict[Role, ParsedFile] = {"train": read_file(Path(data))}
    if val is not None:
        parsed["val"] = read_file(Path(val))
    report = CheckReport(
        [FileReport(role, str(pf.path), pf.format, len(pf.examples)) for role, pf in parsed.items()],
        _data_issues(parsed),
    )
    clean = [(f, parsed[f.role]) for f in report.files if not parsed[f.role].n_errors and f.examples]
    if clean:  # only now touch the model, and only its tokenizer
        from tunecraft.models.facts import context_length

        tokenizer, model_dir, report.model = _load_tokenizer(model, on_status)
        report.max_length = max_length or context_length(tokenizer, model_dir)
        for file_report, pf in clean:
            stats, issues = token_stats(pf.examples, tokenizer, report.max_length, template,
                                        system_prompt)
            file_report.stats = stats
            report.issues += issues + length_issues(stats, file_report.path)
    report.issues = _sorted(report.issues, [f.path for f in report.files])
    return report


def _sorted(issues: list[Issue], paths: list[str]) -> list[Issue]:
    """File order (train, val), then line; file-level issues (line 0) first within a file."""
    rank = {p: i for i, p in enumerate(paths)}
    return sorted(issues, key=lambda i: (rank.get(i.path, len(paths)), i.line))


SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}


def print_issue(issue: Issue, console: Console) -> None:
    where = f"{issue.path}:{issue.line}" if issue.line else issue.path
    text = Text.assemble(
        (f"{where}: ", "bold"), (issue.code, SEVERITY_STYLE[issue.severity]), f": {issue.message}"
    )
    # soft_wrap: one issue per physical line, so `grep` and editors can jump to PATH:LINE.
    console.print(text, soft_wrap=True, highlight=False)


def _print_issues(issues: list[Issue], console: Console) -> None:
    """Errors first, then warnings, each group in file and line order."""
    for severity in ("error", "warning"):
        group = [i for i in issues if i.severity == severity]
        if group:
            noun = severity if len(group) == 1 else f"{severity}s"
            console.print(Text(f"{len(group)} {noun}:", style=SEVERITY_STYLE[severity]))
            for issue in group:
                print_issue(issue, console)


def _stats_table(report: CheckReport) -> Table:
    table = Table(title=f"Tokens ({escape(str(report.model))}, max length {report.max_length})",
                  title_justify="left")
    table.add_column("")
    for f in report.files:
        table.add_column(f"{f.role}: {escape(Path(f.path).name)}", justify="right")
    rows: list[tuple[str, Callable[[FileReport], str]]] = [
        ("format", lambda f: f.format or "-"),
        ("examples", lambda f: f"{f.examples:,}"),
        ("tokens", lambda f: f"{f.stats.tokens:,}" if f.stats else "skipped"),
        ("loss-bearing tokens", lambda f: f"{f.stats.loss_tokens:,}" if f.stats else "-"),
        ("length p50 / p90 / p99", lambda f: f"{f.stats.p50} / {f.stats.p90} / {f.stats.p99}"
         if f.stats else "-"),
        ("length max", lambda f: f"{f.stats.max:,}" if f.stats else "-"),
        ("longer than max length", lambda f: f"{f.stats.too_long} ({f.stats.tokens_cut:,} tokens cut)"
         if f.stats else "-"),
    ]
    if any(f.stats and f.stats.split_documents for f in report.files):
        rows.append(("split into windows", lambda f: f"{f.stats.split_documents} -> {f.stats.windows} windows "
                     f"(overlap {f.stats.window_overlap})" if f.stats and f.stats.split_documents else "-"))
    for label, cell in rows:
        table.add_row(label, *(cell(f) for f in report.files))
    return table


def _verdict(report: CheckReport) -> Text:
    e, w = report.n_errors, report.n_warnings
    counts = f"{e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"
    if e:
        return Text(f"✗ {counts}: fix the errors above before training", style="bold red")
    if w:
        return Text(f"✓ data is valid ({counts}; read the warnings above)", style="bold yellow")
    return Text("✓ data is valid: no errors, no warnings", style="bold green")


def print_report(report: CheckReport, console: Console) -> None:
    """Issues (one per line, PATH:LINE: code: message), the statistics table, a verdict."""
    _print_issues(report.issues, console)
    if any(f.stats for f in report.files):
        if report.issues:
            console.print()
        console.print(_stats_table(report))
    elif report.n_errors:
        console.print("(token statistics are computed once the errors are fixed)", style="dim")
    console.print(_verdict(report), highlight=False)
