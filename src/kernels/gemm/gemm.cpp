// Tensor-level matrix products: checks, then a plan that turns any batch of strided
// (and broadcast) operands into as few raw kernel calls as the memory layout allows.
//
// The plan, for c[s] = alpha * a[s] @ b[s] + beta * c[s] over the leading dims s:
//   1. If c's matrices are column-major, compute c^T = b^T @ a^T instead (swapping
//      two strides is free), so the kernels only ever write row-major c.
//   2. On CUDA, an operand whose matrices have a unit stride in neither dim is copied
//      (its broadcast dims are not expanded by the copy).
//   3. Leading dims of size 1 are dropped and neighbours that step through memory as
//      one dim are merged.
//   4. Folding: a dim along which b is shared and a and c step by whole matrices
//      becomes more rows (m); a dim along which c is shared (summed) and a and b step
//      by whole k-slices becomes a deeper k.
//   5. The innermost remaining dim along which c moves is the kernel's strided batch;
//      any other dims loop here. Along dims where c is shared the loop accumulates:
//      the first visit of each c matrix uses beta, later ones beta = 1.
#include "strata/kernels/gemm.h"

#include <atomic>
#include <climits>
#include <utility>
#include <vector>

#include "kernels/gemm/gemm_cpu.h"
#ifdef STRATA_WITH_CUDA
#include "kernels/gemm/gemm_cuda.h"
#endif

namespace strata::kernels {

namespace {

std::atomic<bool> tf32_allowed{false};

// t with its last two dims swapped (a view).
Tensor transposed_view(const Tensor& t) {
  Shape shape = t.shape(), strides = t.strides();
  size_t r = shape.size();
  std::swap(shape[r - 1], shape[r - 2]);
  std::swap(strides[r - 1], strides[r - 2]);
  return t.as_strided(shape, strides, t.offset());
}

// How cuBLAS can read a (rows, cols) matrix with strides (rs, cs): row-major with
// leading dimension >= cols, or the transpose of such a matrix. The stride of a dim of
// size 1 does not matter.
struct DenseLayout {
  bool valid = false;
  bool transposed = false;
  int64_t leading_dimension = 0;
};

DenseLayout dense_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if ((cs == 1 || cols == 1) && (rows == 1 || rs >= cols)) return {true, false, rows == 1 ? cols : rs};
  if ((rs == 1 || rows == 1) && (cols == 1 || cs >= rows)) return {true, true, cols == 1 ? rows : cs};
  return {};
}

bool dense_matrices(const Tensor& t) {
  int r = t.dim();
  return dense_layout(t.shape()[r - 2], t.shape()[r - 1], t.strides()[r - 2], t.strides()[r - 1]).valid;
}

// A contiguous copy of the matrices of `view` whose stride-0 leading dims stay stride 0
// (a broadcast operand is copied once, not once per use).
Tensor dense_copy(const Tensor& view) {
  Shape source_shape = view.shape();
  for (int d = 0; d + 2 < view.dim(); ++d)
    if (view.strides()[d] == 0) source_shape[d] = 1;
  Tensor dense = view.as_strided(source_shape, view.strides(), view.offset()).clone();
  Shape strides = dense.strides();
  for (int d = 0; d + 2 < view.dim(); ++d)
    if (view.strides()[d] == 0) strides[d] = 0;
  return dense.as_strided(view.shape(), strides, dense.offset());
}

struct BatchDim {
  int64_t size;
  int64_t a, b, c;  // strides, in elements
};

// One batched product as the kernels see it.
struct Product {
  Device device;
  DType input_dtype, output_dtype;
  int64_t m, n, k;
  const char* a;  // first elements
  const char* b;
  char* c;
  int64_t a_rs, a_cs, b_rs, b_cs, c_rs, c_cs;
  std::vector<BatchDim> batch;  // outermost first, no dim of size 1

