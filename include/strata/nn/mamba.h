// The Mamba mixers: Mamba-1 (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
// Selective State Spaces", 2023, sec. 3.4 and the reference mamba_simple.py) with
// two variants the experiments need, an LTI baseline and the bidirectional block of
// Vision Mamba (Zhu et al., 2024); and Mamba-2 (further down).
//
// MambaBlock, for u (batch, L, d_model), d_inner = expand * d_model, R = dt_rank:
//   [x, z]    = in_proj(u)                             (batch, L, 2 d_inner), no bias
//   x         = silu(causal_depthwise_conv1d(x))       kernel d_conv, with bias
//   [dt, B, C] = x_proj(x)                             (batch, L, R + 2N), no bias; B, C
//                                                      shared by all channels
//   delta     = softplus(dt_proj(dt) + dt_bias)        (batch, L, d_inner)
//   y         = selective_scan(x, delta, A = -exp(A_log), B, C) + D x, times silu(z)
//   out       = out_proj(y)                            (batch, L, d_model), no bias
// The bias add, softplus, D skip and z gate are fused into the scan kernel.
//
// Initialisation (the paper's, from mamba_simple.py):
//   A_log[d, n] = log(n + 1): A = -(1, 2, ..., N) in every channel ("S4D-real");
//   D = 1;
//   dt_proj.weight ~ U(-R^-1/2, R^-1/2);
//   dt_proj.bias = softplus^-1(dt), dt = exp(U(log dt_min, log dt_max)) clamped to
//   >= dt_init_floor, so that softplus(bias) starts log-uniform in [dt_min, dt_max];
//   the Linear layers and the conv as PyTorch initialises them (U(+-1/sqrt(fan_in))).
// A_log, D and the dt bias (and the LTI B, C) are registered with weight_decay =
// false. Parameter names follow mamba_simple.py: in_proj.weight, conv1d.weight
// (d_inner, d_conv), conv1d.bias, x_proj.weight, dt_proj.weight, dt_proj.bias,
// A_log, D, out_proj.weight.
//
// Variants:
//   lti: delta, B and C no longer depend on the input, and nothing else changes:
//     each channel learns one step size (delta = softplus(dt_bias), dt_bias
//     initialised as above), B and C are learned vectors (N) shared by all channels
//     as S6's are (B = 1, C ~ N(0, 1)); x_proj and dt_proj are gone. The conv, the z
//     gate, D and the per-channel A stay, so this is the "Mamba architecture with an
//     LTI layer" baseline of the paper's selective-copying experiment (Table 1),
//     though weaker than S4/S4D, whose B and C are per channel. Parameters: B, C,
//     dt_bias.
//   bidirectional (Vim's "bimamba v2": Zhu et al. 2024, Algorithm 1, and
//     hustvl/Vim mamba_simple.py): in_proj, the z gate and out_proj stay shared, and
//     a backward direction with its own conv1d_b, x_proj_b, dt_proj_b, A_b_log and
//     D_b (or B_b, C_b, dt_bias_b with lti) runs the forward direction's computation
//     on the flipped sequence. With x the in_proj half before the conv and y_f the
//     forward direction's scan output (D skip and silu(z) gate included):
//       x_b = flip(silu(conv1d_b(flip(x))))        anti-causal: x_b at t reads x at t .. t + d_conv - 1
//       y_b = selective_scan(x_b, ..., reverse)    x_b's delta, B, C; last position first, gated by silu(z)
//       out = out_proj((y_f + y_b) / 2)
//     so y_b = flip(the forward direction's computation with the "_b" parameters on
//     flip(x) and flip(z)).
//     The halving is the reference's if_divide_out, on in the released Vim models
//     (Algorithm 1 writes the plain sum). The backward parameters are initialised
//     like the forward ones (conv as PyTorch does, S4D-real A, D = 1, the dt
//     initialisation above; Vim's code lets its model init zero dt_proj_b.bias,
//     softplus(0) = ln 2, which we do not copy) and registered right after them;
//     A_b_log, D_b and the dt bias without weight decay. Position t then sees the
//     whole sequence: use it where targets are not the next input (the synthetic
//     recall tasks, classification), never for next-token language modelling.
//
// Mamba2Block (Dao & Gu, "Transformers are SSMs", 2024; mamba2.py), for u (batch, L,
// d_model), d_inner = expand * d_model split into H = d_inner / P heads of P =
// head_dim channels, B and C shared by the heads of each of G groups:
//   [z, xBC, dt] = in_proj(u)               (batch, L, d_inner + (d_inner + 2 G N) + H), no bias
//   xBC       = silu(causal_depthwise_conv1d(xBC))   one conv over x, B and C together
//   [x, B, C] = xBC                          x (batch, L, H, P), B and C (batch, L, G, N)
//   y         = ssd(x, dt, A = -exp(A_log), B, C) with dt <- softplus(dt + dt_bias), D skip
//   out       = out_proj(gated_rms_norm(y, z))   RMSNorm(y * silu(z)) per group of d_inner / G
// A is a scalar per head. Initialisation as the reference: A_log = log(U(1, 16)) per
// head, D = 1, dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]
// (floored), norm weight 1; A_log, D, dt_bias and the norm weight without weight
// decay. Names: in_proj.weight, conv1d.weight, conv1d.bias, A_log, D, dt_bias,
// norm.weight, out_proj.weight. The step for generation updates the (batch, H, P, N)
// state with plain ops (the SSD op has no step kernel).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/core/rng.h"
#include "strata/nn/layers.h"
#include "strata/nn/module.h"

