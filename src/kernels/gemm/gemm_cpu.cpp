// Blocked CPU matrix product, the GotoBLAS/BLIS loop nest:
//
//   for jc over n in steps of kNC:        a block of columns of B and C
//     for pc over k in steps of kKC:      one rank-kc update of that block
//       pack B[pc:+kc, jc:+nc] into kNR-wide column panels (all threads, shared)
//       for ic over m in steps of kMC:    the threads split (ic block, column chunk) pairs
//         pack A[ic:+mc, pc:+kc] into kMR-tall row panels (one per thread)
//         for each kMR x kNR tile: micro-kernel (tile of C in registers, kc rank-1
//                                  updates from the two packed panels), then write-back
//
// Packing makes every operand layout (row-major, transposed, any strides) look the
// same to the micro-kernel and pads partial panels with zeros, so the micro-kernel has
// no edge cases; only the write-back clips the tile to the matrix. A packed B
// micro-panel (kKC x kNR) stays in L1 while the packed A block (kMC x kKC) stays in L2.
//
// The micro-kernel uses GCC vector extensions (a kMR x kNR tile is 2 * kMR = 12 vector
// registers) and is compiled twice: with 32-byte vectors for AVX2 + FMA, picked at run
// time when the CPU has them, and with 16-byte vectors for the baseline ISA the
// library is built for (SSE2, NEON). Threads split each product's (row block, column
// chunk) pairs, or take whole products when a batch divides among them.
#include "kernels/gemm/gemm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace strata::kernels {

namespace {

template <class T, int kVectorBytes>
struct Tiling {
  using Scalar = T;
  typedef T Vector __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kLanes = kVectorBytes / sizeof(T);
  static constexpr int64_t kMR = 6;           // rows of a register tile
  static constexpr int64_t kNR = 2 * kLanes;  // columns of a register tile: two vectors
  static constexpr int64_t kKC = 256;         // depth of one packed panel
  static constexpr int64_t kMC = 24 * kMR;    // rows of a packed A block
  static constexpr int64_t kNC = 128 * kNR;   // columns of a packed B block
};

// Below this many flops a product runs on the calling thread: waking the team costs more.
constexpr double kMinFlopsPerThread = 1 << 19;

// A 64-byte aligned buffer that grows on demand and is reused by later calls on the
// same thread (packing buffers would otherwise be allocated for every product).
class ScratchBuffer {
 public:
  ~ScratchBuffer() { std::free(data_); }
  void* get(size_t bytes) {
    if (bytes > capacity_) {
      std::free(data_);
      capacity_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, capacity_);
      if (!data_) {
        capacity_ = 0;
        throw std::bad_alloc();
      }
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};
thread_local ScratchBuffer packed_a_scratch;
thread_local ScratchBuffer packed_b_scratch;

// A[0:mc, 0:kc] (strides rs, cs) -> kMR-row panels: panel r holds rows r*kMR.. as
// packed[r * kMR * kc + p * kMR + i]; rows past mc are zero.
template <class Tile, class T = typename Tile::Scalar>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t rs, int64_t cs, T* packed) {
  constexpr int64_t MR = Tile::kMR;
  for (int64_t r0 = 0; r0 < mc; r0 += MR) {
    T* panel = packed + r0 * kc;
    int64_t rows = std::min(MR, mc - r0);
    if (rows < MR)
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t i = rows; i < MR; ++i) panel[p * MR + i] = T(0);
    // Walk the source along its unit stride, whichever dim that is.
    if (cs == 1) {
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t p = 0; p < kc; ++p) panel[p * MR + i] = a[(r0 + i) * rs + p];
    } else {
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t i = 0; i < rows; ++i) panel[p * MR + i] = a[(r0 + i) * rs + p * cs];
    }
  }
}

// B[0:kc, j0:j0+kNR] (strides rs, cs) -> one kNR-column panel, packed[p * kNR + j];
// columns past nc are zero.
template <class Tile, class T = typename Tile::Scalar>
void pack_b_panel(int64_t kc, int64_t nc, int64_t j0, const T* b, int64_t rs, int64_t cs, T* panel) {
  constexpr int64_t NR = Tile::kNR;
  int64_t columns = std::min(NR, nc - j0);
  if (columns < NR)
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t j = columns; j < NR; ++j) panel[p * NR + j] = T(0);
  if (rs == 1 && cs != 1) {
    for (int64_t j = 0; j < columns; ++j)
      for (int64_t p = 0; p < kc; ++p) panel[p * NR + j] = b[p + (j0 + j) * cs];
  } else {
    for (int64_t p = 0; p < kc; ++p)
      for (int64_t j = 0; j < columns; ++j) panel[p * NR + j] = b[p * rs + (j0 + j) * cs];
  }
}

