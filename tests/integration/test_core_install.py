"""The core install in a clean virtualenv: mlflow-skinny, no full mlflow, and torch only when asked for.

One venv, grown the way a user would (``pip install PROJECT`` with ``constraints/ci.txt``, then
``PROJECT[onnx]``, then ``PROJECT[torch]``), runs on the embedded SQLite registry: the core alone keeps the
registry and refuses ``register`` with the command that fixes it; with the onnx extra and still no torch it
batch-predicts and serves an ONNX version; with torch it runs the README's tour (``init``, ``register``,
``models list|resolve``, ``batch``, ``serve``) and registers on a remote ``mlflow server``. Full mlflow's
server-side distributions (flask, pyarrow, scikit-learn, ...) must never appear. The tests run in file order
(each extra is added once, by a module fixture). This interpreter's versions are passed as constraints, so the
venv gets the versions the rest of the suite tested, and pip's cache makes a second run fast.
bench/install_size.py prints the sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port

from prodai_cli.config import load_settings
from prodai_cli.runtime import load_runtime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Distributions that only full mlflow brings (its server, UI and flavours' dependencies): none may be here.
FULL_MLFLOW_ONLY = ("mlflow", "flask", "gunicorn", "graphene", "pyarrow", "scipy", "scikit-learn", "matplotlib")
TEXTS = ["good movie", "the movie was very bad", "hello world " * 30]

PROBE = """
import importlib.metadata as m, importlib.util as u, json, sys
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
names = json.loads(sys.argv[1])
print(json.dumps({"versions": {n: version(n) for n in names}, "torch": u.find_spec("torch") is not None}))
"""


def interpreter_pins(path: Path) -> Path:
    """This interpreter's distributions as constraints (torch's local +cpu version is ci.txt's to pin)."""
    from importlib import metadata

    pins = set()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if name and name.lower() != "prodai" and "+" not in dist.version:
            pins.add(f"{name}=={dist.version}")
    path.write_text("\n".join(sorted(pins, key=str.lower)) + "\n", encoding="utf-8")
    return path


def venv_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into this tree, offline hub, no PRODAI_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODAI_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    return env


