"""``ram-grounded bench``: speed and memory of a pipeline (or one stage) at real model sizes.

By default every zoo model is built at its released size with random weights (nothing is
downloaded; the compute is that of the published checkpoints). See :mod:`ram_grounded.bench`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import ConfigError, RamGroundedError

if TYPE_CHECKING:
    from ..bench import BenchResult

Verbose = Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v info, -vv debug logging")]


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480) (width x height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r} is not WIDTHxHEIGHT", hint="e.g. --size 640x480") from None
    if w < 16 or h < 16:
        raise ConfigError(f"--size {text!r} is too small", hint="use at least 16x16")
    return w, h


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['sam.model=sam_vit_b', 'grounding_dino.batch_size=2'] -> {key: YAML-parsed value}."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set sam.model=sam_vit_b")
        out[key.strip()] = yaml.safe_load(value)
    return out


def format_result(result: BenchResult) -> str:
    """The human-readable table (seconds per image per stage, and the ratio with --baseline)."""
    b, n = result.batched, result.baseline
    lines = [
        f"{result.pipeline}: {' -> '.join(result.stages)}  [{result.weights} weights"
        f"{' at released sizes' if result.weights == 'random' else ''}]",
        f"{result.images} images {result.size[0]}x{result.size[1]}, batch {b.batch_size}, device {result.device}, "
        f"{result.threads} torch threads, torch {result.torch}; workload {b.tags_per_image:g} tags and "
        f"{b.boxes_per_image:g} boxes per image",
        "",
        f"{'stage':<18} {'model':<22} {'params':>8} {'load s':>7} {'s/img':>8} {'peak RSS':>9} {'+RSS':>7}"
        + (f" {'naive s/img':>11} {'ratio':>6}" if n else ""),
    ]
    naive = {s.name: s for s in n.stages} if n else {}
    for s in b.stages:
        row = (f"{s.name:<18} {str(s.model or '-'):<22} {s.params_m:>7.1f}M {s.load_s:>7.1f} {s.median_s:>8.3f} "
               f"{s.peak_rss_mb:>7.0f}MB {s.extra_mb:>5.0f}MB")
        if n:
            ns = naive[s.name]
            ratio = f"{ns.median_s / s.median_s:.1f}x" if s.median_s > 0.0005 else "-"
            row += f" {ns.median_s:>11.3f} {ratio:>6}"
        lines.append(row)
    lines.append("")
    lines.append(f"batched: {b.total_s:.2f} s, {b.images_per_s:.3f} images/s")
    if n:
        lines.append(f"naive:   {n.total_s:.2f} s, {n.images_per_s:.3f} images/s")
        lines.append(f"ratio:   batched is {result.speedup:.2f}x faster than naive")
    lines.append(f"peak RSS of the process: {result.peak_rss_mb:.0f} MB; load average "
                 f"{result.loadavg['start'][0]:.2f} -> {result.loadavg['end'][0]:.2f}")
    return "\n".join(lines)


def format_markdown(result: BenchResult) -> str:
    """The per-stage figures as a Markdown table (for a README)."""
    b, n = result.batched, result.baseline
    head = "| stage | model | params | s/image (batch %d) | peak RSS |" % b.batch_size
    rule = "|---|---|---:|---:|---:|"
    if n:
        head += " s/image naive | ratio |"
        rule += "---:|---:|"
    rows = [head, rule]
    naive = {s.name: s for s in n.stages} if n else {}
    for s in b.stages:
        row = f"| {s.name} | {s.model or '-'} | {s.params_m:.1f} M | {s.median_s:.3f} | {s.peak_rss_mb / 1024:.2f} GB |"
        if n:
            ns = naive[s.name]
            ratio = f"{ns.median_s / s.median_s:.1f}x" if s.median_s > 0.0005 else "-"
            row += f" {ns.median_s:.3f} | {ratio} |"
        rows.append(row)
    total = f"| **pipeline** | | | {b.total_s / result.images:.3f} ({b.images_per_s:.3f} img/s) | {result.peak_rss_mb / 1024:.2f} GB |"
    if n:
        total += f" {n.total_s / result.images:.3f} ({n.images_per_s:.3f} img/s) | {result.speedup:.1f}x |"
    return "\n".join(rows + [total])


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app``."""

    @app.command("bench")
    def bench_cmd(
        pipeline: Annotated[Optional[str], typer.Option(help="a ready pipeline name or a YAML file")] = None,
        stage: Annotated[Optional[str], typer.Option(help="measure one stage alone (inputs are made up)")] = None,
        images: Annotated[int, typer.Option(help="synthetic images to time")] = 4,
        size: Annotated[str, typer.Option(help="image size WIDTHxHEIGHT")] = "640x480",
        batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 4,
        device: Annotated[str, typer.Option(help="auto (cuda, else mps, else cpu), cpu, cuda[:N] or mps")] = "auto",
        threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch's default)")] = 0,
        baseline: Annotated[bool, typer.Option(help="also run the naive way and print the ratio")] = False,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="write the figures to this JSON file")] = None,
        markdown: Annotated[bool, typer.Option(help="also print the figures as a Markdown table")] = False,
        weights: Annotated[str, typer.Option(help="random (released sizes), tiny, or released (real files)")] = "random",
        tags: Annotated[int, typer.Option(help="tags per image after a tagger (0 = whatever it gives)")] = 12,
        boxes: Annotated[int, typer.Option(help="boxes per image after a detector (0 = whatever it gives)")] = 10,
        warmup: Annotated[int, typer.Option(help="untimed images run first")] = 1,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="STAGE.PARAM=VALUE, e.g. sam.model=sam_vit_b")] = None,
        seed: Annotated[int, typer.Option(help="seed of the weights and the images")] = 0,
        verbose: Verbose = 0,
    ) -> None:
        """Measure per-stage latency, images/s and peak memory on synthetic images.

        Models are built at their released sizes with random weights (no download), so the
        figures are those of the real checkpoints. --baseline compares with the naive way.
        """
        from ..bench import WEIGHTS, run_bench
        from ..cli import EXIT_USAGE, _fail, _setup_logging

        _setup_logging(verbose)
        try:
            if weights not in WEIGHTS:
                raise ConfigError(f"--weights {weights!r} is unknown", hint=f"use one of {', '.join(WEIGHTS)}")
            if weights == "tiny":
                typer.secho("WARNING: tiny random models: figures say nothing about real speed", fg="red", err=True)
            result = run_bench(
                pipeline if pipeline or stage else "ram_grounded_sam", stage=stage, images=images,
                size=parse_size(size), batch_size=batch_size, device=device, threads=threads, baseline=baseline,
                weights=weights, tags=tags, boxes=boxes, warmup=warmup, overrides=parse_overrides(set_ or []),
                seed=seed,
            )
        except RamGroundedError as exc:
            raise _fail(exc) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        typer.echo(format_result(result))
        if markdown:
            typer.echo("\n" + format_markdown(result))
        if json_out is not None:
            try:
                json_out.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
            except OSError as exc:
                typer.secho(f"error: cannot write {json_out}: {exc}", fg="red", err=True)
                raise typer.Exit(EXIT_USAGE) from None
