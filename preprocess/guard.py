"""Guards around a cache build: one build per output directory, workers that die with their parent, and
disk errors that name the file.

- ``build_lock(out)``: an exclusive ``fcntl.flock`` on ``.<name>.lock`` beside the cache directory (beside,
  so the cache's own files stay byte-identical to a clean build); a second `kamim cache` on the same
  ``--out`` stops with one line naming the holder's pid. The kernel drops the lock when its holder dies,
  so a killed build never leaves a stale lock behind.
- ``die_with_parent()``: called in each loky worker; a daemon thread ends the worker when its parent
  process goes away (its parent pid changes), so `kill -9` of `kamim cache` leaves no orphan burning CPU.
- ``naming(path)``: a full disk deep inside zarr or a tar writer raises OSError without a file name;
  this adds one, so the user sees which file could not be written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kamim.errors import UserError

DISK_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
PARENT_POLL_S = 0.25
_watchdog_started = False


def lock_path(out: Path, part: str = "") -> Path:
    return out.parent / f".{out.name}{part}.lock"


@contextmanager
def build_lock(out: Path, part: str = "") -> Iterator[Path]:
    """Hold the build lock of cache directory ``out`` (UserError naming the holder if it is taken).
    ``part`` names a partition (``--num-partitions``): partitions own disjoint blocks and may build into
    one directory at once, so each has its own lock; the same partition twice is refused."""
    path = lock_path(Path(out), part)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{out} is being built by another `kamim cache` (pid {holder}, lock {path}); wait for "
                            f"it to finish or pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race with a waiting build)


def die_with_parent() -> None:
    """Start (once per process) a daemon thread that exits this process when its parent dies."""
    global _watchdog_started
    if _watchdog_started:
        return
    _watchdog_started = True
    parent = os.getppid()
    if parent == 1:
        return  # already an orphan (or a container's init child): nothing to watch

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # the parent is gone: nobody will collect this worker's results

    threading.Thread(target=watch, name="kamim-parent-watchdog", daemon=True).start()


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give a disk-full OSError raised inside the block ``path`` as its file name if it has none."""
    try:
        yield
    except OSError as error:
        if error.errno in DISK_ERRORS and not error.filename:
            error.filename = os.fspath(path)
        raise
