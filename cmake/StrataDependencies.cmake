# Finds Strata's dependencies the way CMake users expect and names the Debian
# package when one is missing.

function(strata_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "strata: ${what} not found; on Debian: apt-get install ${package}")
  endif()
  message(STATUS "strata: found ${what}")
endfunction()

find_package(OpenMP)
strata_require(OpenMP_CXX_FOUND "OpenMP" "libomp-dev")
find_package(fmt CONFIG QUIET)
strata_require(fmt_FOUND "fmt" "libfmt-dev")
find_package(yaml-cpp CONFIG QUIET)
strata_require(yaml-cpp_FOUND "yaml-cpp" "libyaml-cpp-dev")
find_package(HDF5 COMPONENTS C QUIET)
strata_require(HDF5_FOUND "HDF5 (C API)" "libhdf5-dev")
if(NOT TARGET hdf5::hdf5)
  add_library(hdf5::hdf5 INTERFACE IMPORTED)
  set_target_properties(hdf5::hdf5 PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${HDF5_C_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${HDF5_C_LIBRARIES}")
endif()
find_package(nlohmann_json CONFIG QUIET)
strata_require(nlohmann_json_FOUND "nlohmann-json" "nlohmann-json3-dev")
find_package(ZLIB QUIET)
strata_require(ZLIB_FOUND "zlib" "zlib1g-dev")
find_package(CLI11 CONFIG QUIET)
strata_require(CLI11_FOUND "CLI11" "libcli11-dev")
# Gloo: the collectives of the CPU data-parallel back end (src/dist).
find_path(STRATA_GLOO_INCLUDE gloo/allreduce.h)
find_library(STRATA_GLOO_LIBRARY gloo)
strata_require(STRATA_GLOO_LIBRARY "Gloo" "libgloo-dev")
strata_require(STRATA_GLOO_INCLUDE "Gloo headers" "libgloo-dev")
add_library(strata_gloo INTERFACE IMPORTED)
set_target_properties(strata_gloo PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${STRATA_GLOO_INCLUDE}"
  INTERFACE_LINK_LIBRARIES "${STRATA_GLOO_LIBRARY}")
if(STRATA_BUILD_TESTS)
  find_package(doctest CONFIG QUIET)
  strata_require(doctest_FOUND "doctest" "doctest-dev")
endif()

# CUDA libraries: cuBLAS/cuBLASLt and cuFFT come with the toolkit; cuDNN and NCCL
# are found beside it or in the system library folders.
macro(strata_find_cuda_dependencies)
  find_package(CUDAToolkit REQUIRED)
  find_path(STRATA_CUDNN_INCLUDE cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(STRATA_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
  strata_require(STRATA_CUDNN_LIBRARY "cuDNN" "cudnn9-cuda-13 (NVIDIA repository)")
  add_library(strata_cudnn INTERFACE IMPORTED)
  set_target_properties(strata_cudnn PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${STRATA_CUDNN_INCLUDE}"
    INTERFACE_LINK_LIBRARIES "${STRATA_CUDNN_LIBRARY}")
  find_path(STRATA_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(STRATA_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
  strata_require(STRATA_NCCL_LIBRARY "NCCL" "libnccl-dev (NVIDIA repository)")
  add_library(strata_nccl INTERFACE IMPORTED)
  set_target_properties(strata_nccl PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${STRATA_NCCL_INCLUDE}"
    INTERFACE_LINK_LIBRARIES "${STRATA_NCCL_LIBRARY}")
endmacro()
