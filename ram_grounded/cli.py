"""The ``ram-grounded`` command.

Exit codes: 0 all good; 1 some inputs failed (each is reported, the rest finished);
2 usage or configuration error; 4 missing, corrupt or wrong weights; 130 interrupted.
A user error prints one line, never a traceback (``-v`` shows details in the log).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import RamGroundedError

app = typer.Typer(
    help="Recognize Anything (RAM, RAM++, Tag2Text) -> Grounding DINO -> SAM, as composable pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _warn_tiny() -> None:
    from . import zoo

    if zoo.tiny_mode():
        typer.secho(f"WARNING: {zoo.TINY_WARNING}", fg=typer.colors.RED, bold=True, err=True)
        zoo.mark_tiny_warned()  # said once, loudly: the library need not log it again


def _fail(exc: RamGroundedError) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(exc.exit_code)


Verbose = Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v info, -vv debug logging")]
Device = Annotated[str, typer.Option(help="auto (cuda, else mps, else cpu), cpu, cuda[:N] or mps")]


@app.command("pipelines")
def pipelines_cmd(verbose: Verbose = 0) -> None:
    """List the ready pipelines: name, description, stages."""
    from .pipeline_yaml import list_pipelines
    import yaml

    _setup_logging(verbose)
    for name, path in list_pipelines().items():
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        stages = " -> ".join(s["stage"] for s in spec.get("stages", []))
        typer.echo(f"{name:<24} {spec.get('description', '')}")
        typer.echo(f"{'':<24} stages: {stages}")


@app.command("models")
def models_cmd(verbose: Verbose = 0) -> None:
    """List the model zoo: name, kind, size, license, and whether it is cached here."""
    from .zoo import cards, is_cached

    _setup_logging(verbose)
    typer.echo(f"{'name':<30} {'kind':<14} {'size':>9}  {'license':<13} {'cached':<6} source")
    for card in cards().values():
        size = f"{card.size / 1e9:.2f} GB" if card.size else "-"
        try:
            cached = "yes" if is_cached(card) else "no"
        except Exception:  # noqa: BLE001 - a broken cache entry must not break the listing
            cached = "?"
        typer.echo(f"{card.name:<30} {card.arch:<14} {size:>9}  {card.license:<13} {cached:<6} {card.source}")


@app.command("run")
def run_cmd(
    pipeline: Annotated[str, typer.Argument(help="a ready pipeline name or a YAML file")],
    sources: Annotated[list[str], typer.Argument(help="images, folders, globs, URLs or .txt lists")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("ram_grounded_out"),
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 4,
    plot: Annotated[bool, typer.Option(help="also write an annotated image per input")] = True,
    verbose: Verbose = 0,
) -> None:
    """Run PIPELINE on SOURCES: one JSON per image (plus an annotated image) in --out."""
    _setup_logging(verbose)
    _warn_tiny()
    try:
        code = _run(pipeline, sources, out, device, batch_size, plot)
    except RamGroundedError as exc:
        raise _fail(exc) from None
    except OSError as exc:  # e.g. --out not writable
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


def _run(pipeline: str, sources: list[str], out: Path, device: str, batch_size: int, plot: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .io.sources import iter_sources
    from .pipeline_yaml import load_pipeline
    from .visualize import plot_record, save_image

    pipe = load_pipeline(pipeline, device=device)
    items = [s for spec in sources for s in iter_sources(spec)]
    out.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} img/s  errors: {task.fields[errors]}"), TimeRemainingColumn())
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(pipe.name, total=len(items), rate="-", errors=0)
        for record in pipe.run(items, batch_size=batch_size):
            stem = _unique_stem(record.source or "image", names)
            (out / f"{stem}.json").write_text(json.dumps(record.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
            if record.error:
                failed += 1
                typer.secho(f"failed: {record.source}: {record.error}", fg=typer.colors.YELLOW, err=True)
            elif plot:
                try:
                    save_image(plot_record(record), str(out / f"{stem}.jpg"))
                except Exception as exc:  # noqa: BLE001 - one picture must not end the run
                    failed += 1
                    typer.secho(f"failed to draw {record.source}: {exc}", fg=typer.colors.YELLOW, err=True)
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, advance=1, errors=failed, rate=f"{(progress.tasks[0].completed + 1) / elapsed:.2f}")
    typer.echo(f"{len(items)} images, {failed} failed; results in {out}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _unique_stem(source: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.split("?")[0]).stem)[:80] or "image"
    stem, i = base, 1
    while stem in taken:
        stem, i = f"{base}_{i}", i + 1
    taken.add(stem)
    return stem


def _register_commands() -> None:
    import importlib

    from .commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(f".commands.{name}", __package__).register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
