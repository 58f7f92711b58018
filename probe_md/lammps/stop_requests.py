"""Ctrl-C and SIGTERM for a run inside LAMMPS: the first asks for a clean stop, the second exits.

While LAMMPS computes a step the Python interpreter is inside a C call, so a Python signal
handler would only run at the next callback. The C-level handler Python installs does write
the signal number to a wakeup pipe at once (`signal.set_wakeup_fd`): a watcher thread reads
it, so the first signal is known immediately (the driver stops every rank at the next step)
and a second one exits the process at once, whatever LAMMPS is doing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Final

STOP_SIGNALS: Final[tuple[signal.Signals, ...]] = (signal.SIGINT, signal.SIGTERM)


def exit_code_for(signal_number: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signal_number)


class StopRequests:
    """Context manager: records the first SIGINT/SIGTERM, exits at once on the second.

    `received` is the first signal's number (0 until one arrives). Outside the main thread
    (signals cannot be caught there) it does nothing and `received` stays 0.
    """

    def __init__(self, announce: bool = True):
        self.received = 0
        self.announce = announce
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the C handler must never block
        self._pipe = (read_fd, write_fd)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal_in_python)
            # restart interrupted system calls: LAMMPS's writes must not fail with EINTR
            signal.siginterrupt(signum, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="probe-md-stop-requests", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        read_fd, write_fd = self._pipe
        self._pipe = None
        os.close(write_fd)  # ends the watcher's read with EOF
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        os.close(read_fd)

    def _on_signal_in_python(self, signum, frame) -> None:
        """Python's deferred handler: the watcher already acted; swallow KeyboardInterrupt."""

    def _watch(self) -> None:
        read_fd = self._pipe[0]
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._receive(signum)

    def _receive(self, signum: int) -> None:
        if self.received:
            # The second request: leave now. Logs were flushed line by line; no restart.
            sys.stderr.write(f"probe-md: second {signal.Signals(signum).name}: exiting at once\n")
            sys.stderr.flush()
            os._exit(exit_code_for(signum))
        self.received = signum
        if self.announce:
            sys.stderr.write(
                f"probe-md: {signal.Signals(signum).name} received: stopping at the next step with a "
                "restart (send it again to exit at once)\n"
            )
            sys.stderr.flush()
