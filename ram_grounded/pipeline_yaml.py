"""Pipelines as YAML: parsing with one-line errors, writing, and the ready-made pipelines.

Format::

    name: ram_tags
    description: RAM++ tags with Chinese names
    inputs: []              # Record fields the caller supplies besides image/source
    stages:
      - stage: ram          # a registered stage name
        params: {model: ram_plus, threshold: null}

Every error names the file, the stage and the allowed names, on one line.
"""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .errors import ConfigError
from .registry import get_stage

if TYPE_CHECKING:
    from .pipeline import Pipeline

_TOP_KEYS = {"name", "description", "inputs", "stages", "max_pixels"}
_STAGE_KEYS = {"stage", "params"}


def build_stage(name: str, params: dict[str, Any] | None = None, *, where: str = "", **overrides: Any):
    """Instantiate stage ``name`` with validated ``params`` (ConfigError on any mistake)."""
    prefix = f"{where}: " if where else ""
    cls = _get_stage(name, prefix)
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else {}
    hints = typing.get_type_hints(cls) if fields else {}
    for key in overrides:  # e.g. device: only where the stage has it
        if key in fields and key not in params:
            params[key] = overrides[key]
    checked = {}
    for key, value in params.items():
        if fields and key not in fields:
            raise ConfigError(
                f"{prefix}stage {name!r}: unknown parameter {key!r}",
                hint=f"allowed parameters: {', '.join(fields) or 'none'}",
            )
        if key in hints:
            try:
                value = TypeAdapter(hints[key]).validate_python(value, strict=True)
            except ValidationError as exc:
                expected = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
                raise ConfigError(
                    f"{prefix}stage {name!r}: parameter {key!r} must be {expected}, got {value!r}",
                    hint=exc.errors()[0]["msg"],
                ) from None
        checked[key] = value
    try:
        return cls(**checked)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}stage {name!r}: {exc}", hint="check the stage's parameters") from None


def _get_stage(name: Any, prefix: str):
    if not isinstance(name, str):
        raise ConfigError(f"{prefix}stage name must be a string, got {name!r}", hint="write `- stage: NAME`")
    try:
        return get_stage(name)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc.message}", hint=exc.hint) from None


def load_yaml(path_or_text: str | Path, **overrides: Any) -> Pipeline:
    """Build a Pipeline from a YAML file or text; ``overrides`` (e.g. device) go to stages."""
    from .pipeline import Pipeline

    where, text = _read(path_or_text)
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})", hint="fix the syntax") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        raise ConfigError(f"{where}: expected a mapping with a 'stages' list", hint="see pipelines/*.yaml")
    extra = set(spec) - _TOP_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}", hint=f"allowed: {', '.join(sorted(_TOP_KEYS))}")
    stages = []
    for i, item in enumerate(spec["stages"]):
        if not isinstance(item, dict) or "stage" not in item or set(item) - _STAGE_KEYS:
            raise ConfigError(f"{where}: stages[{i}] must be {{stage: NAME, params: {{...}}}}, got {item!r}",
                              hint="each entry has the keys 'stage' and optionally 'params'")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: stage {item['stage']!r}: params must be a mapping", hint="params: {key: value}")
        stages.append(build_stage(item["stage"], params, where=where, **overrides))
    try:
        return Pipeline(stages, inputs=spec.get("inputs") or (), name=spec.get("name") or Path(where).stem,
                        description=spec.get("description", ""), max_pixels=spec.get("max_pixels"))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def dump_yaml(pipe: Pipeline, path: str | Path | None = None) -> str:
    """YAML text for ``pipe``; written to ``path`` when given."""
    text = yaml.safe_dump(pipe.to_dict(), sort_keys=False, allow_unicode=True)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def _read(path_or_text: str | Path) -> tuple[str, str]:
    if isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and str(path_or_text).endswith((".yaml", ".yml"))):
        path = Path(path_or_text)
        if not path.is_file():
            raise ConfigError(f"pipeline file {str(path)!r} not found", hint="give a path or a name from `ram-grounded pipelines`")
        return str(path), path.read_text(encoding="utf-8")
    return "<yaml text>", str(path_or_text)


# --------------------------------------------------------------- ready pipelines
def pipelines_dir() -> Path:
    """Folder of the ready-made pipelines.

    They live in ``ram_grounded/pipelines/`` (package data); the repository's top-level
    ``pipelines/`` is a symlink to it.
    """
    return Path(str(resources.files("ram_grounded"))) / "pipelines"


def list_pipelines() -> dict[str, Path]:
    """Ready pipeline name -> YAML path."""
    folder = pipelines_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def load_pipeline(name_or_path: str | Path, **overrides: Any) -> Pipeline:
    """A ready pipeline by name (``ram_grounded_sam``) or any YAML file by path."""
    ready = list_pipelines()
    if str(name_or_path) in ready:
        return load_yaml(ready[str(name_or_path)], **overrides)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_yaml(path, **overrides)
    raise ConfigError(f"unknown pipeline {str(name_or_path)!r}",
                      hint=f"ready pipelines: {', '.join(ready) or 'none'}; or give a YAML file path")
