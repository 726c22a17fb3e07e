#include "strata/nn/mamba.h"

#include <cmath>
#include <vector>

#include "strata/nn/init.h"
#include "strata/ops/ops.h"
#include "strata/ops/ssd.h"
#include "strata/ops/ssm.h"

namespace strata::nn {

CausalConv1d::CausalConv1d(int64_t channels, int64_t kernel_size, Generator& generator)
    : channels_(channels), kernel_size_(kernel_size) {
  STRATA_CHECK(channels > 0 && kernel_size >= 2 && kernel_size <= 8,
               "CausalConv1d: expected channels > 0 and kernel_size in 2..8, got {} and {}", channels, kernel_size);
  const double bound = 1.0 / std::sqrt(static_cast<double>(kernel_size));
  Tensor weight = Tensor::empty({channels, kernel_size});
  init::uniform_(weight, -bound, bound, generator);
  register_parameter("weight", weight, true);
  Tensor bias = Tensor::empty({channels});
  init::uniform_(bias, -bound, bound, generator);
  register_parameter("bias", bias, false);
}

Tensor CausalConv1d::forward(const Tensor& x, bool silu) const { return ops::causal_conv1d(x, weight(), bias(), silu); }

Tensor CausalConv1d::step(const Tensor& conv_state, const Tensor& x, bool silu) const {
  return ops::causal_conv1d_step(conv_state, x, weight(), bias(), silu);
}

void MambaOptions::validate() const {
  STRATA_CHECK(d_model > 0, "MambaBlock: d_model must be positive, got {}", d_model);
  STRATA_CHECK(d_state > 0, "MambaBlock: d_state must be positive, got {}", d_state);
  STRATA_CHECK(expand > 0, "MambaBlock: expand must be positive, got {}", expand);
  STRATA_CHECK(d_conv >= 2 && d_conv <= 8, "MambaBlock: d_conv must be in 2..8, got {}", d_conv);
  STRATA_CHECK(dt_rank >= 0, "MambaBlock: dt_rank must be positive (or 0 for ceil(d_model / 16)), got {}", dt_rank);
  STRATA_CHECK(dt_min > 0 && dt_min <= dt_max, "MambaBlock: need 0 < dt_min <= dt_max, got dt_min {} and dt_max {}",
               dt_min, dt_max);
  STRATA_CHECK(dt_init_floor > 0, "MambaBlock: dt_init_floor must be positive, got {}", dt_init_floor);
}

namespace {

// softplus^-1(dt) for `count` dt drawn log-uniformly in [dt_min, dt_max] (clamped
// below by the floor): softplus(bias) then starts at those step sizes.
Tensor initial_dt_bias(int64_t count, double dt_min, double dt_max, double dt_init_floor, Generator& generator) {
  Tensor log_dt = rand_uniform({count}, std::log(dt_min), std::log(dt_max), DType::Float64, Device::cpu(), generator);
  std::vector<double> bias = log_dt.to_vector<double>();
  for (double& value : bias) {
    const double dt = std::max(std::exp(value), dt_init_floor);
    value = dt + std::log(-std::expm1(-dt));  // softplus^-1(dt) = log(exp(dt) - 1), written to stay accurate for small dt
  }
  return Tensor::from_vector(bias, {count}).to(DType::Float32);
}

Tensor initial_dt_bias(const MambaOptions& o, Generator& generator) {
  return initial_dt_bias(o.d_inner(), o.dt_min, o.dt_max, o.dt_init_floor, generator);
}

}  // namespace

MambaBlock::MambaBlock(const MambaOptions& options, Generator& generator)
    : options_(options), dt_rank_(options.resolved_dt_rank()) {
  options_.validate();
  const int64_t d_inner = options_.d_inner();
  in_proj = register_module("in_proj", std::make_shared<Linear>(options_.d_model, 2 * d_inner, false, generator));
  conv1d = register_module("conv1d", std::make_shared<CausalConv1d>(d_inner, options_.d_conv, generator));
  add_direction(false, generator);
  if (options_.bidirectional) add_direction(true, generator);
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_inner, options_.d_model, false, generator));
}