namespace strata::nn {

// Depthwise causal convolution over the length dim: each channel has its own
// kernel of kernel_size taps and a bias; weight (channels, kernel_size) and bias
// (channels) drawn from U(-1/sqrt(kernel_size), 1/sqrt(kernel_size)) as PyTorch's
// Conv1d(groups = channels) does. Wraps ops::causal_conv1d (kernel_size 2..8).
class CausalConv1d : public Module {
 public:
  CausalConv1d(int64_t channels, int64_t kernel_size, Generator& generator);
  // x (batch, channels, L) -> (batch, channels, L), followed by silu when asked.
  Tensor forward(const Tensor& x, bool silu) const;
  // One position for generation: x (batch, channels); conv_state (batch, channels,
  // kernel_size - 1), x's dtype, holds the previous inputs and is updated in place.
  // Not differentiable (run it under autograd::NoGradGuard).
  Tensor step(const Tensor& conv_state, const Tensor& x, bool silu) const;
  const Tensor& weight() const { return parameter("weight"); }  // (channels, kernel_size)
  const Tensor& bias() const { return parameter("bias"); }      // (channels)
  int64_t channels() const { return channels_; }
  int64_t kernel_size() const { return kernel_size_; }

 private:
  int64_t channels_, kernel_size_;
};

struct MambaOptions {
  int64_t d_model = 0;
  int64_t d_state = 16;  // N
  int64_t expand = 2;    // d_inner = expand * d_model
  int64_t d_conv = 4;
  int64_t dt_rank = 0;  // R; 0: ceil(d_model / 16)
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  bool lti = false;
  bool bidirectional = false;

  int64_t d_inner() const { return expand * d_model; }
  int64_t resolved_dt_rank() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }
  // Throws strata::Error naming the first invalid field.
  void validate() const;
};

// What one block carries from one generated token to the next, constant in the
// sequence length (the shapes are MambaBlock's; Mamba2Block's are given there).
struct MambaDecodingState {
  Tensor conv_state;  // (batch, d_inner, d_conv - 1), the activations' dtype: the last inputs of the conv
  Tensor ssm_state;   // (batch, d_inner, N), float32 (float64 for a float64 block): h_t
};

class MambaBlock : public Module {
 public:
  using Options = MambaOptions;
  MambaBlock(const MambaOptions& options, Generator& generator);

  // u (batch, L, d_model) -> (batch, L, d_model)
  Tensor forward(const Tensor& u) const;

