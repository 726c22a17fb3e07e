#pragma once
// Marks functions that compile for both the host and CUDA device code.
#ifdef __CUDACC__
#define STRATA_HOST_DEVICE __host__ __device__
#else
#define STRATA_HOST_DEVICE
#endif
