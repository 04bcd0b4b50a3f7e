"""Crash injection: run a kamim function in a child process that SIGKILLs itself at a chosen point.

The injector wraps (never replaces) the real operations: ``os.replace`` (atomic renames of block files,
shards, checkpoints, manifests), ``shutil.rmtree`` (the build's cleanup) and zarr array writes, and
sends SIGKILL to its own process before or after the n-th matching call, as a power cut would.

Children come from a forkserver that has already imported kamim (fast: no 5 s import per child) and
that never touched zarr, so no zarr I/O thread is inherited across the fork (reference/anchors.md B.3).
"""

from __future__ import annotations

import fnmatch
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable

PRELOAD = ["numpy", "torch", "cv2", "zarr", "kamim.preprocess.build", "kamim.cache", "kamim.train.checkpoint",
           "kamim.train.pretrain"]
POINTS = ("before-replace", "after-replace", "rmtree", "zarr-write", "call", "never")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_crash(point: str, pattern: str = "*", nth: int = 1) -> None:
    """SIGKILL this process at the ``nth`` matching ``point``: ``pattern`` is a file-name pattern for
    renames, an array name for zarr writes, ``module:function`` for calls (killed on entry)."""
    assert point in POINTS, point
    seen = 0

    def hit(name: str) -> bool:
        nonlocal seen
        if fnmatch.fnmatch(os.path.basename(os.fspath(name)), pattern):
            seen += 1
            return seen == nth
        return False

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202
        now = hit(dst)
        if now and point == "before-replace":
            _die()
        real_replace(src, dst, *args, **kwargs)
        if now and point == "after-replace":
            _die()

    def rmtree(path, *args, **kwargs):  # noqa: ANN001, ANN202
        files = sorted(p.path for p in os.scandir(path) if p.is_file())
        for file in files[:nth]:  # delete a few, then die half-way through the cleanup
            os.unlink(file)
        _die()

    if point in ("before-replace", "after-replace"):
        os.replace = replace
    elif point == "rmtree":
        shutil.rmtree = rmtree
    elif point == "zarr-write":
        import zarr

        real_setitem = zarr.Array.__setitem__

        def setitem(self, key, value):  # noqa: ANN001, ANN202
            real_setitem(self, key, value)
            if hit(self.path):
                _die()

        zarr.Array.__setitem__ = setitem
    elif point == "call":
        import importlib

        module_name, name = pattern.split(":")
        module = importlib.import_module(module_name)
        real = getattr(module, name)
        calls = 0

        def call(*args, **kwargs):  # noqa: ANN202
            nonlocal calls
            calls += 1
            if calls == nth:
                _die()
            return real(*args, **kwargs)

        setattr(module, name, call)


def _child(point: str, pattern: str, nth: int, fn: Callable, args: tuple, limits: dict | None,
           report: str | None) -> None:
    if limits:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, writes fail with EFBIG instead
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))
    install_crash(point, pattern, nth)
    try:
        fn(*args)
    except Exception as error:  # what the user would see: the UserError line, or the exception's type
        if report:
            from kamim.errors import UserError

            text = f"Error: {error.format_message()}" if isinstance(error, UserError) else repr(error)
            with open(report, "w") as handle:
                handle.write(text)
        os._exit(2 if type(error).__name__ == "UserError" else 1)


def run_child(fn: Callable, *args, point: str = "never", pattern: str = "*", nth: int = 1,
              limits: dict | None = None, report: str | None = None, timeout: float = 300) -> int:
    """Run ``fn(*args)`` in a forkserver child with the crash installed; returns its exit code
    (-9 when it killed itself, 0 when it finished, 2 on a UserError, 1 on another exception; ``report``
    gets the error's one line)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    process = ctx.Process(target=_child, args=(point, pattern, nth, fn, args, limits, report))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"child {fn.__name__} still running after {timeout} s")
    return process.exitcode
