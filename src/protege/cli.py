"""The `protege` command line. Parses arguments and calls one stage function per command.

No logic lives here. Heavy modules are imported inside the commands so that `protege --help`
starts fast. A `UserError` anywhere becomes one message on stderr and exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from protege.errors import UserError, report

app = typer.Typer(
    name="protege",
    help="Fine-tune small LLMs on the output of large LLMs: generate, curate, train, evaluate, ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Convert and validate data files (alpaca, seed, sharegpt, openai, parquet).",
                       no_args_is_help=True)
models_app = typer.Typer(help="List and prepare models (offline PyPI models, hf:, gguf:, folders).",
                         no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

FromOpt = typer.Option(None, "--from", help="Input format (default: detected): alpaca|seed|sharegpt|openai|parquet|text")


@app.command()
def demo(
    directory: Path = typer.Argument(Path("protege-demo"), help="Folder for the demo project (resumed if present)."),
    num: int = typer.Option(20, "--num", help="Tasks the teacher should write (kept after filters; a quarter held out)."),
    steps: int = typer.Option(30, "--steps", help="LoRA optimizer steps for the student."),
    teacher: str = typer.Option("qwen2.5-coder-1.5b-instruct", "--teacher", help="Offline teacher model (GGUF, llama.cpp)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting after the demo's own: "
                                        "--set train.method=full (repeatable)."),
) -> None:
    """The whole loop offline: self-instruct, curate, LoRA-train SmolLM2, judge it against its base."""
    from rich.panel import Panel

    from protege.demo import run

    result = run(directory, num=num, steps=steps, teacher=teacher, overrides=overrides,
                 say=lambda m: out.print(m, markup=False, highlight=False))
    for row in result["comparison"]:
        body = "\n".join(f"[bold]{k}[/]: {escape(row[k])}" for k in ("reference", "base", "student", "verdict")
                         if k in row)
        out.print(Panel(body, title=escape(row["prompt"][:100]), title_align="left"))
    if result["headline"]:
        out.print(f"Verdict: {result['headline']}", markup=False, highlight=False)
    out.print(f"Done. Everything is in {result['run_dir']} (manifest.json lists each artifact; "
              f"protege report -c {directory / 'protege.yaml'} writes report.html).", markup=False, highlight=False)


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in."),
    force: bool = typer.Option(False, "--force", help="Overwrite protege.yaml / seeds.jsonl if present."),
) -> None:
    """Scaffold a project: a commented protege.yaml and seed tasks written for protege."""
    from protege.scaffold import init_project

    written = init_project(directory, force=force)
    for path in written:
        out.print(f"wrote {path}", markup=False)
    out.print(f"\nNext: edit {directory / 'protege.yaml'}, then run [bold]protege generate -c {directory / 'protege.yaml'}[/]")


ConfigOpt = typer.Option(..., "--config", "-c", help="The run's YAML config (see `protege init`).")
SetOpt = typer.Option([], "--set", help="Override a config key: --set train.lr=1e-4 (repeatable).")


def _load(config: Path, overrides: list[str]):  # -> RunConfig (imported lazily)
    from protege.config import load_config

    return load_config(config, overrides)


@app.command("config")
def config_show(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Check a config (its rules, the files and models it names) and print it resolved."""
    from protege.pipeline import check_inputs

    cfg = _load(config, set_)
    check_inputs(cfg)
    out.print(cfg.to_yaml(), markup=False, highlight=False, end="")
    out.print(f"# {config}: valid", markup=False, highlight=False)


@data_app.command("convert")
def data_convert(
    src: Path = typer.Argument(..., help="Input file (format detected from its records)."),
    dst: Path = typer.Argument(..., help="Output file (.json for a JSON list, .jsonl, .parquet)."),
    to: str = typer.Option(..., "--to", help="Output format: alpaca|sharegpt|openai|parquet"),
    from_: Optional[str] = FromOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite DST if it exists."),
) -> None:
    """Convert a data file between formats, losing nothing both formats can express."""
    from protege import records

    if dst.exists() and not force:
        raise UserError(f"{dst} already exists", hint="Choose another output path, or pass --force to overwrite it.")
    if src.resolve() == dst.resolve():
        raise UserError("input and output are the same file", hint="Write to a new file.")
    examples = records.read_examples(src, from_)
    n = records.write_examples(dst, examples, to)
    out.print(f"wrote {n} records to {dst} ({to})", markup=False)