  // Whether the kernels of this device can read a (rows, cols) operand with these
  // strides: any on the CPU, the dense layouts on CUDA.
  bool readable(int64_t rows, int64_t cols, int64_t rs, int64_t cs) const {
    return device.is_cpu() || dense_layout(rows, cols, rs, cs).valid;
  }
  bool writable(int64_t rows, int64_t cols, int64_t rs, int64_t cs) const {
    if (device.is_cpu()) return true;
    DenseLayout layout = dense_layout(rows, cols, rs, cs);
    return layout.valid && !layout.transposed;
  }
};

void merge_neighbours(std::vector<BatchDim>& batch) {
  std::vector<BatchDim> merged;
  for (const BatchDim& dim : batch) {
    if (!merged.empty()) {
      BatchDim& outer = merged.back();
      if (outer.a == dim.a * dim.size && outer.b == dim.b * dim.size && outer.c == dim.c * dim.size) {
        outer = BatchDim{outer.size * dim.size, dim.a, dim.b, dim.c};
        continue;
      }
    }
    merged.push_back(dim);
  }
  batch = std::move(merged);
}

// Step 4 of the plan. A matrix dim of size 1 has no meaningful stride, so folding into
// it may pick the stride that makes the fold work.
bool fold_one(Product& p) {
  for (size_t i = p.batch.size(); i-- > 0;) {
    const BatchDim d = p.batch[i];
    if (d.b == 0 && d.c != 0) {  // rows: row r of matrix s becomes row s * m + r
      int64_t a_rs = p.m == 1 ? d.a : p.a_rs, c_rs = p.m == 1 ? d.c : p.c_rs;
      if (d.a == p.m * a_rs && d.c == p.m * c_rs && p.readable(p.m * d.size, p.k, a_rs, p.a_cs) &&
          p.writable(p.m * d.size, p.n, c_rs, p.c_cs)) {
        p.m *= d.size, p.a_rs = a_rs, p.c_rs = c_rs;
        p.batch.erase(p.batch.begin() + static_cast<int64_t>(i));
        return true;
      }
    }
    if (d.c == 0) {  // depth: column q of a[s] and row q of b[s] become index s * k + q
      int64_t a_cs = p.k == 1 ? d.a : p.a_cs, b_rs = p.k == 1 ? d.b : p.b_rs;
      if (d.a == p.k * a_cs && d.b == p.k * b_rs && p.readable(p.m, p.k * d.size, p.a_rs, a_cs) &&
          p.readable(p.k * d.size, p.n, b_rs, p.b_cs)) {
        p.k *= d.size, p.a_cs = a_cs, p.b_rs = b_rs;
        p.batch.erase(p.batch.begin() + static_cast<int64_t>(i));
        return true;
      }
    }
  }
  return false;
}

#ifdef STRATA_WITH_CUDA
CudaGemmOperand cuda_operand(const char* data, int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                             int64_t batch_stride) {
  DenseLayout layout = dense_layout(rows, cols, rs, cs);
  return CudaGemmOperand{data, layout.transposed, layout.leading_dimension, batch_stride};
}
#endif

// One kernel call: `count` products starting at the given element offsets, stepping by
// the strides of `step` (ignored when count == 1).
void run_kernel(const Product& p, int64_t a_offset, int64_t b_offset, int64_t c_offset, int64_t count,
                const BatchDim& step, float alpha, float beta) {
  size_t in_size = dtype_size(p.input_dtype), out_size = dtype_size(p.output_dtype);
  const char* a = p.a + a_offset * static_cast<int64_t>(in_size);
  const char* b = p.b + b_offset * static_cast<int64_t>(in_size);
  char* c = p.c + c_offset * static_cast<int64_t>(out_size);
  if (p.device.is_cpu()) {
    MatrixLayout a_layout{p.a_rs, p.a_cs, step.a}, b_layout{p.b_rs, p.b_cs, step.b}, c_layout{p.c_rs, p.c_cs, step.c};
    if (p.input_dtype == DType::Float32) {
      gemm_cpu<float>(p.m, p.n, p.k, count, alpha, reinterpret_cast<const float*>(a), a_layout,
                      reinterpret_cast<const float*>(b), b_layout, beta, reinterpret_cast<float*>(c), c_layout);
    } else {
      gemm_cpu<double>(p.m, p.n, p.k, count, alpha, reinterpret_cast<const double*>(a), a_layout,
                       reinterpret_cast<const double*>(b), b_layout, beta, reinterpret_cast<double*>(c), c_layout);
    }
    return;
  }
#ifdef STRATA_WITH_CUDA
  STRATA_CHECK(count <= INT32_MAX, "gemm: a batch of {} products is more than cuBLASLt takes at once", count);
  bool ok =
      gemm_cuda(p.input_dtype, p.output_dtype, p.m, p.n, p.k, count, alpha,
                cuda_operand(a, p.m, p.k, p.a_rs, p.a_cs, step.a), cuda_operand(b, p.k, p.n, p.b_rs, p.b_cs, step.b),
                beta, c, dense_layout(p.m, p.n, p.c_rs, p.c_cs).leading_dimension, step.c, tf32_allowed.load());
  STRATA_CHECK(ok, "gemm: {} inputs with a {} output are not supported on {}", dtype_name(p.input_dtype),
               dtype_name(p.output_dtype), p.device.str());
#endif
}

// Step 5 of the plan.
void run(const Product& p, float alpha, float beta) {
  int batched = -1;
  for (int i = static_cast<int>(p.batch.size()) - 1; i >= 0 && batched < 0; --i)
    if (p.batch[i].c != 0) batched = i;
  BatchDim step = batched >= 0 ? p.batch[batched] : BatchDim{1, 0, 0, 0};
  std::vector<BatchDim> loops;
  for (int i = 0; i < static_cast<int>(p.batch.size()); ++i)
    if (i != batched) loops.push_back(p.batch[i]);

  std::vector<int64_t> index(loops.size(), 0);
  int64_t a_offset = 0, b_offset = 0, c_offset = 0;
  while (true) {
    bool first_visit = true;  // of these c matrices: no summed dim has moved yet
    for (size_t i = 0; i < loops.size(); ++i)
      if (loops[i].c == 0 && index[i] != 0) first_visit = false;
    run_kernel(p, a_offset, b_offset, c_offset, step.size, step, alpha, first_visit ? beta : 1.0f);
    int i = static_cast<int>(loops.size()) - 1;
    for (; i >= 0; --i) {  // odometer step
      a_offset += loops[i].a, b_offset += loops[i].b, c_offset += loops[i].c;
      if (++index[i] < loops[i].size) break;
      a_offset -= loops[i].a * loops[i].size, b_offset -= loops[i].b * loops[i].size,
          c_offset -= loops[i].c * loops[i].size;
      index[i] = 0;
    }
    if (i < 0) break;
  }
}

void check_dtypes(const Tensor& a, const Tensor& b, const Tensor& c) {
  bool ok;
  if (a.device().is_cpu()) {
    ok = (a.dtype() == DType::Float32 || a.dtype() == DType::Float64) && b.dtype() == a.dtype() &&
         c.dtype() == a.dtype();
  } else {
    ok = (a.dtype() == DType::Float32 || a.dtype() == DType::BFloat16) && b.dtype() == a.dtype() &&
         (c.dtype() == DType::Float32 || c.dtype() == a.dtype());
  }
  STRATA_CHECK(ok,
               "gemm: dtypes of a {}, b {} and c {} are not supported (cpu: float32 or float64 throughout; cuda: "
               "float32 or bfloat16 inputs, a float32 or input-dtype output)",
               a.str(), b.str(), c.str());
}

}  // namespace

