"""The server under test in a ship: a local ``prodai serve`` process or a docker deployment beside production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prodai_cli.errors import ProdaiError, ShipFailed

if TYPE_CHECKING:
    from prodai_cli.config import Settings

LOG_TAIL_LINES = 20


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.strip().splitlines()[-lines:])


class Candidate(Protocol):
    """A server running the version under test."""

    url: str

    def start(self) -> None:
        """Start it and wait until ``/health/ready`` answers 200 (raise ShipFailed otherwise)."""

    def stop(self) -> None:
        """Stop it (idempotent)."""

    def logs(self) -> str:
        """Its recent log text."""


def wait_ready(url: str, timeout_s: float, alive: Callable[[], str | None]) -> float:
    """Wait for ``url/health/ready`` with the deploy poller; ``alive()`` returns a reason when the server died.

    Returns:
        Seconds waited.

    Raises:
        ShipFailed: The server died or did not become ready in time.

    """
    from prodai_cli.deploy.readiness import NotReady
    from prodai_cli.deploy.readiness import wait_ready as poll

    try:
        return poll(url, timeout_s, alive=alive)
    except NotReady as exc:
        raise ShipFailed(exc.message if exc.died else f"the candidate was not ready: {exc.message}") from None


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalCandidate:
    """``python -m prodai_cli serve --model NAME/VERSION`` on a free loopback port, with the project's config.

    Args:
        settings: The project's settings (the child runs in its root, on its config file).
        model_ref: ``NAME/VERSION``.
        log_path: Where the child's stderr (its JSON log) goes.
        env: Extra environment (config overrides) for the child.

    """

    def __init__(self, settings: Settings, model_ref: str, log_path: Path, env: dict[str, str]) -> None:
        self.settings = settings
        self.model_ref = model_ref
        self.log_path = log_path
        self.env = env
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server process and wait for readiness."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "prodai_cli"]
        if self.settings.path is not None:
            command += ["--config", str(self.settings.path)]
        command += ["serve", "--model", self.model_ref, "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C on ship reaches ship, which then stops the child itself.
            self.proc = subprocess.Popen(
                command,
                cwd=self.settings.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        wait_ready(self.url, self.settings.config.deploy.readiness_timeout_s, self._dead)

    def _dead(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"the candidate server exited with status {self.proc.returncode}:\n{tail(self.logs())}"
        return None

    def stop(self) -> None:
        """SIGINT (no drain delay: the candidate has no traffic to drain), then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=self.settings.config.serving.grace_period_s + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def logs(self) -> str:
        """The child's log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


class DockerCandidate:
    """The version deployed by :func:`prodai_cli.deploy.lifecycle.deploy` as its own container, on a free port.

    Args:
        settings: Settings whose config file the container mounts (see :func:`loadtest_settings`).
        project: The project's settings (deployment records live there).
        model_ref: ``NAME/VERSION``.
        name: Deployment (container) name.
        on_progress: Deploy's progress lines.

    """

    def __init__(
        self, settings: Settings, project: Settings, model_ref: str, name: str, on_progress: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.project = project
        self.model_ref = model_ref
        self.name = name
        self.on_progress = on_progress
        self.url = ""
        self.started = False

    def start(self) -> None:
        """Build and run the container; deploy waits for readiness (and removes it on failure)."""
        from prodai_cli.deploy.lifecycle import deploy

        try:
            result = deploy(
                self.settings,
                target="docker",
                model_ref=self.model_ref,
                name=self.name,
                port=free_port(),
                progress=self.on_progress,
            )
        except ProdaiError as exc:
            raise ShipFailed(f"deploying the candidate failed: {exc.message}", hint=exc.hint) from None
        self.started = True
        self.url = result.record.url

    def stop(self) -> None:
        """Stop and remove the container."""
        if not self.started:
            return
        from prodai_cli.deploy.lifecycle import stop

        self.started = False
        stop(self.project, self.name)

    def logs(self) -> str:
        """The container's recent log lines."""
        from prodai_cli.deploy.lifecycle import logs

        try:
            return logs(self.project, self.name, lines=1000)
        except ProdaiError:
            return ""


def loadtest_settings(settings: Settings, directory: Path) -> Settings:
    """A copy of the project's config with rate limits off, in ``directory``, for a docker candidate to mount.

    Key records are inlined (a keys file would not be beside the copy); the copy and its directory are made
    readable by the container's non-root user.
    """
    import yaml

    from prodai_cli.config import Settings as SettingsClass
    from prodai_cli.config import write_atomic
    from prodai_cli.keys import load_key_snapshot

    data = settings.config.model_dump(mode="json")
    data["rate_limit"]["enabled"] = False
    data["auth"]["keys"] = [r.model_dump(mode="json") for r in load_key_snapshot(settings).records]
    data["auth"]["keys_file"] = None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prodai.yaml"
    write_atomic(
        path,
        "# prodai ship: the project's config with rate limits off, for the load test\n"
        + yaml.safe_dump(data, sort_keys=False),
    )
    directory.chmod(0o755)
    path.chmod(0o644)
    config = settings.config.model_validate(data)
    return SettingsClass(config=config, path=path, root=settings.root)


# --------------------------------------------------------------------------------------------- the gate