@data_app.command("validate")
def data_validate(
    path: Path = typer.Argument(..., help="File to check."),
    from_: Optional[str] = FromOpt,
) -> None:
    """Report every bad record with its location and the reason (exit 2 if any)."""
    from protege import records

    fmt = from_ or records.detect_format(path)
    total, problems = records.validate_file(path, fmt)
    for loc, reason in problems:
        out.print(f"{path}:{loc}: {reason}", highlight=False, markup=False)
    bad = len({loc for loc, _ in problems})
    if problems:
        raise UserError(f"{path}: {bad} of {total} records are bad ({fmt} format)")
    out.print(f"{path}: all {total} records are valid ({fmt} format)", markup=False)


def _store(cfg):  # -> RunStore
    from protege.store import RunStore

    return RunStore(cfg.run_dir)


@app.command()
def generate(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the requests, tokens and cost expected; call nothing."),
) -> None:
    """Ask the teacher for data: self-instruct, respond, explain or self-chat (resumable, cached)."""
    from protege.generate import run

    cfg = _load(config, set_)
    run(cfg, _store(cfg), dry_run=dry_run)


@app.command()
def curate(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    input_: Optional[Path] = typer.Option(None, "--input", help="Curate this file instead of the run's generate/raw.jsonl."),
    no_stats: bool = typer.Option(False, "--no-stats", help="Skip the stats charts (spaCy parsing takes seconds)."),
) -> None:
    """Filter, dedup, decontaminate and split the data; write the dataset card and stats."""
    from protege.curate.stage import run

    cfg = _load(config, set_)
    run(cfg, _store(cfg), input_path=input_, stats=not no_stats)


@app.command()
def train(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint (after a crash or kill)."),
) -> None:
    """Fine-tune the student (LoRA, full, QLoRA) with preflight checks and the governance gate."""
    from protege.train import run

    cfg = _load(config, set_)
    run(cfg, _store(cfg), resume=resume, console=out)