void gemm_batched(const Tensor& a_in, const Tensor& b_in, Tensor& c_in, float alpha, float beta) {
  STRATA_CHECK(a_in.defined() && b_in.defined() && c_in.defined(), "gemm: undefined tensor among a, b, c");
  STRATA_CHECK(a_in.device() == b_in.device() && a_in.device() == c_in.device(),
               "gemm: a {}, b {} and c {} are not on one device", a_in.str(), b_in.str(), c_in.str());
  const int rank = a_in.dim();
  STRATA_CHECK(rank >= 2 && b_in.dim() == rank && c_in.dim() == rank,
               "gemm: a {}, b {} and c {} must have one rank, at least 2", a_in.str(), b_in.str(), c_in.str());
  const Shape &as = a_in.shape(), &bs = b_in.shape(), &cs = c_in.shape();
  bool shapes_match = as[rank - 1] == bs[rank - 2] && cs[rank - 2] == as[rank - 2] && cs[rank - 1] == bs[rank - 1];
  for (int d = 0; d + 2 < rank; ++d) shapes_match = shapes_match && as[d] == cs[d] && bs[d] == cs[d];
  STRATA_CHECK(shapes_match, "gemm: shapes a {}, b {} and c {} do not make (..., m, k) @ (..., k, n) = (..., m, n)",
               shape_str(as), shape_str(bs), shape_str(cs));
  check_dtypes(a_in, b_in, c_in);
  if (c_in.numel() == 0) return;
  c_in.storage().bump_version();

  Tensor a = a_in, b = b_in, c = c_in;
  int64_t m = cs[rank - 2], n = cs[rank - 1], k = as[rank - 1];
  // Step 1: column-major c.
  if (n > 1 && c.strides()[rank - 1] != 1 && (m == 1 || c.strides()[rank - 2] == 1)) {
    Tensor a_transposed = transposed_view(a);
    a = transposed_view(b), b = a_transposed, c = transposed_view(c);
    std::swap(m, n);
  }
  if (k == 0) {  // an empty sum: c = beta * c
    if (beta == 1.0f) return;
    if (beta == 0.0f) {
      c.fill_(0.0);
      return;
    }
    // The CPU kernel scales c when k == 0; cuBLASLt is not asked to.
    STRATA_CHECK(c.device().is_cpu(), "gemm: k == 0 with beta {} (not 0 or 1) is not supported on {}", beta,
                 c.device().str());
  }
  if (a.device().is_cuda() && k > 0) {  // step 2
    if (!dense_matrices(a)) a = dense_copy(a);
    if (!dense_matrices(b)) b = dense_copy(b);
  }

  Product p{a.device(),
            a.dtype(),
            c.dtype(),
            m,
            n,
            k,
            static_cast<const char*>(a.data_ptr()),
            static_cast<const char*>(b.data_ptr()),
            static_cast<char*>(c.data_ptr()),
            a.strides()[rank - 2],
            a.strides()[rank - 1],
            b.strides()[rank - 2],
            b.strides()[rank - 1],
            c.strides()[rank - 2],
            c.strides()[rank - 1],
            {}};
  STRATA_CHECK(p.writable(m, n, p.c_rs, p.c_cs), "gemm: output {} has no unit stride in its matrices", c_in.str());
  for (int d = 0; d + 2 < rank; ++d)  // step 3
    if (cs[d] != 1) p.batch.push_back(BatchDim{cs[d], a.strides()[d], b.strides()[d], c.strides()[d]});
  merge_neighbours(p.batch);
  while (fold_one(p)) {  // step 4
  }
  run(p, alpha, beta);
}

