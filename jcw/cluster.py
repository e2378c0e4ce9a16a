"""Joining a Ray cluster, or starting a local one sized to this machine: what scoring pools and Ray Train share."""
from __future__ import annotations

import os
import socket

from jcw.errors import JcwError


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast on an address that does not answer; ray.init itself retries for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError):
        raise JcwError(f"Ray address {address} does not answer (no connection within {timeout:g}s); start the "
                       "cluster with `ray start --head`, fix --ray-address, or drop it to run locally") from None


def start_ray(address: str | None, log_to_driver: bool = False) -> bool:
    """Join the cluster at `address`, or start a local Ray instance sized to this machine, unless this process is
    already connected; True if this call started the connection (its caller shuts it down). Failures are one line."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            check_ray_address(address)
            ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver)
        else:
            # Ray runs workers at niceness 15; on a busy laptop the workers, which are the whole job, would then
            # crawl behind any other process. A local instance is ours: run them at ours.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=log_to_driver)
    except JcwError:
        raise
    except Exception as exc:
        where = f"at {address}" if address else "locally"
        # `ray start --head` turns on token authentication where ~/.ray/auth_token exists (the first local
        # `ray.init()` writes one), but Ray sends the token to an explicit address only under RAY_AUTH_MODE=token,
        # and the refusal reads as a plain connection failure
        token = "" if not address or os.environ.get("RAY_AUTH_MODE") else \
            " (a cluster from `ray start --head` needs RAY_AUTH_MODE=token set before jcw starts)"
        raise JcwError(f"cannot start or reach Ray {where} ({exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0][:160]}){token}; check --ray-address or use --workers 0") from None
    return True
