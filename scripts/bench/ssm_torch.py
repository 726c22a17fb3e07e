#!/usr/bin/env python3
"""The state-space kernels of `strata bench ssm` in PyTorch, row by row beside Strata's.

Development aid (Strata never imports it). Same shapes, defaults, input ranges, byte
counts and line format as `strata bench ssm` (src/cli/bench_ssm.cpp): time, GB/s of
the bytes the op must move against a float32 copy measured in the same run, and
Mtok/s (batch L / time). Each row's first 58 characters are the Strata line's name;
the end of the line says which PyTorch formulation it is and marks the fastest.

  - selective_scan (Mamba-1 / S6, the equations of strata/ops/ssm.h: softplus on
    delta + delta_bias, D skip, silu(z) gate, B and C shared by the channels):
      sequential         a Python loop over L, each step one fused multiply-add over
                         (batch, d_inner, N), exp(delta A) and delta B u precomputed
                         for every position (the classic reference);
      chunked log-space  parallel over L: inside chunks of --scan-chunk positions,
                         h_t = sum_s exp(Lambda_t - Lambda_s) x_s as two logcumsumexp
                         (positive and negative x_s apart), Lambda the cumulative log
                         decay from the chunk's start; the state entering each chunk
                         passed by a short loop over chunks. Needs several float32
                         (batch, d_inner, L, N) tensors: rows it does not fit in
                         memory print "out of memory";
      compiled           (--compile, default on CUDA) the sequential recurrence in
                         blocks of 16 positions, each block one torch.compile'd graph
                         (exp, delta B u, the update and C h fused; the states of a
                         block never reach memory in the forward pass). The graph
                         does not depend on L; it is compiled once per (batch,
                         d_inner, N) and grad mode, 8 times at the default sizes
                         (--no-compile skips them). A failed compilation is
                         reported and the formulation dropped.
  - causal_conv1d (kernel 4, bias, SiLU): F.conv1d with groups = channels and
    kernel_size - 1 positions of left padding, then F.silu; in the activations'
    dtype (cuDNN accumulates in float32), the float32 weights cast on the tape.
  - ssd_chunked (Mamba-2's SSD, the equations of strata/ops/ssd.h with one group):
    written from the paper's chunked algorithm: inside a chunk Y_diag = (L o C B^T) X
    with L[i, j] = exp(sum_{k=j+1..i} dt_k A); each chunk's final state from its own
    inputs; the states entering the chunks by the same masked product over chunks;
    their contribution Y_off = C exp(cumsum dt A) S_in; Y = Y_diag + Y_off + D x.

Activations (u, delta, z, B, C, x, dt) are bfloat16 on CUDA and float32 on the CPU,
as in Strata; parameters (A, D, biases, conv weights) float32. The scans and SSD
compute in float32 from the upcast inputs (matmuls on TF32 tensor cores on CUDA),
casting y back to the activations' dtype; every cast is inside the timed passes.
The forward pass is timed without autograd, the backward pass by replaying one
recorded graph (retain_graph) with the input grads cleared, as Strata times them;
each number is the median over the iterations of CUDA-event (CPU: wall-clock) times.

--check (on the chosen device) first compares, in float64, every formulation with a
per-position recurrence written from the equations (the output and every input's
gradient; odd sizes, lengths no multiple of the chunks), and the float32 parallel
scan with the float64 sequential one; it prints the largest differences and stops
on a mismatch. With --strata BINARY it compares Strata's ops too, run by `strata op
selective_scan | ssd | causal_conv1d` (on the CPU, float64) on the same inputs through
HDF5 files (needs h5py).

Run with plain python3 on the GPU machine, e.g.
  strata bench ssm | tee strata_ssm.txt
  python3 scripts/bench/ssm_torch.py --strata-log strata_ssm.txt
On a CPU (small default sizes): python3 scripts/bench/ssm_torch.py --device cpu --check
  [--strata build/strata]
"""
import argparse
import math
import os
import re
import statistics
import subprocess
import tempfile
import time

import torch
import torch._dynamo.config
import torch._functorch.config
import torch.nn.functional as F

import torch_timing

NAME_WIDTH = 58  # the name column of `strata bench ssm`
COMPILED_BLOCK = 16  # positions per torch.compile'd block of the compiled scan
# log|x| of the entries a logcumsumexp must ignore: exp() of it, plus any cumulative
# log decay of a chunk, is 0 even in float64, and unlike -inf it keeps the gradients finite.
LOG_OF_NOTHING = -1.0e4


