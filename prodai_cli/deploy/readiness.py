"""The one readiness poller: wait until servers answer ``/health/ready`` with 200.

Deploy (docker replicas, compose stacks, the balancer) and ship (a local candidate process) all wait the
same way; what differs is how they learn that a server died while starting, which they pass as ``alive``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prodai_cli.errors import DeployError

READY_PATH = "/health/ready"


class NotReady(DeployError):
    """A server did not become ready in time, or died while starting (``died`` says which)."""

    def __init__(self, message: str, *, died: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.died = died


def wait_ready(
    urls: str | Sequence[str],
    timeout_s: float,
    *,
    alive: Callable[[], str | None] | None = None,
    interval_s: float = 0.25,
) -> float:
    """Poll every ``URL/health/ready`` until each has answered 200 once.

    Args:
        urls: One base URL or several (each must become ready).
        timeout_s: Give up after this many seconds.
        alive: Called before each round; a returned reason means the server died (stop waiting at once).
        interval_s: Pause between rounds.

    Returns:
        Seconds waited.

    Raises:
        NotReady: One was not ready in time (the message names it and what it last answered), or
            ``alive`` reported a death (``died`` is True; the message is its reason).

    """
    import httpx

    start = time.monotonic()
    pending = [urls] if isinstance(urls, str) else list(urls)
    last: dict[str, str] = {}
    with httpx.Client(timeout=2.0) as http:
        while pending:
            dead = alive() if alive is not None else None
            if dead:
                raise NotReady(dead, died=True)
            for url in list(pending):
                try:
                    response = http.get(f"{url}{READY_PATH}")
                except httpx.HTTPError as exc:
                    last[url] = type(exc).__name__
                    continue
                if response.status_code == 200:
                    pending.remove(url)
                else:
                    last[url] = f"HTTP {response.status_code}: {response.text[:200]}"
            if not pending:
                break
            if time.monotonic() - start > timeout_s:
                states = ", ".join(f"{u}{READY_PATH} (last: {last.get(u, 'no answer')})" for u in pending)
                raise NotReady(f"Not ready after {timeout_s:g}s: {states}")
            time.sleep(interval_s)
    return time.monotonic() - start
