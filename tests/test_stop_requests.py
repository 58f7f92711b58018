"""Ctrl-C / SIGTERM: the first is recorded (no KeyboardInterrupt), the second exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from probe_md.lammps.stop_requests import StopRequests, exit_code_for

# Blocks in a C call (like LAMMPS inside `run`), where no Python handler could run.
SCRIPT = """
import ctypes, sys, time
from probe_md.lammps.stop_requests import StopRequests
with StopRequests() as stops:
    print("ready", flush=True)
    end = time.monotonic() + int(sys.argv[1])
    while time.monotonic() < end:
        ctypes.CDLL(None).sleep(1)
    print("received", stops.received, flush=True)
"""


def start(seconds: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(seconds)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_recorded_and_the_work_goes_on(signum):
    process = start(2)
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"received {int(signum)}" in out
    assert "stopping at the next step" in err and "KeyboardInterrupt" not in err


def test_second_signal_exits_at_once_with_the_shell_code():
    process = start(60)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # the first one does not stop the process
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    assert time.perf_counter() - started < 5  # not the 60 s the C call would take
    assert process.returncode == exit_code_for(signal.SIGTERM) == 143
    assert "exiting at once" in process.stderr.read()


def test_handlers_are_restored_on_exit():
    before = signal.getsignal(signal.SIGINT)
    with StopRequests():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
