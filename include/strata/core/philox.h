// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011): a counter-based generator. Element i of a draw with (seed, offset)
// uses counter (offset + i / 4) and lane i % 4, so the CPU and CUDA back ends
// produce the same numbers for the same seed, in any thread order.
#pragma once

#include <cstdint>

#include "strata/core/host_device.h"

namespace strata::philox {

struct Block {
  uint32_t v[4];
};

STRATA_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// One block of four 32-bit words for the 64-bit key `seed` and 64-bit counter.
STRATA_HOST_DEVICE inline Block generate(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Block{{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: never 0, so log(u) is finite.
STRATA_HOST_DEVICE inline float to_unit_float(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

STRATA_HOST_DEVICE inline uint32_t word(uint64_t seed, uint64_t offset, uint64_t index) {
  return generate(seed, offset + index / 4).v[index % 4];
}

}  // namespace strata::philox