@app.command("eval")
def eval_(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Candidates answer the sets; a judge compares them (win rates with CIs); IFEval, ROUGE-L, cost table."""
    from protege.evaluate import run

    cfg = _load(config, set_)
    scores = run(cfg, _store(cfg), say=lambda m: out.print(m, markup=False, highlight=False))
    out.print(f"Scores: {_store(cfg).scores}", markup=False, highlight=False)
    out.print(scores["headline"], markup=False, highlight=False)


@app.command("report")
def report_(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Write RUN/report.html (self-contained, charts embedded) and RUN/report.md from the run directory."""
    from protege.report import run

    cfg = _load(config, set_)
    result = run(_store(cfg))
    out.print(f"wrote {result['html']} and {result['md']}", markup=False, highlight=False)
    if result["without_data"]:
        out.print(f"sections without data yet: {', '.join(result['without_data'])}", markup=False, highlight=False)


@app.command("run")
def run_all(
    config: Path = ConfigOpt,
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Run every stage even if its config and inputs are unchanged."),
) -> None:
    """Run the whole pipeline (generate, curate, train; eval with eval.in_run), skipping unchanged stages."""
    from protege.pipeline import run

    cfg = _load(config, set_)
    run(cfg, _store(cfg), force=force, say=lambda m: out.print(m, markup=False, highlight=False))


@app.command()
def dedup(
    src: Path = typer.Argument(..., help="Input file (any supported format)."),
    dst: Path = typer.Argument(..., help="Output file for the kept records (input format unless --to)."),
    threshold: float = typer.Option(0.7, "--threshold", help="Drop when ROUGE-L F against a kept record is > this."),
    field: str = typer.Option("instruction", "--field", help="Text compared: instruction|input|output|prompt."),
    exact: bool = typer.Option(False, "--exact", help="Only drop exact duplicates (normalised text)."),
    from_: Optional[str] = FromOpt,
    to: Optional[str] = typer.Option(None, "--to", help="Output format (default: the input's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DST if it exists."),
) -> None:
    """Drop near-duplicates by ROUGE-L (the self-instruct filter), exactly and fast."""
    from protege.curate.dedup_file import dedup_file

    if dst.exists() and not force:
        raise UserError(f"{dst} already exists", hint="Choose another output path, or pass --force to overwrite it.")
    s = dedup_file(src, dst, threshold=threshold, field=field, from_=from_, to=to, exact=exact)
    out.print(f"kept {s.kept} of {s.total}, dropped {s.dropped} in {s.seconds:.2f} s -> {s.output} "
              f"(dropped, with matches: {s.dropped_file})", markup=False, highlight=False)


ModelArg = typer.Argument(..., help="A run directory, student/merged or adapter folder, a model folder, a .gguf "
                          "file, or a model spec (smollm2-135m-instruct, hf:ORG/NAME, gguf:PATH).")
BaseOpt = typer.Option(None, "--base", help="The base model of a LoRA adapter (default: the one it was trained on).")


@app.command()
def serve(
    model: str = ModelArg,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="NAME of the env variable holding the bearer key clients must send."),
    backend: Optional[str] = typer.Option(None, "--backend", help="hf | llamacpp (default: llamacpp for a .gguf, else hf)."),
    base: Optional[str] = BaseOpt,
    max_batch: int = typer.Option(8, "--max-batch", help="hf: most concurrent requests generated as one batch."),
    max_queue: int = typer.Option(64, "--max-queue", help="Most requests inside the server (running + waiting); more get 503."),
    n_ctx: int = typer.Option(4096, "--n-ctx", help="llamacpp: context length."),
    n_threads: Optional[int] = typer.Option(None, "--n-threads", help="CPU threads for the model (default: all cores)."),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="Model id clients use (default: the run or model name)."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, streaming, /v1/models, /health)."""
    from protege.ship.serve import run

    run(model, host=host, port=port, api_key_env=api_key_env, backend=backend, base=base, max_batch=max_batch,
        max_queue=max_queue, n_ctx=n_ctx, n_threads=n_threads, served_name=served_name,
        say=lambda m: err.print(m, markup=False, highlight=False))


@app.command()
def chat(
    model: str = ModelArg,
    backend: Optional[str] = typer.Option(None, "--backend", help="hf | llamacpp (default: llamacpp for a .gguf, else hf)."),
    base: Optional[str] = BaseOpt,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (change it later with /system TEXT)."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature (0 = greedy)."),
    n_threads: Optional[int] = typer.Option(None, "--n-threads", help="CPU threads for the model (default: all cores)."),
) -> None:
    """Chat with a model in the terminal: streamed answers, history, /reset, /system TEXT, /exit; Ctrl-C stops an answer."""
    from protege.ship.chat import run

    run(model, backend=backend, base=base, system=system, max_tokens=max_tokens, temperature=temperature,
        n_threads=n_threads)


@app.command()
def export(
    model: str = ModelArg,
    format_: str = typer.Option(..., "--format", help="hf (merged safetensors) | gguf | ollama (GGUF + Modelfile)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write (new or empty, unless --force)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="gguf/ollama: f16 (default) | q8_0 | q4_k_m."),
    base: Optional[str] = BaseOpt,
    check_prompts: int = typer.Option(5, "--check-prompts", help="gguf/ollama: prompts the llama.cpp-vs-HF check answers (0-10)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out folder."),
) -> None:
    """Export a student: merged safetensors, GGUF (checked with llama.cpp) or an Ollama Modelfile, with its model card."""
    from protege.ship.export import run

    record = run(model, fmt=format_, out=out_dir, quant=quant, base=base, force=force, check_prompts=check_prompts,
                 say=lambda m: err.print(m, markup=False, highlight=False))
    out.print(f"exported {record['source']} as {format_} to {out_dir}: {', '.join(record['files'])} "
              f"({record['seconds']} s; details in {out_dir / 'export.json'})", markup=False, highlight=False)


@models_app.command("list")
def models_list() -> None:
    """Known offline models: whether their packages are installed and whether they are prepared."""
    from rich.table import Table

    from protege import models

    table = Table()
    table.add_column("name", no_wrap=True)
    for col in ("role", "installed", "prepared"):
        table.add_column(col)
    statuses = models.list_models()
    for st in statuses:
        info = models.KNOWN_MODELS[st.name]
        table.add_row(st.name, info.role, "yes" if st.installed else "no", "yes" if st.prepared else "no")
    out.print(table)
    for st in statuses:
        out.print(f"{st.name}: license: {models.KNOWN_MODELS[st.name].license}", markup=False, highlight=False)
        if st.prepared:
            out.print(f"{st.name}: {st.path}", markup=False, highlight=False)
        elif not st.installed:
            out.print(f"{st.name}: install with: {st.install_command}", markup=False, highlight=False)
    out.print(f"cache: {models.cache_dir()} (PROTEGE_CACHE overrides)", markup=False, highlight=False)


@models_app.command("prepare")
def models_prepare(
    spec: str = typer.Argument(..., help="A named offline model, gguf:PATH, hf:ORG/NAME or a folder."),
    force: bool = typer.Option(False, "--force", help="Convert again even if already prepared."),
) -> None:
    """Assemble, verify and convert a model to a safetensors folder (once; cached)."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from protege import models

    with Progress("[progress.description]{task.description}", BarColumn(), "[progress.percentage]{task.percentage:>3.0f}%",
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: float, total: float) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total or None)
            progress.update(tasks[stage], completed=done, total=total or None)

        t0 = time.perf_counter()
        path = models.prepare(spec, progress=report, force=force)
    out.print(f"{spec}: ready at {path} ({time.perf_counter() - t0:.1f} s)", markup=False)


