"""Device selection: "auto" means cuda, else mps, else cpu; nothing hard-codes cuda."""

from __future__ import annotations

from functools import lru_cache

from .errors import ConfigError


@lru_cache(maxsize=None)
def resolve_device(device: str = "auto"):
    """torch.device for "auto" | "cpu" | "cuda[:N]" | "mps"; ConfigError if it is absent."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU", hint="use --device cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available", hint="use --device cpu or auto")
    return dev
