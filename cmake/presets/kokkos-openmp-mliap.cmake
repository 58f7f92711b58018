# Preset: LAMMPS with KOKKOS on OpenMP (CPU threads), ML-IAP with its Python coupling
# (pair_style mliap unified, used by probe_md.lammps.mliap_unified) and PLUGIN (so the same
# binary can also `plugin load` probe-md's pair_style probe/mace).
# Use from a LAMMPS build folder: cmake -C <probe-md>/cmake/presets/kokkos-openmp-mliap.cmake ../cmake

set(PKG_KOKKOS ON CACHE BOOL "" FORCE)
set(Kokkos_ENABLE_SERIAL ON CACHE BOOL "" FORCE)
set(Kokkos_ENABLE_OPENMP ON CACHE BOOL "" FORCE)
set(BUILD_OMP ON CACHE BOOL "" FORCE)

set(PKG_ML-IAP ON CACHE BOOL "" FORCE)
set(PKG_ML-SNAP ON CACHE BOOL "" FORCE)        # ML-IAP depends on ML-SNAP
set(MLIAP_ENABLE_PYTHON ON CACHE BOOL "" FORCE) # pair_style mliap unified (needs cython)
set(PKG_PYTHON ON CACHE BOOL "" FORCE)
set(PKG_PLUGIN ON CACHE BOOL "" FORCE)
set(BUILD_SHARED_LIBS ON CACHE BOOL "" FORCE)   # the Python module loads liblammps.so