_signal_received: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM stops a run like Ctrl-C: the same clean path (requests cancelled, files closed)."""
    import signal

    _signal_received.append(signum)
    handler = signal.getsignal(signal.SIGINT)  # asyncio's (cancels the main task) or Python's default
    if callable(handler) and handler is not _on_sigterm:
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _interrupted() -> int:
    """The one-line message after Ctrl-C/SIGTERM; exit 130 (SIGINT) or 143 (SIGTERM)."""
    import shlex
    import signal

    args = sys.argv[1:]
    if args[:1] == ["train"] and "--resume" not in args:
        args = [*args, "--resume"]
    term = bool(_signal_received)
    err.print(f"{'terminated' if term else 'interrupted'}; everything written so far is kept. "
              f"Resume with: protege {shlex.join(args)}", markup=False, highlight=False)
    return 128 + (signal.SIGTERM if term else signal.SIGINT)


def main() -> None:
    """Console entry point: run the app, turning UserError into a clean exit 2, Ctrl-C into 130,
    SIGTERM into 143 (both with how to resume), and an unusable user path into exit 2."""
    import signal

    from protege.paths import USER_PATH_ERRNOS, user_path_error

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # Without standalone mode Typer *returns* exit codes (typer.Exit, and 130 for Ctrl-C).
        rc = app(standalone_mode=False)
        if rc == 130:
            sys.exit(_interrupted())
        if isinstance(rc, int) and not isinstance(rc, bool) and rc:
            sys.exit(rc)
    except UserError as e:
        sys.exit(report(e))
    except KeyboardInterrupt:
        sys.exit(_interrupted())
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort as e:
        if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
            sys.exit(_interrupted())
        err.print("aborted")
        sys.exit(1)
    except OSError as e:
        # The last net for writes on the user's paths (read-only, full, no permission, a file in the
        # way) that no stage turned into a UserError itself (protege.paths does it where it writes).
        if e.errno not in USER_PATH_ERRNOS:
            raise
        sys.exit(report(user_path_error(e)))
    except Exception as e:  # click's usage errors: show them as click does, exit 2
        import click

        if isinstance(e, click.exceptions.Abort) and isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
            sys.exit(_interrupted())
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
