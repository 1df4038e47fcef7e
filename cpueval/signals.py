"""Signals while a job runs: Slurm preemption, time limits and requeue, scancel, Ctrl-C.

SIGTERM and SIGUSR2 raise `Interrupted` (a KeyboardInterrupt) in the job, so the pipeline records
the run as `interrupted` exactly as for Ctrl-C; then `exit_interrupted` hands the signal to the
handler it pre-empted (submitit's requeue handler in a Slurm job) or exits 128 + signal.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger("cpueval")


class Interrupted(KeyboardInterrupt):
    """Raised in the job by SIGTERM/SIGUSR2 (Slurm requeue/preemption/time limit, scancel, kill).

    A KeyboardInterrupt, so the pipeline records the run as `interrupted` exactly as for Ctrl-C.
    `previous` is the handler that was installed before cpueval's (submitit's requeue handler for
    SIGUSR2 in a Slurm job), to be called once the record is written."""

    def __init__(self, signum: int, previous: Any = None) -> None:
        self.signum = signum
        self.previous = previous
        super().__init__(f"{signal.Signals(signum).name}: {SIGNAL_MEANING.get(signum, 'signal')}")


SIGNAL_MEANING = {
    signal.SIGTERM: "stopped (Slurm requeue, preemption or scancel, or kill); re-run the job to finish it",
    signal.SIGUSR2: "Slurm time limit near or preemption (submitit requeues the job)",
    signal.SIGINT: "interrupted by the user",
}
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While the job runs, SIGTERM and SIGUSR2 raise `Interrupted` in the main thread (once; a
    repeated signal while the job is being recorded is ignored). The handlers that were installed
    before (submitit's in a Slurm job) are restored on exit. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            log.warning("%s received again while stopping: ignored", signal.Signals(signum).name)
            return
        fired.append(signum)
        log.warning("%s received: recording the run as interrupted", signal.Signals(signum).name)
        raise Interrupted(signum, previous[signum])

    for signum in HANDLED_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def exit_interrupted(err: KeyboardInterrupt) -> None:
    """After an interruption is recorded: hand the signal to the handler it pre-empted (submitit's
    SIGUSR2 handler checkpoints, requeues the job and exits), else exit 128 + signal number.

    SystemExit, not an exception: it passes through Hydra's run_job and submitit's job wrapper, so
    no result is returned for an unfinished job -- the launcher waits for the requeued run, and a
    job stopped inside Slurm's kill grace period does not report success and then run again."""
    signum = getattr(err, "signum", signal.SIGINT)
    previous: Optional[Callable[..., Any]] = getattr(err, "previous", None)
    if callable(previous):
        previous(signum, None)  # submitit: requeue + sys.exit(-1), or raise if out of requeues
    raise SystemExit(128 + int(signum))
