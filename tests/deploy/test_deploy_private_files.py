"""The documented first hour, `init -> register -> keys create -> deploy`, with no chmod (issue 15, item 1).

`prodai init` and `prodai keys create` write 0600 files. The deployed container (uid 10001, never root) must
still read them, live, while nobody else on the host can: as root prodai gives them the container's group
(0640), as a normal user the container runs as that user. Each test ends with a container that answers
/health/ready and accepts a key created before the deploy and one created after it (the keys file is read
live). The non-root test runs prodai through `setpriv` as a throwaway user in the docker group.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import CliResult, free_port, run_cli

from prodai_cli.deploy.plan import CONTAINER_UID

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

TEST_USER = f"prodai-t{os.getpid()}"
BUILD_ENV = {
    "PRODAI_DEPLOY__HOST": "127.0.0.1",
    "PRODAI_DEPLOY__BASE_IMAGE": "prodai-base:bookworm",
    "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "180",
}


def _require_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def _predict(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"text": "hello"}, headers={"X-API-Key": key}, timeout=30)


def _accepted_within(url: str, key: str, timeout_s: float = 30.0) -> httpx.Response:
    """The first 200 for ``key`` (a key created after the deploy shows up at the next keys reload)."""
    deadline = time.monotonic() + timeout_s
    response = _predict(url, key)
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
        response = _predict(url, key)
    return response


def _private(path: Path) -> bool:
    return not path.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH)


def _first_hour(run: Any, model_dir: Path, port: int, name: str) -> tuple[str, str]:
    """init -> register -> keys create -> deploy, exactly as documented; returns (url, key)."""
    for args in (
        ("init",),
        ("register", str(model_dir), "--name", "clf", "--alias", "production"),
    ):
        result = run(*args)
        assert result.exit_code == 0, result.stderr[-3000:]
    created = run("keys", "create", "--name", "first", "--json")
    assert created.exit_code == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    deployed = run(
        "deploy", "--model", "clf@production", "--port", str(port), "--name", name, "--tag", f"{name}:1", "--json"
    )
    assert deployed.exit_code == 0, deployed.stderr[-4000:]
    url = f"http://127.0.0.1:{port}"
    assert deployed.json()["url"] == url
    return url, key


def _serves_both_keys(run: Any, url: str, key: str) -> None:
    assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
    assert _predict(url, "not-a-key").status_code == 401  # auth is on: the 200s below are the keys' doing
    first = _predict(url, key)
    assert first.status_code == 200, first.text
    # A key created after the deploy: the server re-reads the (replaced, still private) file live.
    created = run("keys", "create", "--name", "after-deploy", "--json")
    assert created.exit_code == 0, created.stderr
    later = _accepted_within(url, json.loads(created.stdout)["key"])
    assert later.status_code == 200, later.text


def _server(docker_client: Any, name: str) -> Any:
    """The deployment's server replica (the docker target runs replicas behind a balancer, NAME-lb)."""
    (server,) = docker_client.containers.list(filters={"label": [f"prodai.deployment={name}", "prodai.role=server"]})
    return server


def _remove(docker_client: Any, name: str) -> None:
    from docker.errors import APIError, ImageNotFound

    from prodai_cli.deploy import containers as engine

    for container in docker_client.containers.list(all=True, filters={"label": f"prodai.deployment={name}"}):
        engine.remove_container(docker_client, container.id, timeout_s=5)
    engine.remove_network(docker_client, f"{name}-net")
    with contextlib.suppress(ImageNotFound, APIError):
        docker_client.images.remove(f"{name}:1", force=True, noprune=False)  # no dangling image left