void MambaBlock::add_direction(bool backward, Generator& generator) {
  // Vim's names for the backward direction: A_b_log, D_b, x_proj_b, dt_proj_b.
  auto name = [backward](const std::string& base) {
    if (!backward) return base;
    return base == "A_log" ? std::string("A_b_log") : base + "_b";
  };
  const int64_t d_inner = options_.d_inner(), N = options_.d_state;
  Direction d;
  d.backward = backward;
  // The forward direction reads the block's conv1d (registered before it); the
  // backward one has its own, drawn before its projections as in Vim.
  d.conv1d = backward ? register_module("conv1d_b", std::make_shared<CausalConv1d>(d_inner, options_.d_conv, generator))
                      : conv1d;
  if (options_.lti) {
    d.B = name("B");
    d.C = name("C");
    d.dt_bias = name("dt_bias");
    Tensor C = Tensor::empty({N});
    init::normal_(C, 0.0, 1.0, generator);
    register_parameter(d.B, Tensor::ones({N}), false);
    register_parameter(d.C, C, false);
    register_parameter(d.dt_bias, initial_dt_bias(options_, generator), false);
  } else {
    d.x_proj = register_module(name("x_proj"), std::make_shared<Linear>(d_inner, dt_rank_ + 2 * N, false, generator));
    d.dt_proj = register_module(name("dt_proj"), std::make_shared<Linear>(dt_rank_, d_inner, true, generator));
    Tensor weight = d.dt_proj->weight(), bias = d.dt_proj->bias();
    const double bound = 1.0 / std::sqrt(static_cast<double>(dt_rank_));
    init::uniform_(weight, -bound, bound, generator);
    bias.copy_(initial_dt_bias(options_, generator));  // a Linear bias: already without weight decay
  }
  // A_log[d, n] = log(n + 1): A = -(1, ..., N) in every channel.
  std::vector<float> a_log(static_cast<size_t>(d_inner * N));
  for (int64_t c = 0; c < d_inner; ++c)
    for (int64_t n = 0; n < N; ++n) a_log[c * N + n] = std::log(static_cast<float>(n + 1));
  d.A_log = name("A_log");
  d.D = name("D");
  register_parameter(d.A_log, Tensor::from_vector(a_log, {d_inner, N}), false);
  register_parameter(d.D, Tensor::ones({d_inner}), false);
  directions_.push_back(d);
}

MambaBlock::ScanInputs MambaBlock::scan_inputs(const Direction& d, const Tensor& x) const {
  const int64_t batch = x.size(0), length = x.size(2), N = options_.d_state;
  ScanInputs s;
  s.A = ops::neg(ops::exp(parameter(d.A_log)));
  if (options_.lti) {
    // One group, as S6 has, with the same B and C at every position of every sequence.
    auto everywhere = [&](const Tensor& p) {
      return ops::expand(ops::reshape(p, {1, 1, N, 1}), {batch, 1, N, length});
    };
    s.delta = Tensor::zeros(x.shape(), x.dtype(), x.device());
    s.delta_bias = parameter(d.dt_bias);
    s.B = everywhere(parameter(d.B));
    s.C = everywhere(parameter(d.C));
    return s;
  }
  // Products written channel-first, W (out, in) @ x (batch, in, L), so that delta
  // comes out in the scan's (batch, d_inner, L) layout without a transposed copy.
  Tensor dt_B_C = ops::matmul(d.x_proj->weight(), x);  // (batch, R + 2N, L)
  s.delta = ops::matmul(d.dt_proj->weight(), ops::slice(dt_B_C, 1, 0, dt_rank_));
  s.delta_bias = d.dt_proj->bias();
  s.B = ops::unsqueeze(ops::slice(dt_B_C, 1, dt_rank_, dt_rank_ + N), 1);  // (batch, 1, N, L): one group
  s.C = ops::unsqueeze(ops::slice(dt_B_C, 1, dt_rank_ + N, dt_rank_ + 2 * N), 1);
  return s;
}

namespace {

// a with its dim `dim` in reverse order (a copy).
Tensor flip(const Tensor& a, int dim) {
  const int64_t length = a.size(dim);
  std::vector<int64_t> reversed(static_cast<size_t>(length));
  for (int64_t t = 0; t < length; ++t) reversed[t] = length - 1 - t;
  return ops::index_select(a, dim, Tensor::from_vector(reversed, {length}, a.device()));
}

}  // namespace