  // Generation with the step kernels: zero states on the parameters' device, then
  // one position at a time, u_t (batch, d_model) -> (batch, d_model). Feeding
  // positions 0, 1, ... reproduces forward. Causal blocks only (not bidirectional);
  // not differentiable (run under autograd::NoGradGuard).
  MambaDecodingState start_decoding(int64_t batch) const;
  Tensor step(const Tensor& u_t, MambaDecodingState& state) const;

  const MambaOptions& options() const { return options_; }
  int64_t d_inner() const { return options_.d_inner(); }
  int64_t dt_rank() const { return dt_rank_; }

  std::shared_ptr<Linear> in_proj, out_proj;
  std::shared_ptr<CausalConv1d> conv1d;

 private:
  // The conv and SSM parameters of one scan direction: the forward one, and for
  // the bidirectional block the backward one, whose names carry Vim's "_b".
  struct Direction {
    bool backward = false;
    std::shared_ptr<CausalConv1d> conv1d;     // the block's conv1d, or conv1d_b
    std::string A_log, D, B, C, dt_bias;      // parameter names; B, C, dt_bias with lti only
    std::shared_ptr<Linear> x_proj, dt_proj;  // null with lti
  };
  void add_direction(bool backward, Generator& generator);
  // What the scan of one direction reads besides x and z, for the conv output x
  // (batch, d_inner, L): delta before bias and softplus (batch, d_inner, L), A
  // (d_inner, N), B and C (batch, 1, N, L).
  struct ScanInputs {
    Tensor delta, delta_bias, A, B, C;
  };
  ScanInputs scan_inputs(const Direction& direction, const Tensor& x) const;

  MambaOptions options_;
  int64_t dt_rank_;
  std::vector<Direction> directions_;
};

// Mamba-2's norm: RMSNorm(x * silu(z)) over groups of group_size channels, times
// a weight (ones, no weight decay). Wraps ops::gated_rms_norm.
class GatedRMSNorm : public Module {
 public:
  GatedRMSNorm(int64_t dim, int64_t group_size, double eps = 1e-5);
  // x, z (..., dim) -> (..., dim)
  Tensor forward(const Tensor& x, const Tensor& z) const;
  const Tensor& weight() const { return parameter("weight"); }

 private:
  int64_t dim_, group_size_;
  double eps_;
};

struct Mamba2Options {
  int64_t d_model = 0;
  int64_t d_state = 128;  // N
  int64_t expand = 2;     // d_inner = expand * d_model
  int64_t d_conv = 4;
  int64_t head_dim = 64;  // P; heads H = d_inner / P
  int64_t groups = 1;     // G: heads share B and C within a group
  int64_t chunk_size = 256;
  double A_init_min = 1.0, A_init_max = 16.0;  // A = -U(A_init_min, A_init_max) per head
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  double norm_eps = 1e-5;

  int64_t d_inner() const { return expand * d_model; }
  int64_t heads() const { return d_inner() / head_dim; }
  int64_t conv_channels() const { return d_inner() + 2 * groups * d_state; }
  // Throws strata::Error naming the first invalid field.
  void validate() const;
};

class Mamba2Block : public Module {
 public:
  using Options = Mamba2Options;
  Mamba2Block(const Mamba2Options& options, Generator& generator);

  // u (batch, L, d_model) -> (batch, L, d_model)
  Tensor forward(const Tensor& u) const;

  // Generation, as MambaBlock's: conv_state (batch, d_inner + 2 G N, d_conv - 1) and
  // ssm_state (batch, H, P, N), float32 (float64 for a float64 block). step replaces
  // ssm_state by the next state. Not differentiable (run under autograd::NoGradGuard).
  MambaDecodingState start_decoding(int64_t batch) const;
  Tensor step(const Tensor& u_t, MambaDecodingState& state) const;

  const Mamba2Options& options() const { return options_; }

  std::shared_ptr<Linear> in_proj, out_proj;
  std::shared_ptr<CausalConv1d> conv1d;
  std::shared_ptr<GatedRMSNorm> norm;

 private:
  Mamba2Options options_;
};

}  // namespace strata::nn
