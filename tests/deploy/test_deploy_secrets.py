"""Secret files and the container's access to them, without a Docker engine (deploy/secrets.py, write_atomic).

The end-to-end proof (a deployed container reading them) is tests/deploy/test_deploy_private_files.py.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from prodai_cli.config import edit_config, load_settings, write_atomic
from prodai_cli.deploy import secrets
from prodai_cli.deploy.plan import CONTAINER_UID
from prodai_cli.deploy.targets import docker


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_project(tmp_path: Path, config: str = "serving:\n  port: 9000\n") -> Path:
    project = tmp_path / "proj"
    project.mkdir(mode=0o700)
    write_atomic(project / "prodai.yaml", config)  # as `prodai init` writes it: 0600
    return project


def test_write_atomic_keeps_mode_owner_and_group_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "prodai.yaml"
    write_atomic(path, "a: 1\n")
    assert _mode(path) == 0o600  # a new file is private
    group = CONTAINER_UID if os.geteuid() == 0 else os.getgid()
    os.chown(path, -1, group)
    path.chmod(0o640)
    inode = path.stat().st_ino
    write_atomic(path, "a: 2\n")
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert (_mode(path), path.stat().st_gid, path.stat().st_uid) == (0o640, group, os.geteuid())
    assert path.read_text() == "a: 2\n"


def test_a_users_private_config_runs_the_container_as_its_owner(tmp_path: Path) -> None:
    project = _private_project(tmp_path)
    if os.geteuid() == 0:
        os.chown(project, 4242, 4343)
        os.chown(project / "prodai.yaml", 4242, 4343)
    settings = load_settings(project / "prodai.yaml")
    owner = (project / "prodai.yaml").stat()
    _mounts, _environment, user = docker.config_mounts(settings)
    assert user == f"{owner.st_uid}:{owner.st_gid}"
    assert _mode(project / "prodai.yaml") == 0o600 and _mode(project) == 0o700  # nothing opened up


def test_roots_private_config_gets_the_containers_group_and_nobody_else(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: root's own files are the case")
    project = _private_project(tmp_path, "serving:\n  port: 9000\nauth:\n  keys_file: keys.yaml\n")
    settings = load_settings(project / "prodai.yaml")
    access = secrets.container_access(settings)
    assert access.user is None  # the image's own uid 10001, never root
    config, keys = project / "prodai.yaml", project / "keys.yaml"
    assert set(access.changed) == {project, config, keys}
    # The keys file did not exist: made now so `keys create` later keeps its group (the server reads it live).
    assert keys.read_text().startswith("#")
    for path in (config, keys):
        assert (path.stat().st_uid, path.stat().st_gid, _mode(path)) == (0, CONTAINER_UID, 0o640)
    assert (project.stat().st_gid, _mode(project)) == (CONTAINER_UID, 0o710)  # enter, not list; others nothing
    for path in (config, keys):
        assert secrets.readable(path.stat(), CONTAINER_UID, CONTAINER_UID)
        assert not secrets.readable(path.stat(), 4242, 4242)  # any other host user
    # ab-set and keys create go through the atomic writers: group and mode survive the replacement.
    edit_config(config, lambda doc: doc["serving"].__setitem__("port", 9001))
    assert (config.stat().st_gid, _mode(config)) == (CONTAINER_UID, 0o640)
    # A second deploy finds nothing to change.
    assert secrets.container_access(load_settings(config)).changed == []


def test_a_readable_project_is_left_as_it_is(tmp_path: Path) -> None:
    project = _private_project(tmp_path)
    project.chmod(0o755)
    (project / "prodai.yaml").chmod(0o644)
    access = secrets.container_access(load_settings(project / "prodai.yaml"))
    assert access.user is None and access.changed == []
    assert (project / "prodai.yaml").stat().st_gid == os.getegid() and _mode(project / "prodai.yaml") == 0o644


def test_a_private_keys_file_beside_a_readable_config_runs_the_container_as_its_owner(tmp_path: Path) -> None:
    # The container failed with "Permission denied: '/app/keys.yaml'": only prodai.yaml's mode was looked at.
    project = _private_project(tmp_path, "serving:\n  port: 9000\nauth:\n  keys_file: keys.yaml\n")
    project.chmod(0o755)
    (project / "prodai.yaml").chmod(0o644)
    write_atomic(project / "keys.yaml", "keys: []\n")  # as `prodai keys create` makes it: 0600
    if os.geteuid() == 0:
        for path in (project, project / "prodai.yaml", project / "keys.yaml"):
            os.chown(path, 4242, 4343)
    owner = (project / "keys.yaml").stat()
    _mounts, _environment, user = docker.config_mounts(load_settings(project / "prodai.yaml"))
    assert user == f"{owner.st_uid}:{owner.st_gid}"
    assert _mode(project / "keys.yaml") == 0o600


def test_root_refuses_to_share_secrets_with_a_host_group_that_has_members(tmp_path: Path) -> None:
    import grp
    import shutil
    import subprocess

    from prodai_cli.errors import DeployError

    if os.geteuid() != 0 or shutil.which("groupadd") is None:
        pytest.skip("needs root and groupadd: it creates a host group with gid 10001")
    with contextlib.suppress(KeyError):
        pytest.skip(f"gid {CONTAINER_UID} exists on this host already ({grp.getgrgid(CONTAINER_UID).gr_name})")
    project = _private_project(tmp_path, "serving:\n  port: 9000\nauth:\n  keys_file: keys.yaml\n")
    name = f"prodai-g{os.getpid()}"
    subprocess.run(["groupadd", "-g", str(CONTAINER_UID), "-U", "root", name], check=True, capture_output=True)
    try:
        with pytest.raises(DeployError, match=f"{name} \\(gid {CONTAINER_UID}\\) has members \\(root\\)"):
            secrets.container_access(load_settings(project / "prodai.yaml"))
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)
    # Nothing was opened up on the way to the refusal.
    assert _mode(project / "prodai.yaml") == 0o600 and (project / "prodai.yaml").stat().st_gid == 0
    assert _mode(project) == 0o700 and not (project / "keys.yaml").exists()
