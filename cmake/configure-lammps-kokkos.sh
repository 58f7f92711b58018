#!/usr/bin/env bash
# Configure (not build) LAMMPS with presets/kokkos-openmp-mliap.cmake against Debian's
# `lammps` source (the one build-lammps-mliap.sh uses) and an external Kokkos: Debian's
# libkokkos-dev/libkokkos5.2 5.2.2-2 binary packages (sid), unpacked into the cache. This
# proves the preset's configuration step where Kokkos' own source is out of reach (Debian
# strips it from lammps; kokkos_5.2.2.orig.tar.gz 404s on the mirror).
#
# Usage: cmake/configure-lammps-kokkos.sh [openmp|cuda] [PYTHON]   (default: openmp, .venv/bin/python)
# Env:   PROBE_CACHE (default ~/.cache/probe-md)
# Needs: build-lammps-mliap.sh run once (it fetches and unpacks the lammps source), curl, dpkg-deb.
# Prints the configure log's summary and the build folder last.
#
# Not a build: sid's libkokkoscore.so needs glibc >= 2.38 and libstdc++ >= 13.1 (Debian 12
# has 2.36 and 12), so linking against it here would fail; and Debian's Kokkos has the
# OpenMP backend only, so `cuda` is refused (a CUDA Kokkos must be built from Kokkos' source).
set -euo pipefail

backend="${1:-openmp}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${2:-$here/../.venv/bin/python}"
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
bindir="$(dirname "$python")"
cache="${PROBE_CACHE:-$HOME/.cache/probe-md}"
srcdir="$cache/src/lammps-20260704+dfsg"
kokkos_version="5.2.2-2"
pool="http://deb.debian.org/debian/pool/main/k/kokkos"
# sha256 of the two .deb files as fetched on 2026-11-26 (Debian sid)
declare -A sha256=(
  [libkokkos-dev]=4a8f580267c100400c53cad45b5b7962cf0343df0fe7b1ab00ffcbd0f929d1a7
  [libkokkos5.2]=ce9e61d3492985948dd29dfee58315fa629ac6b93fd66c77c6b22ce3ead06d11
)

if [ "$backend" = cuda ]; then
  echo "cuda: Debian's Kokkos $kokkos_version is built for OpenMP only (KokkosConfigCommon.cmake: Kokkos_DEVICES OPENMP) and Kokkos' source is not reachable here; a CUDA configuration needs a CUDA-enabled Kokkos >= 5.1 (see cmake/README.md)" >&2
  exit 2
fi
[ "$backend" = openmp ] || { echo "backend must be openmp or cuda, got $backend" >&2; exit 2; }
[ -f "$srcdir/cmake/CMakeLists.txt" ] || { echo "no LAMMPS source at $srcdir: run cmake/build-lammps-mliap.sh first" >&2; exit 1; }

now() { date +%s; }
t0=$(now)

# 1. Debian's Kokkos, unpacked (not installed) under the cache.
kokkos_root="$cache/src/kokkos-$kokkos_version-debian"
config_dir="$kokkos_root/usr/lib/x86_64-linux-gnu/cmake/Kokkos"
if [ ! -f "$config_dir/.relocated" ]; then
  rm -rf "$kokkos_root.tmp" && mkdir -p "$kokkos_root.tmp"
  for package in libkokkos-dev libkokkos5.2; do
    deb="$kokkos_root.tmp/${package}_${kokkos_version}_amd64.deb"
    curl -sfL -o "$deb" "$pool/${package}_${kokkos_version}_amd64.deb" \
      || { echo "could not fetch $pool/${package}_${kokkos_version}_amd64.deb" >&2; exit 1; }
    echo "${sha256[$package]}  $deb" | sha256sum -c --quiet - || { echo "$deb: unexpected sha256" >&2; exit 1; }
    dpkg-deb -x "$deb" "$kokkos_root.tmp"
  done
  cfg="$kokkos_root.tmp/usr/lib/x86_64-linux-gnu/cmake/Kokkos"
  # Two packaging gaps make the config unusable outside /usr: its targets name include dirs
  # as absolute /usr/include/kokkos, and list static libkokkosalgorithms.a/libkokkossimd.a
  # that libkokkos-dev does not ship. Relocate the one, stand in empty archives for the other
  # (enough to configure; see the header on why this is not a build).
  sed -i 's|INTERFACE_INCLUDE_DIRECTORIES "/usr/include/kokkos"|INTERFACE_INCLUDE_DIRECTORIES "${_IMPORT_PREFIX}/include/kokkos"|' "$cfg/KokkosTargets.cmake"
  for archive in libkokkosalgorithms.a libkokkossimd.a; do
    [ -e "$kokkos_root.tmp/usr/lib/x86_64-linux-gnu/$archive" ] || ar rcs "$kokkos_root.tmp/usr/lib/x86_64-linux-gnu/$archive"
  done
  touch "$cfg/.relocated"
  rm -rf "$kokkos_root" && mv "$kokkos_root.tmp" "$kokkos_root"
fi
t1=$(now); echo "kokkos fetch+unpack: $((t1 - t0)) s ($kokkos_root)"

# 2. configure LAMMPS: the preset, the CPU build's compilers, the external Kokkos.
build="$cache/lammps-kokkos-$backend/configure-only"
rm -rf "$build" && mkdir -p "$build"
PATH="$bindir:$PATH" "$bindir/cmake" -C "$here/presets/kokkos-$backend-mliap.cmake" \
  -S "$srcdir/cmake" -B "$build" -G Ninja \
  -D CMAKE_MAKE_PROGRAM="$bindir/ninja" -D CMAKE_BUILD_TYPE=Release \
  -D CMAKE_CXX_COMPILER="$bindir/mpicxx" -D CMAKE_C_COMPILER="$bindir/mpicc" \
  -D BUILD_MPI=on -D LAMMPS_EXCEPTIONS=on -D Python_EXECUTABLE="$python" \
  -D EXTERNAL_KOKKOS=on -D Kokkos_DIR="$config_dir" > "$build/configure.log" 2>&1 \
  || { tail -n 30 "$build/configure.log" >&2; exit 1; }
t2=$(now); echo "configure: $((t2 - t1)) s (log: $build/configure.log)"
grep -E "Enabled Kokkos devices|Kokkos \(required|Enabled packages|C\+\+ Standard|Kokkos Devices|Configuring done|Generating done" "$build/configure.log"
echo "$build"
