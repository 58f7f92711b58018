#!/usr/bin/env bash
# Build a CPU LAMMPS shared library with PYTHON, ML-IAP (+ Python coupling, i.e.
# `pair_style mliap unified`), ML-SNAP, EXTRA-FIX and OPENMP, from Debian's `lammps` source
# package (its .orig tarball; Debian strips Kokkos, fine for CPU). Nothing here runs at
# `pip install` or in the tests: run it by hand when you need `pair_style mliap unified`.
#
# Usage: cmake/build-lammps-mliap.sh [PYTHON]      (PYTHON defaults to .venv/bin/python)
# Env:   LAMMPS_DEB_VERSION (Debian source version, default 20260704+dfsg-2), JOBS (default 2),
#        PROBE_CACHE (default ~/.cache/probe-md)
# Needs: apt with a deb-src line for a suite carrying that version (see cmake/README.md),
#        cython, ninja and mpich's mpicxx next to PYTHON (pip install cython ninja mpich).
# Prints the build folder last; liblammps.so is there, the Python module in <src>/python.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-$here/../.venv/bin/python}"
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
bindir="$(dirname "$python")"
deb_version="${LAMMPS_DEB_VERSION:-20260704+dfsg-2}"
version="${deb_version%-*}"   # upstream part: names the .orig tarball
jobs="${JOBS:-2}"
cache="${PROBE_CACHE:-$HOME/.cache/probe-md}"
src_cache="$cache/src"

cmake_bin="$bindir/cmake"; [ -x "$cmake_bin" ] || cmake_bin="$(command -v cmake)"
ninja_bin="$bindir/ninja"; [ -x "$ninja_bin" ] || ninja_bin="$(command -v ninja)"
mpicxx="$bindir/mpicxx";   [ -x "$mpicxx" ]    || { echo "no mpicxx next to $python: pip install mpich" >&2; exit 1; }
"$python" -c "import Cython" 2>/dev/null || { echo "$python lacks cython: pip install cython" >&2; exit 1; }

options=(
  -G Ninja
  -D CMAKE_BUILD_TYPE=Release
  -D CMAKE_MAKE_PROGRAM="$ninja_bin"
  -D CMAKE_CXX_COMPILER="$mpicxx"
  -D CMAKE_C_COMPILER="$bindir/mpicc"
  -D BUILD_SHARED_LIBS=on
  -D LAMMPS_EXCEPTIONS=on
  -D BUILD_MPI=on
  -D BUILD_OMP=on
  -D PKG_PYTHON=on
  -D PKG_ML-IAP=on
  -D MLIAP_ENABLE_PYTHON=on
  -D PKG_ML-SNAP=on
  -D PKG_EXTRA-FIX=on
  -D PKG_OPENMP=on
  -D Python_EXECUTABLE="$python"
)

# Cache key: what changes the binary (source version, options, Python, torch, compiler).
key_inputs="$version
${options[*]}
$("$python" -c 'import sys; print(sys.version)')
$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo no-torch)
$("$mpicxx" --version | head -1)"
key="$(printf '%s' "$key_inputs" | sha256sum | cut -c1-16)"
build="$cache/lammps-mliap/$key"
mkdir -p "$src_cache" "$build"
printf '%s\n' "$key_inputs" > "$build/key-inputs.txt"

now() { date +%s; }

# 1. fetch: Debian's .orig tarball (apt-get also tries the .dsc/.debian.tar; not needed).
t0=$(now)
orig="$src_cache/lammps_${version}.orig.tar.gz"
if [ ! -s "$orig" ]; then
  # exact version: a bare `lammps` would ask for the source of the installed suite's binary;
  # the .dsc/.debian.tar may 404 on a mirror (not needed), so check for the tarball only
  (cd "$src_cache" && apt-get source --download-only "lammps=$deb_version" >/dev/null 2>&1 || true)
  [ -s "$orig" ] || { echo "could not fetch $orig: add a deb-src line for a suite with lammps $deb_version and run apt-get update (cmake/README.md)" >&2; exit 1; }
fi
srcdir="$src_cache/lammps-$version"
if [ ! -f "$srcdir/cmake/CMakeLists.txt" ]; then
  rm -rf "$srcdir.tmp" && mkdir -p "$srcdir.tmp"
  tar -xzf "$orig" -C "$srcdir.tmp"   # the tarball has no top-level folder
  mv "$srcdir.tmp" "$srcdir"
fi
t1=$(now); echo "fetch+extract: $((t1 - t0)) s"

# 2. configure (out of source).
PATH="$bindir:$PATH" "$cmake_bin" -S "$srcdir/cmake" -B "$build/build" "${options[@]}" > "$build/configure.log" 2>&1 \
  || { tail -n 30 "$build/configure.log" >&2; exit 1; }
t2=$(now); echo "configure: $((t2 - t1)) s (log: $build/configure.log)"

# 3. build.
PATH="$bindir:$PATH" "$cmake_bin" --build "$build/build" --parallel "$jobs" > "$build/build.log" 2>&1 \
  || { tail -n 30 "$build/build.log" >&2; exit 1; }
t3=$(now); echo "build: $((t3 - t2)) s (log: $build/build.log)"

ln -sfn "$srcdir" "$build/src"
echo "LD_LIBRARY_PATH=$build/build PYTHONPATH=$srcdir/python"
echo "$build/build"