// tile (kMR x kNR) = packed A panel (kc x kMR) ^T @ packed B panel (kc x kNR).
template <class Tile, class T = typename Tile::Scalar>
[[gnu::always_inline]] inline void micro_kernel(int64_t kc, const T* __restrict a_panel, const T* __restrict b_panel,
                                                T* __restrict tile) {
  using Vector = typename Tile::Vector;
  constexpr int64_t MR = Tile::kMR, NR = Tile::kNR, L = Tile::kLanes;
  Vector low[MR], high[MR];  // columns [0, L) and [L, 2L) of each row
#pragma GCC unroll 8
  for (int64_t i = 0; i < MR; ++i) low[i] = high[i] = Vector{};
  for (int64_t p = 0; p < kc; ++p) {
    Vector b_low, b_high;  // memcpy: vector loads without breaking aliasing rules
    std::memcpy(&b_low, b_panel + p * NR, sizeof b_low);
    std::memcpy(&b_high, b_panel + p * NR + L, sizeof b_high);
#pragma GCC unroll 8
    for (int64_t i = 0; i < MR; ++i) {
      T a = a_panel[p * MR + i];
      low[i] += a * b_low;
      high[i] += a * b_high;
    }
  }
#pragma GCC unroll 8
  for (int64_t i = 0; i < MR; ++i) {
    std::memcpy(tile + i * NR, &low[i], sizeof low[i]);
    std::memcpy(tile + i * NR + L, &high[i], sizeof high[i]);
  }
}

// C[0:mc, 0:nc] = alpha * (packed A block @ packed B columns) + beta * C; beta == 0
// never reads C.
template <class Tile, class T = typename Tile::Scalar>
[[gnu::always_inline]] inline void macro_kernel_body(int64_t mc, int64_t nc, int64_t kc, const T* packed_a,
                                                     const T* packed_b, T alpha, T beta, T* c, int64_t c_rs,
                                                     int64_t c_cs) {
  constexpr int64_t MR = Tile::kMR, NR = Tile::kNR;
  alignas(64) T tile[MR * NR];
  for (int64_t jr = 0; jr < nc; jr += NR) {
    int64_t columns = std::min(NR, nc - jr);
    for (int64_t ir = 0; ir < mc; ir += MR) {
      int64_t rows = std::min(MR, mc - ir);
      micro_kernel<Tile>(kc, packed_a + ir * kc, packed_b + jr * kc, tile);
      for (int64_t i = 0; i < rows; ++i) {
        T* c_row = c + (ir + i) * c_rs + jr * c_cs;
        const T* tile_row = tile + i * NR;
        if (beta == T(0)) {
          for (int64_t j = 0; j < columns; ++j) c_row[j * c_cs] = alpha * tile_row[j];
        } else {
          for (int64_t j = 0; j < columns; ++j) c_row[j * c_cs] = alpha * tile_row[j] + beta * c_row[j * c_cs];
        }
      }
    }
  }
}

// The two instruction sets: 32-byte vectors for AVX2 + FMA, 16-byte vectors (SSE2,
// NEON) for the baseline, each with 12 vector accumulators, which fit the 16 vector
// registers of either.
template <class T>
using BaselineTiling = Tiling<T, 16>;

template <class T>
void macro_kernel(BaselineTiling<T>, int64_t mc, int64_t nc, int64_t kc, const T* packed_a, const T* packed_b, T alpha,
                  T beta, T* c, int64_t c_rs, int64_t c_cs) {
  macro_kernel_body<BaselineTiling<T>>(mc, nc, kc, packed_a, packed_b, alpha, beta, c, c_rs, c_cs);
}

#if defined(__x86_64__)
template <class T>
using Avx2Tiling = Tiling<T, 32>;

template <class T>
__attribute__((target("avx2,fma"))) void macro_kernel(Avx2Tiling<T>, int64_t mc, int64_t nc, int64_t kc,
                                                      const T* packed_a, const T* packed_b, T alpha, T beta, T* c,
                                                      int64_t c_rs, int64_t c_cs) {
  macro_kernel_body<Avx2Tiling<T>>(mc, nc, kc, packed_a, packed_b, alpha, beta, c, c_rs, c_cs);
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

// C = beta * C, for k == 0 (an empty sum).
template <class T>
void scale(int64_t m, int64_t n, T beta, T* c, int64_t c_rs, int64_t c_cs) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T& value = c[i * c_rs + j * c_cs];
      value = beta == T(0) ? T(0) : beta * value;
    }
}