Tensor MambaBlock::forward(const Tensor& u) const {
  STRATA_CHECK(u.defined() && u.dim() == 3 && u.size(2) == options_.d_model,
               "MambaBlock: expected u (batch, length, {}), got {}", options_.d_model, u.defined() ? u.str() : "none");
  // in_proj's two halves as separate products from u^T (batch, d_model, L): x and z
  // come out contiguous in the (batch, d_inner, L) layout the conv and scan read.
  const int64_t d_inner = options_.d_inner();
  const Tensor& w_in = in_proj->weight();  // (2 d_inner, d_model)
  Tensor u_t = ops::transpose(u, 1, 2);
  Tensor x_in = ops::matmul(ops::slice(w_in, 0, 0, d_inner), u_t);  // (batch, d_inner, L), before the conv
  Tensor z = ops::matmul(ops::slice(w_in, 0, d_inner, 2 * d_inner), u_t);
  Tensor y;
  for (const Direction& d : directions_) {
    // The backward conv runs over the flipped sequence; flipped back, its output is
    // anti-causal, and the reversed scan over it (with z as it is) is the forward
    // computation on the flipped sequence, flipped back.
    Tensor x = d.backward ? flip(d.conv1d->forward(flip(x_in, 2), true), 2) : d.conv1d->forward(x_in, true);
    ScanInputs s = scan_inputs(d, x);
    ops::SelectiveScanOptions o;
    o.D = parameter(d.D);
    o.z = z;
    o.delta_bias = s.delta_bias;
    o.delta_softplus = true;
    o.reverse = d.backward;
    Tensor y_d = ops::selective_scan(x, s.delta, s.A, s.B, s.C, o).y;  // (batch, d_inner, L)
    // Vim's if_divide_out: the mean of the two directions.
    y = y.defined() ? ops::mul(ops::add(y, y_d), 0.5) : y_d;
  }
  // y^T W_out^T: (batch, L, d_inner) x (d_inner, d_model), both transposed views.
  return ops::matmul(ops::transpose(y, 1, 2), ops::transpose(out_proj->weight(), 0, 1));
}

MambaDecodingState MambaBlock::start_decoding(int64_t batch) const {
  STRATA_CHECK(!options_.bidirectional,
               "MambaBlock: a bidirectional block reads future positions and cannot decode token by token");
  STRATA_CHECK(batch > 0, "MambaBlock::start_decoding: batch must be positive, got {}", batch);
  const Tensor& weight = in_proj->weight();
  const DType state_dtype = weight.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  return {Tensor::zeros({batch, options_.d_inner(), options_.d_conv - 1}, weight.dtype(), weight.device()),
          Tensor::zeros({batch, options_.d_inner(), options_.d_state}, state_dtype, weight.device())};
}

Tensor MambaBlock::step(const Tensor& u_t, MambaDecodingState& state) const {
  STRATA_CHECK(!options_.bidirectional,
               "MambaBlock: a bidirectional block reads future positions and cannot decode token by token");
  STRATA_CHECK(u_t.defined() && u_t.dim() == 2 && u_t.size(1) == options_.d_model,
               "MambaBlock::step: expected u_t (batch, {}), got {}", options_.d_model,
               u_t.defined() ? u_t.str() : "none");
  const int64_t d_inner = options_.d_inner();
  std::vector<Tensor> x_z = ops::split(in_proj->forward(u_t), {d_inner, d_inner}, -1);  // 2 x (batch, d_inner)
  Tensor x = conv1d->step(state.conv_state, x_z[0], true);
  // The SSM inputs of a length-1 sequence, then without their length dim.
  ScanInputs s = scan_inputs(directions_[0], ops::unsqueeze(x, 2));
  auto at_position = [](const Tensor& t) { return ops::squeeze(t, -1); };
  ops::SelectiveScanStepOptions o;
  o.D = parameter(directions_[0].D);
  o.z = x_z[1];
  o.delta_bias = s.delta_bias;
  o.delta_softplus = true;
  Tensor y = ops::selective_scan_step(state.ssm_state, x, at_position(s.delta), s.A, at_position(s.B),
                                      at_position(s.C), o);
  return out_proj->forward(y);
}

// ---- Mamba-2 ----------------------------------------------------------------------

