"""``ram-grounded annotate`` (run a pipeline over a dataset into a store, then export) and
``ram-grounded export`` (rewrite formats from an existing store, no models).

Exit codes as in :mod:`ram_grounded.cli`: 0 all good, 1 some images failed (listed in
``DIR/errors.jsonl``), 2 usage/configuration error, 4 weights problem, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError, RamGroundedError

# the same option types as ram_grounded.cli (defined here: cli imports this module while loading)
Verbose = Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v info, -vv debug logging")]
Device = Annotated[str, typer.Option(help="auto (cuda, else mps, else cpu), cpu, cuda[:N] or mps")]
FORMAT_HELP = "comma-separated: coco, yolo (= yolo-det + yolo-seg), yolo-det, yolo-seg, voc, labelstudio, jsonl, all"


def register(app: typer.Typer) -> None:
    """Add ``annotate`` and ``export`` to ``app``."""

    @app.command("annotate")
    def annotate_cmd(
        src: Annotated[list[str], typer.Argument(help="folders, globs, .txt lists of paths/URLs, images")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output folder (the store and the formats)")],
        pipeline: Annotated[str, typer.Option(help="a ready pipeline name or a YAML file")] = "ram_grounded_sam",
        format: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "coco,jsonl",
        batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 4,
        device: Device = "auto",
        classes: Annotated[Optional[str], typer.Option(help="comma-separated classes to add to the prompt")] = None,
        exclude: Annotated[Optional[str], typer.Option(help="comma-separated tags/classes to drop")] = None,
        overwrite: Annotated[bool, typer.Option(help="start over when --out holds a run with other settings")] = False,
        images: Annotated[bool, typer.Option(help="link the source images into the dataset folders")] = True,
        workers: Annotated[int, typer.Option(help="threads decoding images")] = 2,
        engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data actor pool; "
                                                 "pip install 'ram-grounded[ray]')")] = "local",
        address: Annotated[Optional[str], typer.Option(help="ray: cluster to join (auto, ray://host:10001); "
                                                            "default: start a local Ray")] = None,
        num_actors: Annotated[int, typer.Option(help="ray: pipeline replicas, each loads the models once")] = 1,
        gpus_per_actor: Annotated[float, typer.Option(help="ray: GPUs per replica (0.5 = two per GPU)")] = 0.0,
        cpus_per_actor: Annotated[float, typer.Option(help="ray: CPUs per replica")] = 1.0,
        verbose: Verbose = 0,
    ) -> None:
        """Annotate SRC with a pipeline: store every record in OUT/records.jsonl, then write the formats.

        Run it again with the same arguments after a crash to resume where it stopped.
        """
        from ..cli import _setup_logging, _warn_tiny

        _setup_logging(verbose)
        _warn_tiny()
        ray_options = {"address": address, "num_actors": num_actors, "gpus_per_actor": gpus_per_actor,
                       "cpus_per_actor": cpus_per_actor}
        code = _guard(lambda: _annotate(src, out, pipeline, format, batch_size, device, classes, exclude,
                                        overwrite, images, workers, engine, ray_options))
        raise typer.Exit(code)

    @app.command("export")
    def export_cmd(
        store_dir: Annotated[Path, typer.Argument(metavar="DIR", help="the --out folder of an annotate run")],
        format: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "coco,jsonl",
        to: Annotated[Optional[Path], typer.Option(help="write the formats here instead of DIR")] = None,
        images: Annotated[bool, typer.Option(help="link the source images into the dataset folders")] = True,
        ls_url_prefix: Annotated[Optional[str], typer.Option(help="Label Studio image URL prefix for local files")] = None,
        verbose: Verbose = 0,
    ) -> None:
        """Rewrite dataset formats from DIR/records.jsonl without running any model."""
        from ..cli import _setup_logging

        _setup_logging(verbose)
        raise typer.Exit(_guard(lambda: _export(store_dir, format, to, images, ls_url_prefix)))


def _guard(job) -> int:
    from ..cli import EXIT_INTERRUPTED, EXIT_USAGE

    try:
        return job()
    except RamGroundedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return exc.exit_code
    except OSError as exc:  # e.g. --out not writable, disk full: the user's to fix, no traceback
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        typer.secho("interrupted (run the same command again to resume)", err=True)
        return EXIT_INTERRUPTED


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def apply_class_options(pipe, classes: list[str], exclude: list[str]) -> None:
    """Set ``classes`` / ``exclude`` on every stage that has such a field (ConfigError if none)."""
    for option, value in (("classes", classes), ("exclude", exclude)):
        if not value:
            continue
        targets = [s for s in pipe.stages if dataclasses.is_dataclass(s)
                   and option in {f.name for f in dataclasses.fields(s)}]
        if not targets:
            raise ConfigError(f"--{option}: no stage of pipeline {pipe.name!r} has a {option!r} parameter",
                              hint="use a pipeline with a prompt_from_tags stage")
        for stage in targets:
            setattr(stage, option, list(value))


def _annotate(src, out, pipeline, fmt, batch_size, device, classes, exclude, overwrite, images, workers,
              engine="local", ray_options=None) -> int:
    from ..cli import EXIT_OK, EXIT_SOME_FAILED
    from ..engine.local import run_local
    from ..export import export_store, parse_formats
    from ..io.sources import iter_sources
    from ..pipeline_yaml import load_pipeline
    from ..store import RecordStore

    formats = parse_formats(fmt)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}", hint="use 1 or more")
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown --engine {engine!r}", hint="use --engine local or --engine ray")
    if engine == "ray":
        from ..engine.ray import require_ray

        require_ray()  # before anything is written: says how to install Ray when it is missing
    pipe = load_pipeline(pipeline, device=device)
    apply_class_options(pipe, _split(classes), _split(exclude))
    sources = _unique(iter_sources(src))
    store = RecordStore.create_or_resume(out, pipe.to_dict(), overwrite=overwrite)
    start = time.perf_counter()
    if engine == "ray":
        from ..engine.ray import run_ray

        events = run_ray(pipe, sources, store, batch_size=batch_size, **(ray_options or {}))
    else:
        events = run_local(pipe, sources, store, batch_size=batch_size, num_workers=workers)
    progress = _run_with_bar(events, pipe.name)
    n_errors = store.finalize()
    written = export_store(store, formats, images=images)
    _summary(store, progress, time.perf_counter() - start, written, n_errors)
    return EXIT_SOME_FAILED if n_errors else EXIT_OK


def _unique(sources: list[str]) -> list[str]:
    seen: set[str] = set()
    unique = [s for s in sources if not (s in seen or seen.add(s))]
    if len(unique) < len(sources):
        typer.secho(f"note: {len(sources) - len(unique)} duplicate source(s) ignored", err=True)
    return unique


def _run_with_bar(events, name: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} img/s  errors: {task.fields[errors]}"), TimeRemainingColumn())
    last = None
    start = time.perf_counter()
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as bar:
        task = None
        for event in events:
            if task is None:
                task = bar.add_task(name, total=event.total, completed=event.done, rate="-", errors=0)
                if event.resumed:
                    typer.secho(f"resuming: {event.resumed} of {event.total} images already stored", err=True)
            for record in event.batch:
                if record.error:
                    where = "" if str(record.error).startswith(str(record.source)) else f"{record.source}: "
                    typer.secho(f"failed: {where}{record.error}", fg=typer.colors.YELLOW, err=True)
            rate = event.processed / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=event.done, errors=event.errors, rate=f"{rate:.2f}")
            last = event
    return last


def _summary(store, progress, seconds: float, written: dict, n_errors: int) -> None:
    images = objects = 0
    classes: set[str] = set()
    from ..export.common import detection_class_names
    from ..record import Record

    for data in store.iter_dicts():
        images += 1
        det = data.get("detections") or {}
        if not data.get("error") and det.get("xyxy"):
            objects += len(det["xyxy"])
            light = {**data, "detections": {k: v for k, v in det.items() if k not in ("mask", "mask_shape")}}
            classes.update(detection_class_names(Record.from_dict(light)))
    done_now = progress.processed if progress else 0
    rate = done_now / seconds if seconds > 0 else 0.0
    typer.echo(f"{images} images ({done_now} this run, {rate:.2f} img/s), {objects} objects, "
               f"{len(classes)} classes, {n_errors} errors, {seconds:.1f} s")
    for fmt, path in written.items():
        typer.echo(f"  {fmt:<12} {path}")
    if n_errors:
        typer.echo(f"  failed images are listed in {store.errors_path}")


def _export(store_dir: Path, fmt: str, to: Path | None, images: bool, ls_url_prefix: str | None) -> int:
    from ..cli import EXIT_OK
    from ..export import export_store, parse_formats
    from ..store import RecordStore

    formats = parse_formats(fmt)
    store = RecordStore.open(store_dir)  # read-only: a torn tail is skipped, not cut
    written = export_store(store, formats, to, images=images, image_url_prefix=ls_url_prefix)
    for name, path in written.items():
        typer.echo(f"{name:<12} {path}")
    return EXIT_OK
