"""Starting a local Ray that stays on loopback and contacts nothing outside the machine.

Without these settings (measured with Ray 2.60) Ray binds to the machine's external
interface and a background process probes cloud metadata addresses (169.254.169.254,
metadata.google.internal). The proxy variables point at a closed local port, so any such
probe is refused at once; they are set only while the Ray processes start (which inherit
them), then the driver's own values are put back and given to the worker processes, so
image URLs are still fetched the way the user configured.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

#: Ray settings kept for the whole process: no usage stats, no auth, every process on 127.0.0.1.
RAY_LOOPBACK_VARS: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
#: Set only while the local Ray starts: metadata probes go to a closed port and fail at once.
PROXY_VARS: dict[str, str] = {
    "http_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "no_proxy": "localhost,127.0.0.1,::1",
    "NO_PROXY": "localhost,127.0.0.1,::1",
}


def prepare_loopback() -> None:
    """Set :data:`RAY_LOOPBACK_VARS`; call it before the first ``import ray``.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported: set later, it
    has no effect and the local Ray listens on the machine's external address.
    """
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        logger.warning("ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; the local Ray "
                       "may listen on every interface (set it in the environment to keep it on 127.0.0.1)")
    os.environ.update(RAY_LOOPBACK_VARS)


def loopback_environment() -> dict[str, str]:
    """Every variable of the loopback environment (what tests set for a whole session)."""
    return {**RAY_LOOPBACK_VARS, **PROXY_VARS}


@contextmanager
def proxies_blocked() -> Iterator[dict[str, str]]:
    """Set :data:`PROXY_VARS` for the duration; yields the driver's previous values ("" = unset)."""
    saved = {name: os.environ.get(name) for name in PROXY_VARS}
    os.environ.update(PROXY_VARS)
    try:
        yield {name: value or "" for name, value in saved.items()}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_local_ray(num_cpus: int | None = None, **init_kwargs: Any) -> None:
    """``ray.init`` a private single-node Ray on 127.0.0.1 with no dashboard and no probes.

    The workers get the driver's own proxy settings back (an empty value means "no proxy"
    to urllib), so only Ray's own processes run with the blocking proxy.
    """
    prepare_loopback()
    import ray

    with proxies_blocked() as driver_proxies:
        kwargs: dict[str, Any] = {
            "num_cpus": num_cpus,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
            "runtime_env": {"env_vars": driver_proxies},
        }
        kwargs.update(init_kwargs)
        logger.info("starting a local Ray (num_cpus=%s) on 127.0.0.1", num_cpus)
        ray.init(address="local", **kwargs)  # "local": never join a cluster found in the environment
