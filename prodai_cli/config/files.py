"""Atomic file replacement and advisory locks: the two I/O rules every config and state writer follows.

A reader sees the old file or the new one, never a mix (:func:`write_atomic`); two editors take turns
(:func:`file_lock`, on filelock so it works on Windows too); a watcher tells a replaced file by its
:func:`file_signature`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

FileSignature = tuple[int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """Inode, size and mtime of ``path`` (None when it cannot be stat'ed): what changes when it is edited.

    An atomic replacement (:func:`write_atomic`) always shows as a new inode, even within one mtime tick.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new one, never a mix.

    Writes a temp file in the same directory, fsyncs it, ``os.replace`` s it over the target and fsyncs
    the directory, keeping the original file's mode, owner and group (a new file is 0600). Keeping the group
    matters: ``prodai deploy`` gives root's private config the container's group (deploy/secrets.py), and an
    ``ab-set`` or ``keys create`` after it must not take the running server's access away.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            _keep_ownership(tmp, path.stat())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_ownership(tmp: str, original: os.stat_result) -> None:
    """Give the temp file the original's owner, group and mode (before the replace makes it the file)."""
    mode = original.st_mode & 0o7777
    current = os.stat(tmp)
    if (current.st_uid, current.st_gid) != (original.st_uid, original.st_gid) and hasattr(os, "chown"):
        try:
            os.chown(tmp, original.st_uid, original.st_gid)  # root keeps any owner; a user, a group they are in
        except PermissionError:
            # The file becomes the writer's, in their own group: that group gets no more than others had.
            mode &= ~0o070 | ((mode & 0o007) << 3)
    os.chmod(tmp, mode)  # after chown, which clears setuid/setgid bits


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (serialises concurrent editors)."""
    # filelock rather than fcntl: the same flock(2) on POSIX, and the module still imports on Windows.
    from filelock import FileLock

    with FileLock(path.with_name(path.name + ".lock")):
        yield