def time_ms(work, iterations, warmup, device):
    """Median milliseconds of one work() call: CUDA events around each call on the GPU
    (for a host-bound Python loop that includes the GPU's waits for the host), the wall
    clock on the CPU. Strata reports the mean of a loop; for steady kernels they agree."""
    for _ in range(warmup):
        work()
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(iterations)]
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            work()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            work()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---- selective scan ----------------------------------------------------------------
# u, delta, z: (batch, d_inner, L); B, C: (batch, 1, N, L); A: (d_inner, N);
# D, delta_bias: (d_inner). The formulations share the prologue and the epilogue and
# differ in how they run h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t over positions.

def wide(tensor):
    """float32, or float64 for float64 inputs (the --check runs)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def scan_prologue(u, delta, B, C, delta_bias):
    """Position-major float32 (float64) operands: dt, dt u (L, batch, d_inner); B, C (L, batch, N)."""
    dt = F.softplus(wide(delta) + wide(delta_bias).unsqueeze(-1))
    dt_by_position = dt.permute(2, 0, 1).contiguous()
    dt_u = dt_by_position * wide(u).permute(2, 0, 1)
    B_by_position = wide(B[:, 0]).permute(2, 0, 1).contiguous()
    C_by_position = wide(C[:, 0]).permute(2, 0, 1).contiguous()
    return dt_by_position, dt_u, B_by_position, C_by_position


def scan_epilogue(state_readout, u, z, D):
    """state_readout (L, batch, d_inner) = sum_n C h -> y = (that + D u) silu(z), u's dtype."""
    y = (state_readout.permute(1, 2, 0) + wide(D).unsqueeze(-1) * wide(u)) * F.silu(wide(z))
    return y.to(u.dtype)


def sequential_scan(u, delta, A, B, C, D, z, delta_bias):
    dt, dt_u, B_l, C_l = scan_prologue(u, delta, B, C, delta_bias)
    decay = torch.exp(dt.unsqueeze(-1) * wide(A))  # (L, batch, d_inner, N)
    step_input = dt_u.unsqueeze(-1) * B_l.unsqueeze(2)  # (L, batch, d_inner, N)
    # unbind, not indexing in the loop: one backward node that stacks the steps' grads,
    # where L index nodes would each write a zero tensor of the whole size.
    state = torch.zeros_like(step_input[0])
    states = []
    for input_t, decay_t in zip(step_input.unbind(0), decay.unbind(0)):
        state = torch.addcmul(input_t, decay_t, state)
        states.append(state)
    readout = torch.einsum("lbdn,lbn->lbd", torch.stack(states), C_l)
    return scan_epilogue(readout, u, z, D)


def pad_positions(tensor, multiple):
    """Zeros after the last position (dim 0) up to a multiple: a zero log decay and a
    zero input leave the state as it was, and the padded outputs are cut off."""
    missing = -tensor.shape[0] % multiple
    return torch.cat([tensor, tensor.new_zeros((missing,) + tensor.shape[1:])]) if missing else tensor


