// The Mamba-1 mixer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
// State Spaces", 2023, sec. 3.4 and the reference mamba_simple.py), with two
// variants the experiments need: an LTI baseline and the bidirectional block of
// Vision Mamba (Zhu et al., 2024).
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
//   lti: delta, B and C no longer depend on the input. Each channel learns its own
//     step size (delta = softplus(dt_bias), dt_bias initialised as above) and its
//     own B, C (d_inner, N) (B = 1, C ~ N(0, 1), as S4D-real does with a real
//     diagonal A); x_proj and dt_proj are gone. The conv, the z gate and D stay, so
//     this is the "Mamba architecture with an LTI (S4-like) layer" baseline of the
//     paper's selective-copying experiment (Table 1). Parameters: B, C, dt_bias.
//   bidirectional: a second scan runs backwards (last position first) over the same
//     conv output and z gate, with its own x_proj_b, dt_proj_b, A_b_log, D_b (or
//     B_b, C_b, dt_bias_b with lti), initialised like the forward ones; the two
//     outputs are summed before out_proj (Vim's "bimamba v2"; Vim also gives the
//     backward direction its own conv over the flipped sequence, here both
//     directions read one causal conv). Position t then sees the whole sequence:
//     use it where targets are not the next input (the synthetic recall tasks,
//     classification), never for next-token language modelling.
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

// What one MambaBlock carries from one generated token to the next: constant in
// the sequence length.
struct MambaDecodingState {
  Tensor conv_state;  // (batch, d_inner, d_conv - 1), the activations' dtype: the last inputs of the conv
  Tensor ssm_state;   // (batch, d_inner, N), float32 (float64 for a float64 block): h_t
};

class MambaBlock : public Module {
 public:
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
  // The SSM parameters of one scan direction: the forward one, and for the
  // bidirectional block the backward one, whose names carry Vim's "_b".
  struct Direction {
    std::string A_log, D, B, C, dt_bias;      // parameter names; B, C, dt_bias with lti only
    std::shared_ptr<Linear> x_proj, dt_proj;  // null with lti
  };
  void add_direction(bool backward, Generator& generator);
  // What the scan of one direction reads besides x and z, for the conv output x
  // (batch, d_inner, L): delta before bias and softplus (batch, d_inner, L), A
  // (d_inner, N), B and C (batch, groups, N, L) with one group (S6) or d_inner (LTI).
  struct ScanInputs {
    Tensor delta, delta_bias, A, B, C;
  };
  ScanInputs scan_inputs(const Direction& direction, const Tensor& x) const;

  MambaOptions options_;
  int64_t dt_rank_;
  std::vector<Direction> directions_;
};

}  // namespace strata::nn
