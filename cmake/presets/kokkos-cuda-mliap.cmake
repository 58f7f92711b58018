# Preset: LAMMPS with KOKKOS on CUDA, ML-IAP with its Python coupling (pair_style mliap
# unified, used by probe_md.lammps.mliap_unified and mace's LAMMPS_MLIAP_MACE) and PLUGIN
# (so the same binary can also `plugin load` probe-md's pair_style probe/mace).
# Use from a LAMMPS build folder: cmake -C <probe-md>/cmake/presets/kokkos-cuda-mliap.cmake ../cmake
# The GPU architecture below is Hopper (H100/H200); change it for your card
# (Kokkos_ARCH_AMPERE80 for A100, Kokkos_ARCH_ADA89 for L40S/RTX 40xx).

set(PKG_KOKKOS ON CACHE BOOL "" FORCE)
set(Kokkos_ENABLE_SERIAL ON CACHE BOOL "" FORCE)
set(Kokkos_ENABLE_CUDA ON CACHE BOOL "" FORCE)
set(Kokkos_ARCH_HOPPER90 ON CACHE BOOL "" FORCE)
set(BUILD_OMP ON CACHE BOOL "" FORCE)
# Kokkos builds CUDA code through nvcc_wrapper, shipped inside the LAMMPS source tree.
get_filename_component(NVCC_WRAPPER_CMD ${CMAKE_CURRENT_SOURCE_DIR}/../lib/kokkos/bin/nvcc_wrapper ABSOLUTE)
set(CMAKE_CXX_COMPILER ${NVCC_WRAPPER_CMD} CACHE FILEPATH "" FORCE)
set(FFT_KOKKOS "CUFFT" CACHE STRING "" FORCE)

set(PKG_ML-IAP ON CACHE BOOL "" FORCE)
set(PKG_ML-SNAP ON CACHE BOOL "" FORCE)        # ML-IAP depends on ML-SNAP
set(MLIAP_ENABLE_PYTHON ON CACHE BOOL "" FORCE) # pair_style mliap unified (needs cython)
set(PKG_PYTHON ON CACHE BOOL "" FORCE)
set(PKG_PLUGIN ON CACHE BOOL "" FORCE)
set(BUILD_SHARED_LIBS ON CACHE BOOL "" FORCE)   # the Python module loads liblammps.so
