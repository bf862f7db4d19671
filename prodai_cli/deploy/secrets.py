"""Secret files (prodai.yaml with its key hashes, the keys file) stay private on the host and reach the container.

``prodai init`` and ``prodai keys create`` write 0600 files, and the docker target mounts their directory
read-only into a container that runs as uid 10001. Nothing is opened to other host users:

* A file owned by a normal user: the container runs as that user (``uid:gid``), who can read it already.
* A file owned by root: prodai never runs the server as root. It gives the file the container's *group*
  (gid 10001) and the mode ``0640``, and the directory ``g+x`` under that group when others cannot enter it.
  The atomic writers (:func:`prodai_cli.config.write_atomic`) keep owner, group and mode, so ``ab-set`` and
  ``keys create`` after the deploy leave the file readable by the running server and by nobody new.

Refused: a host where gid 10001 is a real group with members (they would read the secrets too).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prodai_cli.deploy.plan import CONTAINER_UID
from prodai_cli.errors import DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings

CONTAINER_GID = CONTAINER_UID  # the image's user is 10001:10001 (Dockerfile.j2), with no other groups
EMPTY_KEYS_FILE = "# API key hashes for prodai (prodai keys create/list/revoke). No keys here yet.\n"

logger = logging.getLogger("prodai.deploy")


@dataclass
class ContainerAccess:
    """How the container reads the project's config directory.

    Attributes:
        user: ``uid:gid`` to run the container as, or None for the image's own user (10001).
        changed: Paths whose group or mode prodai changed so that user can read them.

    """

    user: str | None
    changed: list[Path] = field(default_factory=list)


def secret_files(settings: Settings) -> list[Path]:
    """The files the container must read from the config's directory: prodai.yaml, and the keys file if any."""
    if settings.path is None:
        return []
    files = [settings.path]
    keys_name = settings.config.auth.keys_file
    if keys_name:
        keys_path = settings.resolve_path(keys_name)
        # Only a keys file inside the mounted directory is visible in the container at all.
        if keys_path.parent == settings.path.parent:
            files.append(keys_path)
    return files


def readable(info: os.stat_result, uid: int, gid: int, *, bit: str = "r") -> bool:
    """Whether a process running as ``uid:gid`` (no other groups) has ``bit`` (r or x) on a file or directory."""
    masks = {"r": (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH), "x": (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)}
    owner, group, other = masks[bit]
    if info.st_uid == uid:
        return bool(info.st_mode & owner)
    if info.st_gid == gid:
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def container_access(settings: Settings) -> ContainerAccess:
    """Let the container read the config's directory and secret files without opening them to anyone else.

    Returns:
        The user to run the container as (None: the image's uid 10001) and any file prodai changed.

    Raises:
        DeployError: Only root could read the files and gid 10001 has members on this host.

    """
    if settings.path is None:
        return ContainerAccess(None)
    directory = settings.path.parent
    owner = settings.path.stat()
    missing = [path for path in secret_files(settings) if not path.exists()]
    files = [path for path in secret_files(settings) if path.exists()]
    if not missing and _container_reads(directory, files):
        return ContainerAccess(None)
    if owner.st_uid != 0:
        # The owner can read their own files, and one `keys create` makes later: run as them (still not root).
        return ContainerAccess(f"{owner.st_uid}:{owner.st_gid}")
    _refuse_shared_group(settings.path)
    changed: list[Path] = []
    for path in missing:
        # A keys file named but not written yet: `keys create` after the deploy would make it 0600 root:root,
        # out of the server's reach; made now (empty), its group and mode below are kept from here on.
        from prodai_cli.config import write_atomic

        write_atomic(path, EMPTY_KEYS_FILE)
        files.append(path)
        changed.append(path)
    if not readable(directory.stat(), CONTAINER_UID, CONTAINER_GID, bit="x"):
        info = directory.stat()
        os.chown(directory, -1, CONTAINER_GID)
        # g+x only: the container can open the files it knows; listing the directory is not needed.
        os.chmod(directory, (info.st_mode & 0o7707) | stat.S_IXGRP)
        changed.append(directory)
    for path in files:
        if readable(path.stat(), CONTAINER_UID, CONTAINER_GID):
            continue
        info = path.stat()
        os.chown(path, -1, CONTAINER_GID)
        # Owner's bits kept, group may read, others nothing (0600 -> 0640).
        os.chmod(path, (info.st_mode & stat.S_IRWXU) | stat.S_IRGRP)
        changed.append(path)
    for path in changed:
        logger.info("gave group %s read access to %s (the container's group)", CONTAINER_GID, path)
    return ContainerAccess(None, changed)


def _container_reads(directory: Path, files: list[Path]) -> bool:
    if not readable(directory.stat(), CONTAINER_UID, CONTAINER_GID, bit="x"):
        return False
    return all(readable(path.stat(), CONTAINER_UID, CONTAINER_GID) for path in files)


def _refuse_shared_group(path: Path) -> None:
    """Refuse when host accounts are in gid 10001: giving a secret that group would hand it to them."""
    try:
        import grp
        import pwd
    except ImportError:  # not POSIX: no such host accounts to worry about
        return
    try:
        group = grp.getgrgid(CONTAINER_GID)
    except KeyError:
        members: list[str] = []
        name = str(CONTAINER_GID)
    else:
        members = list(group.gr_mem)
        name = group.gr_name
    members += [user.pw_name for user in pwd.getpwall() if user.pw_gid == CONTAINER_GID]
    if members:
        raise DeployError(
            f"The container's user (uid {CONTAINER_UID}) cannot read {path}, and on this host its group "
            f"{name} (gid {CONTAINER_GID}) has members ({', '.join(sorted(set(members)))}) who would read it too",
            hint=f"Take those accounts out of gid {CONTAINER_GID}, or deploy a project owned by a normal user "
            "(the container then runs as that user)",
        )