def chunked_logspace_scan(u, delta, A, B, C, D, z, delta_bias, chunk):
    dt, dt_u, B_l, C_l = scan_prologue(u, delta, B, C, delta_bias)
    length, batch, d_inner = dt.shape
    d_state = A.shape[-1]
    chunks = -(-length // chunk)
    by_chunk = (chunks, chunk, batch, d_inner, d_state)
    log_decay = (pad_positions(dt, chunk).unsqueeze(-1) * wide(A)).reshape(by_chunk)
    step_input = (pad_positions(dt_u, chunk).unsqueeze(-1) * pad_positions(B_l, chunk).unsqueeze(2)).reshape(by_chunk)
    # Lambda_t: the log decay from the chunk's start through t. Its size, and so the
    # rounding of Lambda_t - Lambda_s below, grows with the chunk rather than with L.
    cumulative = log_decay.cumsum(dim=1)
    # h_t = sum_{s <= t} exp(Lambda_t - Lambda_s) x_s, inside the chunk, from a zero state;
    # logcumsumexp needs positive terms, so the positive and the negative x_s go apart.
    log_magnitude = torch.log(step_input.abs().clamp_min(torch.finfo(step_input.dtype).tiny)) - cumulative
    nothing = torch.tensor(LOG_OF_NOTHING, dtype=log_magnitude.dtype, device=log_magnitude.device)
    positive = torch.logcumsumexp(torch.where(step_input > 0, log_magnitude, nothing), dim=1)
    negative = torch.logcumsumexp(torch.where(step_input < 0, log_magnitude, nothing), dim=1)
    local_states = torch.exp(cumulative + positive) - torch.exp(cumulative + negative)
    # The state entering each chunk: (chunks, batch, d_inner, N), one step per chunk.
    chunk_decay, chunk_final = torch.exp(cumulative[:, -1]), local_states[:, -1]
    entering = [torch.zeros_like(chunk_final[0])]
    for final, decay in list(zip(chunk_final.unbind(0), chunk_decay.unbind(0)))[:-1]:
        entering.append(torch.addcmul(final, decay, entering[-1]))
    states = local_states + torch.exp(cumulative) * torch.stack(entering).unsqueeze(1)
    C_chunks = pad_positions(C_l, chunk).reshape(chunks, chunk, batch, d_state)
    readout = torch.einsum("ctbdn,ctbn->ctbd", states, C_chunks).reshape(chunks * chunk, batch, d_inner)[:length]
    return scan_epilogue(readout, u, z, D)


def scan_block(state, dt, dt_u, B_l, C_l, A):
    """COMPILED_BLOCK positions of the recurrence, unrolled: dt, dt_u (positions, batch,
    d_inner), B_l, C_l (positions, batch, N), state (batch, d_inner, N) -> readout
    (positions, batch, d_inner) and the state after the block."""
    readouts = []
    for t in range(dt.shape[0]):
        state = torch.exp(dt[t].unsqueeze(-1) * A) * state + dt_u[t].unsqueeze(-1) * B_l[t].unsqueeze(1)
        readouts.append((state * C_l[t].unsqueeze(1)).sum(-1))
    return torch.stack(readouts), state


def make_compiled_scan():
    # The bench replays the backward pass with retain_graph, which compiled graphs that
    # donate their saved buffers to the backward refuse.
    torch._functorch.config.donated_buffer = False
    # One graph per block shape (batch, d_inner, N) and grad mode: the default sizes
    # need 8, the default limit, past which torch would quietly run the block eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled_block = torch.compile(scan_block, fullgraph=True, dynamic=False)

    def compiled_scan(u, delta, A, B, C, D, z, delta_bias):
        dt, dt_u, B_l, C_l = scan_prologue(u, delta, B, C, delta_bias)
        length = dt.shape[0]
        state = dt.new_zeros(dt.shape[1:] + A.shape[-1:])
        readouts = []
        # split, not slicing in the loop (see sequential_scan's unbind).
        blocks = (pad_positions(t, COMPILED_BLOCK).split(COMPILED_BLOCK) for t in (dt, dt_u, B_l, C_l))
        for dt_block, dt_u_block, B_block, C_block in zip(*blocks):
            readout, state = compiled_block(state, dt_block, dt_u_block, B_block, C_block, wide(A))
            readouts.append(readout)
        return scan_epilogue(torch.cat(readouts)[:length], u, z, D)

    return compiled_scan


# ---- chunked SSD -------------------------------------------------------------------
# x: (batch, L, heads, P); dt: (batch, L, heads); A, D, dt_bias: (heads);
# B, C: (batch, L, 1, N), one group: every head reads the same B and C.

def segment_sums(log_decay):
    """(..., T) -> (..., T, T): [i, j] = sum_{k=j+1..i} log_decay_k for i >= j, -inf
    above the diagonal, so that exp() of it is the causal decay matrix. Summed as a
    cumulative sum of masked copies rather than as differences of one cumsum, which
    would lose the small sums between nearby positions to rounding."""
    length = log_decay.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=log_decay.device)
    repeated = log_decay.unsqueeze(-1).expand(*log_decay.shape, length)  # [i, j] = log_decay_i
    sums = repeated.masked_fill(~ones.tril(diagonal=-1), 0).cumsum(dim=-2)  # [i, j] = sum_{j < k <= i}
    return sums.masked_fill(~ones.tril(), -math.inf)