GatedRMSNorm::GatedRMSNorm(int64_t dim, int64_t group_size, double eps)
    : dim_(dim), group_size_(group_size), eps_(eps) {
  STRATA_CHECK(dim > 0 && group_size > 0 && dim % group_size == 0 && eps > 0,
               "GatedRMSNorm: need dim > 0 divisible by group_size > 0 and eps > 0, got dim {}, group_size {}, eps {}",
               dim, group_size, eps);
  register_parameter("weight", Tensor::ones({dim}), false);
}

Tensor GatedRMSNorm::forward(const Tensor& x, const Tensor& z) const {
  return ops::gated_rms_norm(x, z, weight(), eps_, group_size_);
}

void Mamba2Options::validate() const {
  STRATA_CHECK(d_model > 0 && d_state > 0 && expand > 0 && head_dim > 0 && groups > 0 && chunk_size > 0,
               "Mamba2Block: d_model, d_state, expand, head_dim, groups and chunk_size must be positive, got {}, {}, "
               "{}, {}, {} and {}",
               d_model, d_state, expand, head_dim, groups, chunk_size);
  STRATA_CHECK(d_conv >= 2 && d_conv <= 8, "Mamba2Block: d_conv must be in 2..8, got {}", d_conv);
  STRATA_CHECK(d_inner() % head_dim == 0, "Mamba2Block: d_inner {} (expand {} x d_model {}) is not a multiple of head_dim {}",
               d_inner(), expand, d_model, head_dim);
  STRATA_CHECK(heads() % groups == 0, "Mamba2Block: the {} heads are not divisible into {} groups", heads(), groups);
  STRATA_CHECK(A_init_min > 0 && A_init_min <= A_init_max,
               "Mamba2Block: need 0 < A_init_min <= A_init_max, got {} and {}", A_init_min, A_init_max);
  STRATA_CHECK(dt_min > 0 && dt_min <= dt_max, "Mamba2Block: need 0 < dt_min <= dt_max, got dt_min {} and dt_max {}",
               dt_min, dt_max);
  STRATA_CHECK(dt_init_floor > 0 && norm_eps > 0, "Mamba2Block: dt_init_floor and norm_eps must be positive");
}

Mamba2Block::Mamba2Block(const Mamba2Options& options, Generator& generator) : options_(options) {
  options_.validate();
  const int64_t d_inner = options_.d_inner(), heads = options_.heads();
  in_proj = register_module("in_proj", std::make_shared<Linear>(options_.d_model,
                                                                d_inner + options_.conv_channels() + heads, false,
                                                                generator));
  conv1d = register_module("conv1d", std::make_shared<CausalConv1d>(options_.conv_channels(), options_.d_conv, generator));
  // A = -U(A_init_min, A_init_max) per head.
  Tensor A = rand_uniform({heads}, options_.A_init_min, options_.A_init_max, DType::Float64, Device::cpu(), generator);
  register_parameter("A_log", ops::log(A).to(DType::Float32), false);
  register_parameter("D", Tensor::ones({heads}), false);
  register_parameter("dt_bias",
                     initial_dt_bias(heads, options_.dt_min, options_.dt_max, options_.dt_init_floor, generator), false);
  norm = register_module("norm",
                         std::make_shared<GatedRMSNorm>(d_inner, d_inner / options_.groups, options_.norm_eps));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_inner, options_.d_model, false, generator));
}

Tensor Mamba2Block::forward(const Tensor& u) const {
  const Mamba2Options& o = options_;
  STRATA_CHECK(u.defined() && u.dim() == 3 && u.size(2) == o.d_model,
               "Mamba2Block: expected u (batch, length, {}), got {}", o.d_model, u.defined() ? u.str() : "none");
  const int64_t batch = u.size(0), length = u.size(1), d_inner = o.d_inner(), heads = o.heads(),
                group_width = o.groups * o.d_state;
  // (batch, L, d_inner), (batch, L, d_inner + 2 G N), (batch, L, H)
  std::vector<Tensor> z_xBC_dt = ops::split(in_proj->forward(u), {d_inner, o.conv_channels(), heads}, -1);
  Tensor xBC = ops::transpose(conv1d->forward(ops::transpose(z_xBC_dt[1], 1, 2), true), 1, 2);
  std::vector<Tensor> x_B_C = ops::split(xBC, {d_inner, group_width, group_width}, -1);
  ops::SsdOptions ssd;
  ssd.D = parameter("D");
  ssd.dt_bias = parameter("dt_bias");
  ssd.dt_softplus = true;
  ssd.chunk_size = o.chunk_size;
  Tensor y = ops::ssd_chunked(ops::reshape(x_B_C[0], {batch, length, heads, o.head_dim}), z_xBC_dt[2],
                              ops::neg(ops::exp(parameter("A_log"))),
                              ops::reshape(x_B_C[1], {batch, length, o.groups, o.d_state}),
                              ops::reshape(x_B_C[2], {batch, length, o.groups, o.d_state}), ssd)
                 .y;  // (batch, L, H, P)
  return out_proj->forward(norm->forward(ops::reshape(y, {batch, length, d_inner}), z_xBC_dt[0]));
}

