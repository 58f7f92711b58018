"""ProbeMliapUnified in a real LAMMPS: runs `python -m pytest -m mliap -q tests/test_mliap_real.py`
(pair_style mliap unified on 1 and 2 MPI ranks vs pair_style probe/mace, the real ML-IAP
data object vs the test fake, and plain lmp + fix python/invoke dumping and halting as the
fix external driver does) and prints pytest's result and the wall time.

The LAMMPS it needs is the CPU build from cmake/build-lammps-mliap.sh (see cmake/README.md);
without it the tests skip with that command. Extra arguments go to pytest.

  python benchmarks/mliap/run.py [-x ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = [sys.executable, "-m", "pytest", "-m", "mliap", "-q", "-rs", "tests/test_mliap_real.py", *argv]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(done.stdout + done.stderr, end="")
    print(f"pytest exit code {done.returncode}, {time.perf_counter() - start:.1f} s")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
