"""Deploy's closing hint is a request that works as printed (issue 15, item 2): with auth on, the default,
it creates a key and sends it; run here, word for word, against a real `prodai serve` on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from helpers import free_port

from prodai_cli.config import load_settings
from prodai_cli.deploy.targets.docker import predict_hint


def test_hint_creates_and_sends_a_key_the_running_server_accepts(registered_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    shutil.copytree(registered_project, project, symlinks=True)
    config = project / "prodai.yaml"
    config.write_text("serving:\n  max_wait_ms: 0\nrate_limit:\n  enabled: false\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `prodai` as a user has it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prodai_cli", "serve", "--port", str(port), "--model", "clf@production"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.1)
        lines = predict_hint(load_settings(config), url)
        assert any("keys create" in line for line in lines)
        # The bare request the old hint printed is refused: the key is what makes it work.
        assert httpx.post(f"{url}/predict", json={"text": "hello"}, timeout=10).status_code == 401
        key_line, *request_lines = lines
        script = f"{key_line}\nprintf '%s' \"$KEY\" > key.txt"
        made = subprocess.run(
            ["bash", "-ec", script], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )
        assert made.returncode == 0, made.stderr
        env["KEY"] = (project / "key.txt").read_text()
        deadline = time.monotonic() + 30
        while True:  # keys reload on their own, within the server's reload interval
            done = subprocess.run(
                ["bash", "-ec", "\n".join(request_lines)],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            if '"label"' in done.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert '"label"' in done.stdout, done.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