class Venv:
    """A virtualenv of its own, outside this one; commands run as a user's shell would run them."""

    def __init__(self, root: Path, pins: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.constraints = [REPO_ROOT / "constraints" / "ci.txt", pins]

    def pip_install(self, requirement: str) -> None:
        command = [str(self.bin / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for constraint in self.constraints:
            command += ["-c", str(constraint)]
        result = subprocess.run(
            [*command, requirement], env=venv_env(), capture_output=True, text=True, timeout=1200, check=False
        )
        assert result.returncode == 0, result.stderr[-4000:]

    def probe(self, *names: str) -> dict[str, object]:
        result = subprocess.run(
            [str(self.bin / "python"), "-c", PROBE, json.dumps(names)],
            env=venv_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        data = json.loads(result.stdout)
        assert isinstance(data, dict)
        return data

    def prodai(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "prodai"), *args], cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=600
        )


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A clean venv with prodai's core install only (no extras): mlflow-skinny, no torch, no full mlflow.

    The tests below run in file order: the torch-free checks first, then the tour adds the torch extra.
    """
    root = tmp_path_factory.mktemp("core-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    venv = Venv(root, interpreter_pins(root.parent / "pins.txt"))
    try:
        venv.pip_install(str(REPO_ROOT))
        yield venv
    finally:
        shutil.rmtree(root, ignore_errors=True)  # over a GB with torch: not left in pytest's kept temp dirs


@pytest.fixture(scope="module")
def onnx_venv(core_venv: Venv) -> Venv:
    """The same venv with the onnx extra added (``pip install 'prodai[onnx]'``): still no torch."""
    core_venv.pip_install(f"{REPO_ROOT}[onnx]")
    return core_venv


@pytest.fixture(scope="module")
def torch_venv(onnx_venv: Venv) -> Venv:
    """The same venv with the torch extra added too (``pip install 'prodai[torch]'``)."""
    onnx_venv.pip_install(f"{REPO_ROOT}[torch]")
    return onnx_venv


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` (full mlflow, from this test environment's dev extra) on loopback."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*command, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", proc, tmp_path / "mlflow-server.log")
        yield url
    finally:
        stop(proc)
        log.close()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"{url} not ready in {timeout} s: {log.read_text(errors='replace')[-3000:]}"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_and_predict(venv: Venv, project: Path, ref: str, expected: list[dict[str, Any]], version: str) -> None:
    """`prodai serve --model REF` from the venv: 401 without a key; with one, each text answers as expected."""
    created = venv.prodai(project, "keys", "create", "--name", f"tour-{time.monotonic_ns()}", "--json")
    assert created.returncode == 0, created.stderr[-2000:]
    key = json.loads(created.stdout)["key"]
    port = free_port()
    log_path = project / f"serve-{port}.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [str(venv.bin / "prodai"), "serve", "--model", ref, "--host", "127.0.0.1", "--port", str(port)],
            cwd=project,
            env=venv_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health/ready", server, log_path)
        assert httpx.post(f"{url}/predict", json={"text": TEXTS[0]}, timeout=30).status_code == 401
        for text, want in zip(TEXTS, expected, strict=True):
            response = httpx.post(f"{url}/predict", json={"text": text}, headers={"X-API-Key": key}, timeout=30)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert (answer["label"], answer["model_version"]) == (want["label"], version)
            assert answer["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
    finally:
        stop(server)


def batch_and_check(venv: Venv, project: Path, ref: str, expected: list[dict[str, Any]], version: str) -> None:
    """`prodai batch` from the venv over TEXTS: every line predicted as expected."""
    source = project / f"in-{ref.replace('/', '-').replace('@', '-')}.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    result = venv.prodai(project, "batch", str(source), "--model", ref, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["items"] == len(TEXTS)
    output = source.with_name(source.stem + ".predictions.jsonl")
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [(r["label"], r["model_version"]) for r in rows] == [(e["label"], version) for e in expected]
    assert [r["confidence"] for r in rows] == pytest.approx([e["confidence"] for e in expected], abs=1e-5)


def in_project(root: Path, ref: str) -> list[dict[str, Any]]:
    """What ``ref`` predicts for TEXTS in this process (with torch present), from the project at ``root``."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return load_runtime(ref, load_settings(), device="cpu").predict(TEXTS)
    finally:
        os.chdir(cwd)


def test_the_core_install_has_mlflow_skinny_and_neither_full_mlflow_nor_torch(core_venv: Venv) -> None:
    found = core_venv.probe("mlflow-skinny", "sqlalchemy", "alembic", "pandas", *FULL_MLFLOW_ONLY)
    versions = found["versions"]
    assert isinstance(versions, dict)
    assert all(versions[name] for name in ("mlflow-skinny", "sqlalchemy", "alembic", "pandas")), versions
    assert {name: versions[name] for name in FULL_MLFLOW_ONLY} == dict.fromkeys(FULL_MLFLOW_ONLY)
    assert found["torch"] is False


def test_without_torch_register_names_the_extra_to_install_and_stores_nothing(
    core_venv: Venv, tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    result = core_venv.prodai(tmp_path, "register", str(tiny_classifier_dir), "--name", "clf")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs torch, which is not installed" in result.stderr
    assert "pip install 'prodai[torch]'" in result.stderr
    assert "Traceback" not in result.stderr
    # The registry itself works without torch (mlflow-skinny on SQLite), and holds nothing.
    listed = core_venv.prodai(tmp_path, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert json.loads(listed.stdout) == []


def test_without_torch_the_onnx_extra_batches_and_serves_an_onnx_version(
    onnx_venv: Venv, onnx_project: Path, tmp_path: Path
) -> None:
    assert onnx_venv.probe("onnxruntime")["torch"] is False
    project = tmp_path / "proj"
    shutil.copytree(onnx_project, project)
    expected = in_project(project, "clf/2")
    batch_and_check(onnx_venv, project, "clf/2", expected, "2")
    serve_and_predict(onnx_venv, project, "clf/2", expected, "2")


def test_the_core_install_with_torch_runs_init_register_models_batch_and_serve(
    torch_venv: Venv, tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    venv = torch_venv
    found = venv.probe(*FULL_MLFLOW_ONLY)
    assert found["torch"] is True
    assert found["versions"] == dict.fromkeys(FULL_MLFLOW_ONLY), "the extras must not bring full mlflow"
    project = tmp_path / "proj"
    project.mkdir()

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        result = venv.prodai(project, *args)
        assert result.returncode == 0, f"prodai {' '.join(args)}: {result.stderr[-3000:]}"
        return result

    ok("init")
    assert (project / "prodai.yaml").is_file()
    registered = json.loads(
        ok("register", str(tiny_classifier_dir), "--name", "clf", "--alias", "production", "--json").stdout
    )
    assert (registered["name"], registered["version"], registered["aliases"]) == ("clf", 1, ["production"])
    assert (project / ".prodai" / "mlflow.db").is_file()
    listed = json.loads(ok("models", "list", "--json").stdout)
    assert [(m["name"], m["latest_version"], m["aliases"]) for m in listed] == [("clf", 1, {"production": 1})]
    resolved = json.loads(ok("models", "resolve", "clf@production", "--json").stdout)
    assert resolved["version"] == 1 and Path(resolved["path"]).is_dir()

    expected = load_runtime(tiny_classifier_dir, device="cpu").predict(TEXTS)
    batch_and_check(venv, project, "clf@production", expected, "1")
    serve_and_predict(venv, project, "clf@production", expected, "1")


def test_the_core_install_registers_and_resolves_on_a_remote_mlflow_server(
    torch_venv: Venv, tmp_path: Path, tiny_classifier_dir: Path, mlflow_server: str
) -> None:
    project = tmp_path / "remote"
    project.mkdir()
    (project / "prodai.yaml").write_text(f"registry:\n  tracking_uri: {mlflow_server}\n", encoding="utf-8")
    registered = torch_venv.prodai(project, "register", str(tiny_classifier_dir), "--name", "remote", "--json")
    assert registered.returncode == 0, registered.stderr[-3000:]
    assert json.loads(registered.stdout)["version"] == 1
    assert not (project / ".prodai" / "mlflow.db").exists()  # nothing went to an embedded store
    resolved = torch_venv.prodai(project, "models", "resolve", "remote/1", "--json")
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    assert (Path(json.loads(resolved.stdout)["path"]) / "model" / "config.json").is_file()