def test_init_register_deploy_as_root_with_no_chmod(
    docker_client: Any, tiny_classifier_dir: Path, wheel_cache: Path, tmp_path: Path
) -> None:
    _require_root("the root case is what it tests")
    project = tmp_path / "proj"
    project.mkdir(mode=0o700)
    env = {**BUILD_ENV, "PRODAI_CACHE_DIR": str(wheel_cache)}
    port = free_port()
    name = f"prodai-private-root-{port}"

    def run(*args: str) -> CliResult:
        return run_cli(*args, cwd=project, env=env, timeout=1500)

    try:
        url, key = _first_hour(run, tiny_classifier_dir, port, name)
        config = project / "prodai.yaml"
        # Readable by the container's group, by no one else; the directory only enterable by that group.
        assert (config.stat().st_uid, config.stat().st_gid) == (0, CONTAINER_UID)
        assert stat.S_IMODE(config.stat().st_mode) == 0o640
        assert _private(config) and _private(project)
        _serves_both_keys(run, url, key)
        # `keys create` replaced the file: it kept its group and mode.
        assert (config.stat().st_gid, stat.S_IMODE(config.stat().st_mode)) == (CONTAINER_UID, 0o640)
        container = _server(docker_client, name)
        assert container.attrs["Config"]["User"] in ("", "10001:10001")  # the image's user, not root
        # The same image serves under the k8s pod's restrictions: read-only root, only /tmp writable, no
        # capabilities, no privilege escalation (what templates/k8s/deployment.yaml.j2 asks of it).
        restricted_port = free_port()
        restricted = docker_client.containers.run(
            f"{name}:1",
            name=f"{name}-restricted",
            detach=True,
            read_only=True,
            tmpfs={"/tmp": "rw,mode=1777,size=512m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=f"{CONTAINER_UID}:{CONTAINER_UID}",
            environment={"PRODAI_AUTH__ENABLED": "false"},
            ports={"8080/tcp": ("127.0.0.1", restricted_port)},
        )
        try:
            restricted_url = f"http://127.0.0.1:{restricted_port}"
            deadline = time.monotonic() + 120
            ready = 0
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(f"{restricted_url}/health/ready", timeout=5).status_code
                    if ready == 200:
                        break
                restricted.reload()
                assert restricted.status == "running", restricted.logs(tail=30).decode(errors="replace")
                time.sleep(1)
            assert ready == 200, restricted.logs(tail=30).decode(errors="replace")
            answer = httpx.post(f"{restricted_url}/predict", json={"text": "hello"}, timeout=30)
            assert answer.status_code == 200, answer.text
        finally:
            restricted.remove(force=True)
    finally:
        _remove(docker_client, name)


@contextlib.contextmanager
def _docker_user(home: Path) -> Iterator[pwd.struct_passwd]:
    """A throwaway user in the docker group (it may use the socket), removed afterwards."""
    docker_group = grp.getgrnam("docker")
    command = ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin"]
    subprocess.run(
        [*command, "-G", "docker", "--user-group", TEST_USER],
        check=True,
        capture_output=True,
    )
    try:
        account = pwd.getpwnam(TEST_USER)
        assert account.pw_name in grp.getgrgid(docker_group.gr_gid).gr_mem
        yield account
    finally:
        subprocess.run(["userdel", TEST_USER], check=False, capture_output=True)


def _share_wheel_cache(source: Path, target: Path, account: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's wheelhouse, hard-linked into a cache the user owns: the user's build downloads nothing."""
    from prodai_cli.deploy.wheelhouse import build_wheelhouse

    with monkeypatch.context() as patch:
        patch.setenv("PRODAI_CACHE_DIR", str(source))
        build_wheelhouse("cpu")  # free when an earlier deploy of the session made it
    for directory, _dirs, files in os.walk(source):
        destination = target / Path(directory).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        os.chown(destination, account.pw_uid, account.pw_gid)
        for file in files:
            with contextlib.suppress(FileExistsError):
                os.link(Path(directory) / file, destination / file)  # root's 0644 wheels, readable


def test_init_register_deploy_as_a_normal_user_with_no_chmod(
    docker_client: Any, tiny_classifier_dir: Path, wheel_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_root("it creates the throwaway user it runs prodai as")
    if shutil.which("setpriv") is None or shutil.which("useradd") is None:
        pytest.fail("setpriv and useradd are missing (util-linux, passwd)")
    home = Path(tempfile.mkdtemp(prefix="prodai-user-", dir="/tmp"))
    port = free_port()
    name = f"prodai-private-user-{port}"
    try:
        with _docker_user(home) as account:
            os.chown(home, account.pw_uid, account.pw_gid)
            home.chmod(0o700)
            model_dir = home / "model"
            shutil.copytree(tiny_classifier_dir, model_dir)
            project = home / "proj"
            project.mkdir(mode=0o700)
            for path in (model_dir, *model_dir.rglob("*"), project):
                os.chown(path, account.pw_uid, account.pw_gid)
            _share_wheel_cache(wheel_cache, home / "cache", account, monkeypatch)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")},
                **BUILD_ENV,
                "HOME": str(home),
                "USER": TEST_USER,
                "PRODAI_CACHE_DIR": str(home / "cache"),
            }

            def run(*args: str) -> CliResult:
                command = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]
                proc = subprocess.run(
                    [*command, sys.executable, "-m", "prodai_cli", *args],
                    cwd=project,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1500,
                )
                return CliResult(proc.returncode, proc.stdout, proc.stderr)

            try:
                url, key = _first_hour(run, model_dir, port, name)
                config = project / "prodai.yaml"
                assert config.stat().st_uid == account.pw_uid
                assert stat.S_IMODE(config.stat().st_mode) == 0o600 and _private(project)
                _serves_both_keys(run, url, key)
                assert stat.S_IMODE(config.stat().st_mode) == 0o600
                user = _server(docker_client, name).attrs["Config"]["User"]
                assert user == f"{account.pw_uid}:{account.pw_gid}"  # the owner, never root
            finally:
                _remove(docker_client, name)
    finally:
        shutil.rmtree(home, ignore_errors=True)