void gemm(const Tensor& a, const Tensor& b, Tensor& c, bool transpose_a, bool transpose_b, float alpha, float beta) {
  STRATA_CHECK(a.defined() && b.defined() && c.defined() && a.dim() == 2 && b.dim() == 2 && c.dim() == 2,
               "gemm: expects 2-D a, b and c, got {}, {} and {}", a.str(), b.str(), c.str());
  gemm_batched(transpose_a ? transposed_view(a) : a, transpose_b ? transposed_view(b) : b, c, alpha, beta);
}

void gemm_cublas_reference(const Tensor& a_in, const Tensor& b_in, Tensor& c, bool transpose_a, bool transpose_b,
                           float alpha, float beta) {
  STRATA_CHECK(a_in.defined() && b_in.defined() && c.defined() && a_in.dim() == 2 && b_in.dim() == 2 && c.dim() == 2,
               "gemm_cublas_reference: expects 2-D a, b and c, got {}, {} and {}", a_in.str(), b_in.str(), c.str());
  STRATA_CHECK(a_in.device().is_cuda() && b_in.device() == a_in.device() && c.device() == a_in.device(),
               "gemm_cublas_reference: a {}, b {} and c {} must be on one CUDA device", a_in.str(), b_in.str(),
               c.str());
  check_dtypes(a_in, b_in, c);
  Tensor a = transpose_a ? transposed_view(a_in) : a_in, b = transpose_b ? transposed_view(b_in) : b_in;
  int64_t m = a.shape()[0], k = a.shape()[1], n = b.shape()[1];
  STRATA_CHECK(b.shape()[0] == k && c.shape()[0] == m && c.shape()[1] == n,
               "gemm_cublas_reference: shapes {}, {} and {} do not make (m, k) @ (k, n) = (m, n)", shape_str(a.shape()),
               shape_str(b.shape()), shape_str(c.shape()));
  STRATA_CHECK(m > 0 && n > 0 && k > 0 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX,
               "gemm_cublas_reference: sizes m {}, n {}, k {} must be positive and fit in int32", m, n, k);
#ifdef STRATA_WITH_CUDA
  DenseLayout a_layout = dense_layout(m, k, a.strides()[0], a.strides()[1]);
  DenseLayout b_layout = dense_layout(k, n, b.strides()[0], b.strides()[1]);
  DenseLayout c_layout = dense_layout(m, n, c.strides()[0], c.strides()[1]);
  STRATA_CHECK(a_layout.valid && b_layout.valid && c_layout.valid && !c_layout.transposed &&
                   a_layout.leading_dimension <= INT_MAX && b_layout.leading_dimension <= INT_MAX &&
                   c_layout.leading_dimension <= INT_MAX,
               "gemm_cublas_reference: a {}, b {} need a unit stride in one dim and c {} a unit column stride",
               a_in.str(), b_in.str(), c.str());
  c.storage().bump_version();
  gemm_cublas_reference_cuda(a.dtype(), c.dtype(), m, n, k, alpha,
                             CudaGemmOperand{a.data_ptr(), a_layout.transposed, a_layout.leading_dimension, 0},
                             CudaGemmOperand{b.data_ptr(), b_layout.transposed, b_layout.leading_dimension, 0}, beta,
                             c.data_ptr(), c_layout.leading_dimension, tf32_allowed.load());
#endif
}

void set_allow_tf32(bool allow) { tf32_allowed.store(allow); }
bool allow_tf32() { return tf32_allowed.load(); }

}  // namespace strata::kernels