// One matrix product on `threads` threads (1: the calling thread alone).
template <class Tile, class T = typename Tile::Scalar>
void gemm_one(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t a_rs, int64_t a_cs, const T* b,
              int64_t b_rs, int64_t b_cs, T beta, T* c, int64_t c_rs, int64_t c_cs, int threads) {
  constexpr int64_t MR = Tile::kMR, NR = Tile::kNR, KC = Tile::kKC, MC = Tile::kMC, NC = Tile::kNC;
  if (m == 0 || n == 0) return;
  if (k == 0) return scale(m, n, beta, c, c_rs, c_cs);
  T* packed_b = static_cast<T*>(packed_b_scratch.get(sizeof(T) * KC * std::min(NC, (n + NR - 1) / NR * NR)));
  const int64_t row_blocks = (m + MC - 1) / MC;

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    T* packed_a = static_cast<T*>(packed_a_scratch.get(sizeof(T) * KC * std::min(MC, (m + MR - 1) / MR * MR)));
    for (int64_t jc = 0; jc < n; jc += NC) {
      const int64_t nc = std::min(NC, n - jc);
      const int64_t panels = (nc + NR - 1) / NR;
      // Too few row blocks to keep every thread busy: also split the columns.
      const int64_t chunks_wanted =
          std::min(panels, row_blocks >= 2 * threads ? 1 : (2 * threads + row_blocks - 1) / row_blocks);
      const int64_t panels_per_chunk = (panels + chunks_wanted - 1) / chunks_wanted;
      const int64_t column_chunks = (panels + panels_per_chunk - 1) / panels_per_chunk;
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = std::min(KC, k - pc);
        const T beta_now = pc == 0 ? beta : T(1);  // later depth panels add to the first
#pragma omp for schedule(static)
        for (int64_t panel = 0; panel < panels; ++panel)
          pack_b_panel<Tile>(kc, nc, panel * NR, b + pc * b_rs + jc * b_cs, b_rs, b_cs, packed_b + panel * NR * kc);
#pragma omp for schedule(static)
        for (int64_t unit = 0; unit < row_blocks * column_chunks; ++unit) {
          const int64_t ic = unit / column_chunks * MC, mc = std::min(MC, m - ic);
          const int64_t j0 = unit % column_chunks * panels_per_chunk * NR;
          const int64_t columns = std::min(panels_per_chunk * NR, nc - j0);
          pack_a<Tile>(mc, kc, a + ic * a_rs + pc * a_cs, a_rs, a_cs, packed_a);
          macro_kernel(Tile{}, mc, columns, kc, packed_a, packed_b + j0 * kc, alpha, beta_now,
                       c + ic * c_rs + (jc + j0) * c_cs, c_rs, c_cs);
        }
      }
    }
  }
}

template <class Tile, class T = typename Tile::Scalar>
void gemm_batch(int64_t m, int64_t n, int64_t k, int64_t batch, T alpha, const T* a, const MatrixLayout& a_layout,
                const T* b, const MatrixLayout& b_layout, T beta, T* c, const MatrixLayout& c_layout) {
  int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  double flops = 2.0 * static_cast<double>(m) * n * std::max<int64_t>(k, 1) * batch;
  threads = static_cast<int>(std::clamp<double>(flops / kMinFlopsPerThread, 1, threads));
  auto one = [&](int64_t index, int threads_per_product) {
    gemm_one<Tile>(m, n, k, alpha, a + index * a_layout.batch_stride, a_layout.row_stride, a_layout.column_stride,
                   b + index * b_layout.batch_stride, b_layout.row_stride, b_layout.column_stride, beta,
                   c + index * c_layout.batch_stride, c_layout.row_stride, c_layout.column_stride, threads_per_product);
  };
  // Whole products per thread when the batch splits evenly or is long enough that the
  // uneven tail hardly matters; otherwise all threads share each product.
  if (threads > 1 && (batch % threads == 0 || batch >= 4 * threads)) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t index = 0; index < batch; ++index) one(index, 1);
  } else {
    for (int64_t index = 0; index < batch; ++index) one(index, threads);
  }
}

}  // namespace

template <class T>
void gemm_cpu(int64_t m, int64_t n, int64_t k, int64_t batch, T alpha, const T* a, const MatrixLayout& a_layout,
              const T* b, const MatrixLayout& b_layout, T beta, T* c, const MatrixLayout& c_layout) {
  if (batch == 0 || m == 0 || n == 0) return;
#if defined(__x86_64__)
  if (cpu_has_avx2_fma())
    return gemm_batch<Avx2Tiling<T>>(m, n, k, batch, alpha, a, a_layout, b, b_layout, beta, c, c_layout);
#endif
  gemm_batch<BaselineTiling<T>>(m, n, k, batch, alpha, a, a_layout, b, b_layout, beta, c, c_layout);
}

template void gemm_cpu<float>(int64_t, int64_t, int64_t, int64_t, float, const float*, const MatrixLayout&,
                              const float*, const MatrixLayout&, float, float*, const MatrixLayout&);
template void gemm_cpu<double>(int64_t, int64_t, int64_t, int64_t, double, const double*, const MatrixLayout&,
                               const double*, const MatrixLayout&, double, double*, const MatrixLayout&);

}  // namespace strata::kernels
