"""Ctrl-C (SIGINT) and SIGTERM during pretraining: finish the current step, checkpoint, say how to resume.

The first signal only sets a flag, read at the next step boundary (a step is never cut in half, so the
checkpoint is exactly what an uninterrupted run had at that step). A second signal restores the default
handlers and interrupts at once, for a user who cannot wait for the step to finish.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_INTERRUPTED = 130  # the shell's convention for "ended by SIGINT"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signal(announce: bool = True) -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set ``request.signal`` instead of raising (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(signum: int, frame) -> None:  # noqa: ANN001
        if request.requested:  # the second one: stop waiting
            for sig, old in previous.items():
                signal.signal(sig, old)
            raise KeyboardInterrupt
        request.signal = signal.Signals(signum).name
        if announce:
            print(f"\n{request.signal}: stopping after this step with a checkpoint (press Ctrl-C again to abort "
                  f"now, without one)", file=sys.stderr, flush=True)

    for sig in SIGNALS:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_interrupts(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C at a terminal reaches the whole process group, and a loader
    worker that took it would exit (torch's worker loop swallows KeyboardInterrupt) while the main process
    still needs its prefetched batches to finish the step it checkpoints. The main process decides."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resume_command(run_dir: str | Path) -> str:
    """The command that continues ``run_dir`` exactly (its config.json supplies every other flag)."""
    return f"kamim pretrain --out {shlex.quote(str(run_dir))} --resume"