def ssd_chunked(x, dt, A, B, C, D, dt_bias, chunk):
    batch, length, heads, head_dim = x.shape
    chunks = -(-length // chunk)
    dt = F.softplus(wide(dt) + wide(dt_bias))
    # Zero positions at the end (no decay, no input) make L a multiple of the chunk.
    missing = chunks * chunk - length
    x_dt = F.pad(wide(x) * dt.unsqueeze(-1), (0, 0, 0, 0, 0, missing))
    x_dt = x_dt.reshape(batch, chunks, chunk, heads, head_dim)
    log_decay = F.pad(dt * wide(A), (0, 0, 0, missing)).reshape(batch, chunks, chunk, heads).permute(0, 3, 1, 2)
    B_c = F.pad(wide(B[:, :, 0]), (0, 0, 0, missing)).reshape(batch, chunks, chunk, -1)  # (batch, c, Q, N)
    C_c = F.pad(wide(C[:, :, 0]), (0, 0, 0, missing)).reshape(batch, chunks, chunk, -1)
    cumulative = log_decay.cumsum(dim=-1)  # (batch, heads, c, Q): log decay from the chunk's start

    # Inside each chunk: the masked "attention" form.
    scores = torch.einsum("bcin,bcjn->bcij", C_c, B_c)  # C_i . B_j, the same for every head
    decay_within = torch.exp(segment_sums(log_decay))  # (batch, heads, c, Q, Q): [i, j] from j to i
    weights = scores.unsqueeze(1) * decay_within
    y_diag = torch.einsum("bhcij,bcjhp->bcihp", weights, x_dt)

    # Each chunk's final state from its own inputs: (batch, c, heads, P, N).
    decay_to_end = decay_within[..., -1, :].permute(0, 2, 3, 1).unsqueeze(-1)  # (batch, c, Q, heads, 1)
    chunk_states = torch.einsum("bcjhp,bcjn->bchpn", x_dt * decay_to_end, B_c)

    # The state after chunk i: the same masked product over chunks, with each chunk's
    # whole decay; the state entering chunk i is the one after chunk i - 1.
    across = torch.exp(segment_sums(cumulative[..., -1]))  # (batch, heads, c, c)
    states_after = torch.einsum("bhij,bjhpn->bihpn", across, chunk_states)
    states_in = torch.cat([torch.zeros_like(states_after[:, :1]), states_after[:, :-1]], dim=1)

    # What the entering state gives each position: C_i exp(Lambda_i) S_in.
    decay_from_start = torch.exp(cumulative).permute(0, 2, 3, 1).unsqueeze(-1)  # (batch, c, Q, heads, 1)
    y_off = torch.einsum("bcin,bchpn->bcihp", C_c, states_in) * decay_from_start

    y = (y_diag + y_off).reshape(batch, chunks * chunk, heads, head_dim)[:, :length]
    return (y + wide(D).unsqueeze(-1) * wide(x)).to(x.dtype)


# ---- causal depthwise conv1d ---------------------------------------------------------

def causal_conv1d(x, weight, bias):
    """x (batch, channels, L), weight (channels, K), bias (channels) -> silu(conv), x's dtype."""
    kernel_size, length = weight.shape[-1], x.shape[-1]
    y = F.conv1d(x, weight.to(x.dtype).unsqueeze(1), bias.to(x.dtype), padding=kernel_size - 1, groups=x.shape[1])
    return F.silu(y[..., :length])


# ---- checks --------------------------------------------------------------------------

def scan_by_position(u, delta, A, B, C, D, z, delta_bias):
    """The selective scan one position at a time, as strata/ops/ssm.h writes it."""
    dt = F.softplus(delta + delta_bias.unsqueeze(-1))  # (batch, d_inner, L)
    state = u.new_zeros(u.shape[:2] + A.shape[-1:])  # (batch, d_inner, N)
    ys = []
    for t in range(u.shape[-1]):
        state = (torch.exp(dt[..., t, None] * A) * state
                 + dt[..., t, None] * B[:, :, :, t] * u[..., t, None])  # B[:, 0:1] broadcasts over channels
        y = (state * C[:, :, :, t]).sum(-1) + D * u[..., t]
        ys.append(y * F.silu(z[..., t]))
    return torch.stack(ys, dim=-1)


def ssd_by_position(x, dt, A, B, C, D, dt_bias):
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t + D x_t (strata/ops/ssd.h)."""
    dt = F.softplus(dt + dt_bias)  # (batch, L, heads)
    state = x.new_zeros(x.shape[:1] + x.shape[2:] + B.shape[-1:])  # (batch, heads, P, N)
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * B[:, t, 0][:, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t, 0]) + D.unsqueeze(-1) * x[:, t])
    return torch.stack(ys, dim=1)


def conv_by_position(x, weight, bias):
    """y[b, c, t] = silu(bias[c] + sum_k weight[c, k] x[b, c, t - (K - 1) + k]), x = 0 before 0."""
    kernel_size, length = weight.shape[-1], x.shape[-1]
    padded = F.pad(x, (kernel_size - 1, 0))
    y = bias[:, None] + sum(weight[:, k, None] * padded[..., k:k + length] for k in range(kernel_size))
    return F.silu(y)


def outputs_and_grads(function, inputs):
    """function(*inputs) and the gradient of every input for a random upstream gradient,
    the same one for every function and dtype given inputs of the same shapes."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = function(*leaves)
    upstream = torch.Generator(device=y.device).manual_seed(3)
    grad_y = torch.randn(y.shape, generator=upstream, device=y.device, dtype=torch.float64).to(y.dtype)
    y.backward(grad_y)
    return [y.detach()] + [leaf.grad for leaf in leaves]


def compare(what, names, reference, candidate, tolerance):
    """Print the largest difference of each tensor, relative to the reference's largest
    magnitude, and raise if one is above tolerance."""
    worst = 0.0
    failures = []
    for name, expected, actual in zip(names, reference, candidate):
        error = (actual - expected).abs().max().item() / max(expected.abs().max().item(), 1e-30)
        worst = max(worst, error)
        if not error <= tolerance:
            failures.append(f"{name} {error:.2e}")
    print(f"check {what:<56} largest relative difference {worst:.2e}", flush=True)
    if failures:
        raise AssertionError(f"{what}: above {tolerance:.0e}: {', '.join(failures)}")


def strata_op(binary, op, names, inputs, options, y_shape):
    """`strata op <op>` (on the CPU) on the inputs, written as the datasets `names`, with
    the integer options and the upstream gradient that outputs_and_grads draws for y:
    [y] + the gradient of every input, in the order of outputs_and_grads."""
    import h5py  # only for --strata

    upstream = torch.Generator(device=inputs[0].device).manual_seed(3)
    grad_y = torch.randn(y_shape, generator=upstream, device=inputs[0].device, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as folder:
        given, written = os.path.join(folder, "in.h5"), os.path.join(folder, "out.h5")
        with h5py.File(given, "w") as f:
            for name, tensor in zip(names, inputs):
                f[name] = tensor.cpu().numpy()
            for name, value in options.items():
                f[name] = value
            f["grad_y"] = grad_y.cpu().numpy()
        subprocess.run([binary, "op", op, given, written], check=True)
        with h5py.File(written, "r") as f:
            return [torch.from_numpy(f[name][...]).to(inputs[0].device)
                    for name in ["y"] + ["grad_" + name for name in names]]


def run_checks(device, scan_chunk, with_compile, strata):
    """Every formulation (and with `strata`, the path of the strata binary, Strata's op)
    against a per-position recurrence in float64 on odd sizes (lengths no multiple of
    the chunks, size-1 batch and head dims, several chunks), and the float32 parallel
    scan against the float64 sequential one."""
    dtype = torch.float64
    generator = torch.Generator(device=device).manual_seed(5)

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator, device=device, dtype=dtype) * (high - low) + low

    tolerance = 1e-10  # float64 sums of a few hundred terms of size <= 1: far below this
    scan_names = ["y", "grad u", "grad delta", "grad A", "grad B", "grad C", "grad D", "grad z", "grad delta_bias"]
    for batch, d_inner, length, d_state in ((2, 5, 77, 16), (1, 3, 40, 1)):
        inputs = [uniform((batch, d_inner, length), -1, 1), uniform((batch, d_inner, length), -1, 1),
                  uniform((d_inner, d_state), -2, -0.1), uniform((batch, 1, d_state, length), -1, 1),
                  uniform((batch, 1, d_state, length), -1, 1), uniform((d_inner,), -1, 1),
                  uniform((batch, d_inner, length), -1, 1), uniform((d_inner,), -4, -2)]
        reference = outputs_and_grads(scan_by_position, inputs)
        shape = f"[{batch}, {d_inner}, {length}] N {d_state}"
        compare(f"selective_scan sequential {shape}", scan_names, reference,
                outputs_and_grads(sequential_scan, inputs), tolerance)
        if strata:
            compare(f"selective_scan strata op {shape}", scan_names, reference,
                    strata_op(strata, "selective_scan", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"],
                              inputs, {"delta_softplus": 1}, reference[0].shape), tolerance)
        for chunk in sorted({scan_chunk, 16}):
            compare(f"selective_scan chunked log-space {shape} chunk {chunk}", scan_names, reference,
                    outputs_and_grads(lambda *a: chunked_logspace_scan(*a, chunk), inputs), tolerance)
        if with_compile:
            compare(f"selective_scan compiled {shape}", scan_names, reference,
                    outputs_and_grads(make_compiled_scan(), inputs), tolerance)

    # The parallel scan subtracts cumulative log decays up to a chunk long: in float32
    # (the GPU runs) its rounding grows with the chunk (1e-5 measured at 128 positions).
    inputs = [uniform((1, 4, 2048), -1, 1), uniform((1, 4, 2048), -1, 1), uniform((4, 16), -2, -0.1),
              uniform((1, 1, 16, 2048), -1, 1), uniform((1, 1, 16, 2048), -1, 1), uniform((4,), -1, 1),
              uniform((1, 4, 2048), -1, 1), uniform((4,), -4, -2)]
    in_float32 = outputs_and_grads(lambda *a: chunked_logspace_scan(*a, scan_chunk), [t.float() for t in inputs])
    compare(f"selective_scan chunked log-space float32 [1, 4, 2048] N 16 chunk {scan_chunk}", scan_names,
            outputs_and_grads(sequential_scan, inputs), [t.double() for t in in_float32], 1e-4)

    for batch, length, heads, head_dim, d_state, chunk in ((2, 100, 3, 4, 8, 32), (1, 64, 2, 1, 5, 64),
                                                           (1, 33, 1, 3, 4, 8)):
        inputs = [uniform((batch, length, heads, head_dim), -1, 1), uniform((batch, length, heads), -1, 1),
                  uniform((heads,), -8, -1), uniform((batch, length, 1, d_state), -1, 1),
                  uniform((batch, length, 1, d_state), -1, 1), uniform((heads,), -1, 1),
                  uniform((heads,), -4, -2)]
        names = ["y", "grad x", "grad dt", "grad A", "grad B", "grad C", "grad D", "grad dt_bias"]
        shape = f"[{batch}, {length}, {heads} x {head_dim}] N {d_state} chunk {chunk}"
        reference = outputs_and_grads(ssd_by_position, inputs)
        compare(f"ssd_chunked {shape}", names, reference,
                outputs_and_grads(lambda *a: ssd_chunked(*a, chunk), inputs), tolerance)
        if strata:
            compare(f"ssd_chunked strata op {shape}", names, reference,
                    strata_op(strata, "ssd", ["x", "dt", "A", "B", "C", "D", "dt_bias"], inputs,
                              {"dt_softplus": 1, "chunk_size": chunk}, reference[0].shape), tolerance)

    for batch, channels, length, kernel_size in ((2, 6, 50, 4), (1, 1, 3, 4), (1, 4, 9, 2)):
        inputs = [uniform((batch, channels, length), -1, 1), uniform((channels, kernel_size), -0.5, 0.5),
                  uniform((channels,), -0.5, 0.5)]
        names = ["y", "grad x", "grad weight", "grad bias"]
        shape = f"[{batch}, {channels}, {length}] kernel {kernel_size}"
        reference = outputs_and_grads(conv_by_position, inputs)
        compare(f"causal_conv1d {shape}", names, reference, outputs_and_grads(causal_conv1d, inputs), tolerance)
        if strata:
            compare(f"causal_conv1d strata op {shape}", names, reference,
                    strata_op(strata, "causal_conv1d", ["x", "weight", "bias"], inputs, {"silu": 1},
                              reference[0].shape), tolerance)


# ---- the bench -----------------------------------------------------------------------

def strata_times(path):
    """{row name: ms} of the kernel lines of a saved `strata bench ssm` output."""
    times = {}
    with open(path) as log:
        for line in log:
            row = re.match(r"((?:selective_scan|causal_conv1d|ssd_chunked) .+?)\s+([0-9.]+) ms", line)
            if row:
                times[row.group(1)] = float(row.group(2))
    return times


class SsmBench:
    def __init__(self, args, device):
        self.args, self.device = args, device
        self.gpu = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.gpu else torch.float32
        self.generator = torch.Generator(device=device).manual_seed(11)
        self.strata = strata_times(args.strata_log) if args.strata_log else {}
        self.summary = []  # (row name, fastest formulation, its ms, Strata's ms)
        self.copy_gbps = 0.0
        self.compiled_scan = make_compiled_scan() if args.compile else None

    def uniform(self, shape, low, high, dtype):
        values = torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float32)
        return (values * (high - low) + low).to(dtype)

    def activation(self, shape):
        return self.uniform(shape, -1.0, 1.0, self.dtype)

    def parameter(self, shape, low, high):
        return self.uniform(shape, low, high, torch.float32)

    def element(self):
        return torch.finfo(self.dtype).bits / 8

    def measure_copy(self):
        """A copy of float32[2^30] (2^24 on the CPU) moves 2 x 4 bytes per element."""
        elements = 1 << (30 if self.gpu else 24)
        source = self.parameter((elements,), -1.0, 1.0)
        target = torch.empty_like(source)
        ms = time_ms(lambda: target.copy_(source), self.args.iterations, self.args.warmup, self.device)
        self.copy_gbps = 2.0 * 4 * elements / (ms * 1e-3) / 1e9
        name = f"copy float32[2^{int(math.log2(elements))}]"
        print(f"{name:<{NAME_WIDTH}} {ms:9.3f} ms  {self.copy_gbps:8.2f} GB/s  (the limit below)", flush=True)

    def time_formulations(self, formulations, leaves, grad_out):
        """{formulation: (forward ms, backward ms) or the reason it has no times}; each
        formulation is called on the leaves."""
        results = {}
        for name, (forward, python_loop) in formulations.items():
            iterations = self.args.loop_iterations if python_loop else self.args.iterations
            warmup = 1 if python_loop else self.args.warmup
            try:
                results[name] = torch_timing.time_passes(
                    lambda: forward(*leaves), leaves, grad_out,
                    lambda work: time_ms(work, iterations, warmup, self.device))
            except torch.OutOfMemoryError:
                results[name] = "out of memory"
            except Exception as error:  # a compilation may fail; any other error is a bug and raised
                if name != "compiled":
                    raise
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                results[name] = f"torch.compile failed, dropped for the rest of the run ({first_line[:100]})"
                self.compiled_scan = None
            if self.gpu:
                torch.cuda.empty_cache()
        return results

    def report(self, name, results, forward_bytes, backward_bytes, length, exps=0.0):
        """One line per formulation and pass, the fastest marked, and its Strata ratio noted."""
        for pass_index, (pass_name, pass_bytes, pass_exps) in enumerate(
                (("forward", forward_bytes, exps), ("backward", backward_bytes, 2 * exps))):
            row = name.format(pass_name)
            timed = {f: r[pass_index] for f, r in results.items() if not isinstance(r, str)}
            fastest = min(timed, key=timed.get) if timed else None
            strata_ms = self.strata.get(row)
            for formulation, result in results.items():
                if isinstance(result, str):
                    print(f"{row:<{NAME_WIDTH}} torch {formulation}: {result}", flush=True)
                    continue
                ms = result[pass_index]
                gbps = pass_bytes / (ms * 1e-3) / 1e9
                line = (f"{row:<{NAME_WIDTH}} {ms:9.3f} ms  {gbps:8.2f} GB/s  {100.0 * gbps / self.copy_gbps:5.1f}% "
                        f"of copy  {self.args.batch * length / (ms * 1e-3) / 1e6:9.2f} Mtok/s")
                if pass_exps:
                    line += f"  {pass_exps / (ms * 1e-3) / 1e9:8.1f} Gexp/s"
                line += f"  torch {formulation}{' (fastest)' if formulation == fastest and len(timed) > 1 else ''}"
                if strata_ms:
                    line += f"  {ms / strata_ms:6.2f}x Strata's time"
                print(line, flush=True)
            if fastest:
                self.summary.append((row, fastest, timed[fastest], strata_ms))

    def bench_scan(self, d_inner, length, d_state):
        batch, element = self.args.batch, self.element()
        u, delta, z = (self.activation((batch, d_inner, length)) for _ in range(3))
        B, C = (self.activation((batch, 1, d_state, length)) for _ in range(2))
        A = self.parameter((d_inner, d_state), -2.0, -0.1)
        D, delta_bias = self.parameter((d_inner,), -1.0, 1.0), self.parameter((d_inner,), -4.0, -2.0)
        formulations = {"sequential": (sequential_scan, True),
                        "chunked log-space": (lambda *a: chunked_logspace_scan(*a, self.args.scan_chunk), False)}
        if self.compiled_scan:
            formulations["compiled"] = (self.compiled_scan, True)
        leaves = [u, delta, A, B, C, D, z, delta_bias]
        results = self.time_formulations(formulations, leaves, self.activation((batch, d_inner, length)))
        # Strata's byte counts (src/cli/bench_ssm.cpp): u delta z B C and the parameters
        # read, y written; backward: those and dy read, du ddelta dz, float32 dB dC and
        # the parameter grads written.
        activations = batch * d_inner * length * element
        bc = batch * d_state * length * element
        parameters = 4.0 * (d_inner * d_state + 2 * d_inner)
        bc_grads = 2.0 * 4 * batch * d_state * length
        forward_bytes = 4 * activations + 2 * bc + parameters
        backward_bytes = 7 * activations + 2 * bc + bc_grads + 2 * parameters
        name = f"selective_scan {{}} {self.dtype_name()}[{batch}, {d_inner}, {length}] N {d_state}"
        exps = float(batch * d_inner * length * d_state)
        self.report(name, results, forward_bytes, backward_bytes, length, exps)

    def bench_conv(self, channels, length):
        batch, kernel_size = self.args.batch, self.args.conv_kernel
        x = self.activation((batch, channels, length))
        weight = self.parameter((channels, kernel_size), -0.5, 0.5)
        bias = self.parameter((channels,), -0.5, 0.5)
        leaves = [x, weight, bias]
        results = self.time_formulations({"F.conv1d": (causal_conv1d, False)}, leaves,
                                         self.activation((batch, channels, length)))
        tensor = batch * channels * length * self.element()
        parameters = 4.0 * channels * (kernel_size + 1)
        name = f"causal_conv1d {{}} {self.dtype_name()}[{batch}, {channels}, {length}] kernel {kernel_size}, SiLU"
        self.report(name, results, 2 * tensor + parameters, 3 * tensor + 2 * parameters, length)

    def bench_ssd(self, d_inner, length):
        args, element = self.args, self.element()
        batch, head_dim, d_state = args.batch, args.ssd_head_dim, args.ssd_state
        heads = max(1, d_inner // head_dim)
        x = self.activation((batch, length, heads, head_dim))
        dt = self.activation((batch, length, heads))
        B, C = (self.activation((batch, length, 1, d_state)) for _ in range(2))
        A, D = self.parameter((heads,), -8.0, -1.0), self.parameter((heads,), -1.0, 1.0)
        dt_bias = self.parameter((heads,), -4.0, -2.0)
        leaves = [x, dt, A, B, C, D, dt_bias]
        formulations = {"chunked": (lambda *a: ssd_chunked(*a, args.ssd_chunk), False)}
        results = self.time_formulations(formulations, leaves, self.activation((batch, length, heads, head_dim)))
        xs = batch * length * heads * head_dim * element
        dts = batch * length * heads * element
        bc = batch * length * d_state * element
        name = (f"ssd_chunked {{}} {self.dtype_name()}[{batch}, {length}, {heads} x {head_dim}] N {d_state} "
                f"chunk {args.ssd_chunk}")
        self.report(name, results, 2 * xs + dts + 2 * bc, 3 * xs + 2 * dts + 4 * bc, length)

    def dtype_name(self):
        return {torch.bfloat16: "bfloat16", torch.float32: "float32"}[self.dtype]

    def run(self):
        args = self.args
        for d_inner in args.d_inner:
            for length in args.lengths:
                if "scan" in args.only:
                    for d_state in args.states:
                        self.bench_scan(d_inner, length, d_state)
                if "conv" in args.only:
                    self.bench_conv(d_inner, length)
                if "ssd" in args.only:
                    self.bench_ssd(d_inner, length)

    def print_summary(self):
        if not self.strata:
            return
        print("\nThe fastest PyTorch formulation against Strata: ratio = PyTorch time / Strata time "
              "(> 1: Strata is faster)")
        for row, formulation, ms, strata_ms in self.summary:
            if strata_ms:
                print(f"{row:<{NAME_WIDTH}} {ms / strata_ms:7.2f}  "
                      f"({formulation} {ms:.3f} ms, Strata {strata_ms:.3f} ms)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    parser.add_argument("--only", choices=["scan", "conv", "ssd"], nargs="+", default=["scan", "conv", "ssd"])
    parser.add_argument("--batch", type=int, help="default 8 on CUDA, 2 on the CPU")
    parser.add_argument("--d-inner", type=int, nargs="+", help="channels; SSD heads = this / head dim "
                                                               "(default 2048 4096 on CUDA, 128 on the CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", help="default 2048 8192 on CUDA, 256 on the CPU")
    parser.add_argument("--states", type=int, nargs="+", default=[16, 1], help="selective-scan state sizes N")
    parser.add_argument("--ssd-state", type=int, help="default 128 on CUDA, 16 on the CPU")
    parser.add_argument("--ssd-head-dim", type=int, help="default 64 on CUDA, 16 on the CPU")
    parser.add_argument("--ssd-chunk", type=int, help="default 256 on CUDA, 64 on the CPU")
    parser.add_argument("--conv-kernel", type=int, default=4)
    parser.add_argument("--scan-chunk", type=int, default=128, help="positions per chunk of the log-space scan")
    parser.add_argument("--iterations", type=int, help="timed iterations (default 20 on CUDA, 1 on the CPU)")
    parser.add_argument("--loop-iterations", type=int,
                        help="timed iterations of the Python-loop scans (default 3 on CUDA, 1 on the CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="time the torch.compile'd scan too (default on CUDA only)")
    parser.add_argument("--check", action="store_true",
                        help="first check the formulations against per-position recurrences (stops on a mismatch)")
    parser.add_argument("--strata-log", help="saved output of `strata bench ssm` to compare against")
    parser.add_argument("--strata", metavar="BINARY",
                        help="with --check, also check Strata's ops, run by this strata binary's `op` subcommands")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and device.index is not None:
        torch.cuda.set_device(device)
    defaults = {"batch": (8, 2), "d_inner": ([2048, 4096], [128]), "lengths": ([2048, 8192], [256]),
                "ssd_state": (128, 16), "ssd_head_dim": (64, 16), "ssd_chunk": (256, 64), "iterations": (20, 1),
                "loop_iterations": (3, 1), "compile": (True, False)}
    for option, (on_gpu, on_cpu) in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, on_gpu if gpu else on_cpu)
    args.warmup = 3 if gpu else 1

    if args.check:
        run_checks(device, args.scan_chunk, args.compile, args.strata)
    if gpu:
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for the float32 matmuls (not in the checks)
    bench = SsmBench(args, device)
    where = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"PyTorch {torch.__version__} on {where}: {bench.dtype_name()} activations, float32 states"
          f"{' (TF32 matmuls)' if gpu else ''}; batch {args.batch}, median of {args.iterations} iterations "
          f"({args.loop_iterations} for the Python-loop scans)", flush=True)
    bench.measure_copy()
    bench.run()
    bench.print_summary()


if __name__ == "__main__":
    main()
