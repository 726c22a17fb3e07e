// Random numbers for the data layer, all addressed by position so that any example
// or any batch can be produced on its own, on any thread, after a resume:
//   ExampleRandom    the draws of one synthetic example: Philox4x32-10 keyed by the
//                    dataset's seed, counters starting at example_index * 2^32;
//   IndexPermutation a seeded bijection of [0, n) evaluated one index at a time (a
//                    Feistel network with cycle walking), the loader's shuffle; it
//                    needs no memory, so corpora with billions of windows shuffle too.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "strata/core/philox.h"

namespace strata::data {

// SplitMix64's finaliser: a strong 64-bit mixing function.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class ExampleRandom {
 public:
  ExampleRandom(uint64_t seed, int64_t example_index)
      : seed_(seed), counter_(static_cast<uint64_t>(example_index) << 32) {}

  uint32_t next_u32() {
    if (lane_ == 4) {
      block_ = philox::generate(seed_, counter_++);
      lane_ = 0;
    }
    return block_.v[lane_++];
  }
  uint64_t next_u64() {
    uint64_t high = next_u32();
    return (high << 32) | next_u32();
  }
  // Uniform in [0, n): the high half of a 64x64-bit product (bias below n / 2^64).
  int64_t uniform(int64_t n) {
    return static_cast<int64_t>((static_cast<unsigned __int128>(next_u64()) * static_cast<uint64_t>(n)) >> 64);
  }
  int64_t uniform(int64_t low, int64_t high) { return low + uniform(high - low); }  // [low, high)
  double unit() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }     // [0, 1)

  template <class T>
  void shuffle(std::vector<T>& values) {  // Fisher-Yates
    for (int64_t i = static_cast<int64_t>(values.size()) - 1; i > 0; --i) std::swap(values[i], values[uniform(i + 1)]);
  }
  // `count` distinct values from [0, n), in random order.
  std::vector<int64_t> distinct(int64_t count, int64_t n) {
    std::vector<int64_t> all(n);
    for (int64_t i = 0; i < n; ++i) all[i] = i;
    for (int64_t i = 0; i < count; ++i) std::swap(all[i], all[i + uniform(n - i)]);
    all.resize(count);
    return all;
  }

 private:
  uint64_t seed_;
  uint64_t counter_;
  philox::Block block_{};
  int lane_ = 4;
};

class IndexPermutation {
 public:
  IndexPermutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
    int bits = 1;
    while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;
    half_bits_ = (bits + 1) / 2;
    half_mask_ = (uint64_t{1} << half_bits_) - 1;
  }

  uint64_t operator()(uint64_t index) const {
    // The network permutes [0, 4^half_bits), at most 4n values: walking the cycle
    // until it lands in [0, n) takes a few steps on average and stays a bijection.
    uint64_t x = index;
    do x = feistel(x);
    while (x >= n_);
    return x;
  }

 private:
  uint64_t feistel(uint64_t x) const {
    uint64_t left = x >> half_bits_, right = x & half_mask_;
    for (uint64_t round = 0; round < 6; ++round) {
      uint64_t next_right = left ^ (mix64(key_ ^ mix64(right + (round << 56))) & half_mask_);
      left = right;
      right = next_right;
    }
    return (left << half_bits_) | right;
  }

  uint64_t n_;
  uint64_t key_;
  int half_bits_;
  uint64_t half_mask_;
};

}  // namespace strata::data