MambaDecodingState Mamba2Block::start_decoding(int64_t batch) const {
  STRATA_CHECK(batch > 0, "Mamba2Block::start_decoding: batch must be positive, got {}", batch);
  const Tensor& weight = in_proj->weight();
  const DType state_dtype = weight.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  return {Tensor::zeros({batch, options_.conv_channels(), options_.d_conv - 1}, weight.dtype(), weight.device()),
          Tensor::zeros({batch, options_.heads(), options_.head_dim, options_.d_state}, state_dtype, weight.device())};
}

Tensor Mamba2Block::step(const Tensor& u_t, MambaDecodingState& state) const {
  const Mamba2Options& o = options_;
  STRATA_CHECK(u_t.defined() && u_t.dim() == 2 && u_t.size(1) == o.d_model,
               "Mamba2Block::step: expected u_t (batch, {}), got {}", o.d_model, u_t.defined() ? u_t.str() : "none");
  const int64_t batch = u_t.size(0), d_inner = o.d_inner(), heads = o.heads(), group_width = o.groups * o.d_state;
  std::vector<Tensor> z_xBC_dt = ops::split(in_proj->forward(u_t), {d_inner, o.conv_channels(), heads}, -1);
  Tensor xBC = conv1d->step(state.conv_state, z_xBC_dt[1], true);  // (batch, d_inner + 2 G N)
  std::vector<Tensor> x_B_C = ops::split(xBC, {d_inner, group_width, group_width}, -1);
  const DType state_dtype = state.ssm_state.dtype();
  Tensor x = ops::cast(ops::reshape(x_B_C[0], {batch, heads, o.head_dim}), state_dtype);  // (batch, H, P)
  // Each head reads its group's B and C: (batch, G, N) -> (batch, H, N).
  std::vector<int64_t> group_of_head(heads);
  for (int64_t h = 0; h < heads; ++h) group_of_head[h] = h / (heads / o.groups);
  Tensor head_groups = Tensor::from_vector(group_of_head, {heads}, u_t.device());
  auto per_head = [&](const Tensor& t) {
    return ops::cast(ops::index_select(ops::reshape(t, {batch, o.groups, o.d_state}), 1, head_groups), state_dtype);
  };
  Tensor B = per_head(x_B_C[1]), C = per_head(x_B_C[2]);
  Tensor dt = ops::softplus(ops::add(ops::cast(z_xBC_dt[2], state_dtype), ops::cast(parameter("dt_bias"), state_dtype)));
  Tensor A = ops::neg(ops::exp(ops::cast(parameter("A_log"), state_dtype)));
  // S_t = exp(dt A) S_{t-1} + dt x B^T;  y = S_t C + D x
  Tensor decay = ops::exp(ops::mul(dt, A));  // (batch, H)
  Tensor input = ops::mul(ops::unsqueeze(ops::mul(ops::unsqueeze(dt, 2), x), 3), ops::unsqueeze(B, 2));
  state.ssm_state = ops::add(ops::mul(state.ssm_state, ops::unsqueeze(ops::unsqueeze(decay, 2), 3)), input);
  Tensor y = ops::squeeze(ops::matmul(state.ssm_state, ops::unsqueeze(C, 3)), 3);  // (batch, H, P)
  y = ops::add(y, ops::mul(ops::unsqueeze(ops::cast(parameter("D"), state_dtype), 1), x));
  y = ops::cast(ops::reshape(y, {batch, d_inner}), z_xBC_dt[0].dtype());
  return out_proj->forward(norm->forward(y, z_xBC_dt[0]));
}

}  // namespace strata::nn
