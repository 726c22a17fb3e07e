#!/usr/bin/env python3
"""PyTorch beside `strata bench attention`, on the same shapes and block masks.

Development aid for the GPU machine (Strata never imports it). It times, in bfloat16:

  - dense: torch.nn.functional.scaled_dot_product_attention with the flash and the
    cuDNN backends, each forced in turn (the faster one is what the ratios use),
    forward and backward TFLOP/s, causal and not, with the FLOP count and shapes of
    the Strata bench (4 B H L^2 D forward, 2.5x that backward, halved when causal;
    heads = 2048 / head_dim, batch = max(1, 16384 / L));
  - sparse: FlexAttention (torch.compile'd flex_attention) with BlockMasks built from
    the layouts `strata bench attention --export-layouts DIR` wrote, each beside
    FlexAttention with every block present, as time / (density x dense time).
    Blocks wholly visible are "full" blocks (no mask_mod), blocks that straddle the
    causal diagonal are partial blocks with a causal mask_mod, as Strata masks them.

It prints the Strata bench's line format and, when DIR/strata.json holds Strata's
times, a final table of speed ratios PyTorch time / Strata time (> 1: Strata is
faster). Dynamic mask attention has no PyTorch counterpart here.

Run with plain python3 on the GPU machine:
  strata bench attention --export-layouts /tmp/attn | tee strata_attention.txt
  python3 scripts/bench/attention_torch.py --layouts /tmp/attn
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import torch_timing

BACKWARD_FLOPS_PER_FORWARD = 2.5
NAME_WIDTH = 52


def forward_flops(batch, heads, length, head_dim, causal):
    flops = 4.0 * batch * heads * length * length * head_dim
    return flops / 2 if causal else flops


def time_passes(forward, q, k, v, grad_out, iterations):
    """(forward ms, backward ms) of an attention call on q, k, v (torch_timing.time_passes)."""
    timer = lambda work: torch_timing.mean_cuda_ms(work, iterations)  # noqa: E731
    return torch_timing.time_passes(forward, (q, k, v), grad_out, timer)


def make_inputs(batch, heads, length, head_dim, generator):
    shape = (batch, heads, length, head_dim)
    return [torch.randn(shape, generator=generator, device="cuda", dtype=torch.bfloat16) for _ in range(4)]


def print_rate(name, ms, flops, limit):
    rate = flops / (ms * 1e-3) / 1e12
    print(f"{name:<{NAME_WIDTH}} {ms:9.3f} ms  {rate:8.1f} TFLOP/s  {100.0 * rate / limit:5.1f}% of cuBLAS", flush=True)


def measure_gemm_limit(iterations):
    """torch.matmul in bfloat16 at 8192^3: the tensor-core rate the lines are compared with."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = torch_timing.mean_cuda_ms(lambda: torch.matmul(a, b), iterations)
    tflops = 2.0 * n**3 / (ms * 1e-3) / 1e12
    name = f"torch.matmul {n}x{n}x{n} bfloat16"
    print(f"{name:<{NAME_WIDTH}} {ms:9.3f} ms  {tflops:8.1f} TFLOP/s  (cuBLAS, the limit below)", flush=True)
    return tflops


SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def dense(configs, iterations, limit, generator):
    """{(causal, L, D): {"forward_ms", "backward_ms", "backend"}} of the faster backend."""
    best = {}
    for c in configs:
        batch, heads, length, head_dim, causal = c["batch"], c["heads"], c["length"], c["head_dim"], c["causal"]
        q, k, v, grad_out = make_inputs(batch, heads, length, head_dim, generator)
        flops = forward_flops(batch, heads, length, head_dim, causal)
        shape = f"{'causal' if causal else 'full'} L={length} D={head_dim} B={batch} H={heads}"
        for backend_name, backend in SDPA_BACKENDS.items():

            def forward():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            try:
                forward_ms, backward_ms = time_passes(forward, q, k, v, grad_out, iterations)
            except RuntimeError as error:  # the backend does not take these shapes here
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"sdpa[{backend_name}] {shape}: unavailable ({first_line[:100]})", flush=True)
                continue
            print_rate(f"sdpa[{backend_name}] forward {shape}", forward_ms, flops, limit)
            print_rate(f"sdpa[{backend_name}] backward {shape}", backward_ms, BACKWARD_FLOPS_PER_FORWARD * flops, limit)
            key = (causal, length, head_dim)
            total = forward_ms + backward_ms
            if key not in best or total < best[key]["forward_ms"] + best[key]["backward_ms"]:
                best[key] = {"forward_ms": forward_ms, "backward_ms": backward_ms, "backend": backend_name}
        if (causal, length, head_dim) in best:
            print(f"sdpa fastest for {shape}: {best[(causal, length, head_dim)]['backend']}", flush=True)
    return best


def ordered(blocks):
    """A (..., query_blocks, key_blocks) bool tensor -> (counts, indices): per row, the
    number of True entries and their key blocks in increasing order first (the
    BlockMask's kv_num_blocks / kv_indices)."""
    counts = blocks.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.contiguous(), indices.contiguous()


def block_mask_from_layout(layout, batch, heads, causal_mask):
    """The BlockMask of a layout file (key_blocks[batch][head][query_block]), expanded to
    (batch, heads), so that every layout of one shape compiles to the same graph."""
    block_size = layout["block_size"]
    query_length, key_length = layout["query_length"], layout["key_length"]
    query_blocks = (query_length + block_size - 1) // block_size
    key_blocks = (key_length + block_size - 1) // block_size
    lists = layout["key_blocks"]
    present = torch.zeros(len(lists), len(lists[0]), query_blocks, key_blocks, dtype=torch.bool)
    for b, per_head in enumerate(lists):
        for h, rows in enumerate(per_head):
            for i, row in enumerate(rows):
                present[b, h, i, row] = True
    present = present.expand(batch, heads, query_blocks, key_blocks)
    if layout["causal"]:
        # A block is full when its last key is visible to its first query (causal
        # alignment at the ends: query i sits at key position i + Lk - Lq).
        offset = key_length - query_length
        first_query = torch.arange(query_blocks) * block_size + offset
        last_key = torch.clamp(torch.arange(key_blocks) * block_size + block_size - 1, max=key_length - 1)
        wholly_visible = last_key[None, :] <= first_query[:, None]
        full, partial = present & wholly_visible, present & ~wholly_visible
    else:
        full, partial = present, torch.zeros_like(present)
    full_counts, full_indices = ordered(full)
    counts, indices = ordered(partial)
    return BlockMask.from_kv_blocks(
        counts.cuda(), indices.cuda(), full_counts.cuda(), full_indices.cuda(), BLOCK_SIZE=block_size,
        mask_mod=causal_mask, seq_lengths=(query_length, key_length))


def causal_mask_mod(offset):
    """Key kv_idx is visible to query q_idx when kv_idx <= q_idx + Lk - Lq."""

    def causal_mask(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return causal_mask


def sparse(directory, entries, iterations, generator):
    """{(layout name, L, D): {"forward_ms", "backward_ms"}} of FlexAttention."""
    # The backward is replayed with retain_graph, which compiled graphs that donate
    # their buffers refuse (the first run on the H200 stopped there).
    torch._functorch.config.donated_buffer = False
    flex = torch.compile(flex_attention)
    results = {}
    per_shape = {}  # (L, D) -> the inputs, the mask_mod and FlexAttention's dense times
    for entry in entries:
        with open(os.path.join(directory, entry["file"])) as f:
            layout = json.load(f)
        batch, heads, head_dim = layout["batch"], layout["heads"], layout["head_dim"]
        length, block_size = layout["query_length"], layout["block_size"]
        key = (length, head_dim)
        if key not in per_shape:
            inputs = make_inputs(batch, heads, length, head_dim, generator)
            # One mask_mod object per shape, shared by its layouts (so one compiled
            # graph serves them all): non-causal layouts have no partial blocks, so it
            # only ever runs on the diagonal blocks of causal ones.
            causal_mask = causal_mask_mod(layout["key_length"] - length)
            blocks = (length + block_size - 1) // block_size
            every_block = dict(layout, causal=False, key_blocks=[[[list(range(blocks))] * blocks]])
            mask = block_mask_from_layout(every_block, batch, heads, causal_mask)
            q, k, v, grad_out = inputs
            dense_ms = time_passes(lambda: flex(q, k, v, block_mask=mask), q, k, v, grad_out, iterations)
            per_shape[key] = (inputs, causal_mask, dense_ms)
            print(f"flex sparse {'dense(reference)':<34} L={length} D={head_dim} B={batch} H={heads}  "
                  f"fwd {dense_ms[0]:8.3f} ms  bwd {dense_ms[1]:8.3f} ms", flush=True)
        (q, k, v, grad_out), causal_mask, (dense_forward, dense_backward) = per_shape[key]
        mask = block_mask_from_layout(layout, batch, heads, causal_mask)
        forward_ms, backward_ms = time_passes(lambda: flex(q, k, v, block_mask=mask), q, k, v, grad_out, iterations)
        density = layout["density"]
        print(f"flex sparse {layout['layout']:<34} L={length} D={head_dim} density {density:.4f}  "
              f"fwd {forward_ms:8.3f} ms ({forward_ms / (density * dense_forward):.2f}x)  "
              f"bwd {backward_ms:8.3f} ms ({backward_ms / (density * dense_backward):.2f}x)", flush=True)
        results[(layout["layout"], length, head_dim)] = {"forward_ms": forward_ms, "backward_ms": backward_ms}
    return results


def default_dense_configs(lengths, head_dims, tokens=16384, model_dim=2048):
    return [{"causal": causal, "length": length, "head_dim": head_dim, "batch": max(1, tokens // length),
             "heads": model_dim // head_dim}
            for head_dim in head_dims for causal in (False, True) for length in lengths]


def ratio_table(strata, dense_best, flex):
    print("\nStrata / PyTorch: speed ratio = PyTorch time / Strata time (> 1: Strata is faster)")
    print(f"{'dense (against the faster SDPA backend)':<48} {'forward':>8} {'backward':>9}  backend")
    for run in strata.get("dense", []):
        key = (run["causal"], run["length"], run["head_dim"])
        if key not in dense_best:
            continue
        torch_run = dense_best[key]
        name = f"{'causal' if run['causal'] else 'full'} L={run['length']} D={run['head_dim']}"
        print(f"{name:<48} {torch_run['forward_ms'] / run['forward_ms']:8.2f} "
              f"{torch_run['backward_ms'] / run['backward_ms']:9.2f}  {torch_run['backend']}")
    print(f"{'sparse (against FlexAttention, same block mask)':<48} {'forward':>8} {'backward':>9}")
    for run in strata.get("sparse", []):
        key = (run["layout"], run["length"], run["head_dim"])
        if key not in flex:
            continue
        name = f"{run['layout']} L={run['length']} D={run['head_dim']}"
        print(f"{name:<48} {flex[key]['forward_ms'] / run['forward_ms']:8.2f} "
              f"{flex[key]['backward_ms'] / run['backward_ms']:9.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", help="folder written by `strata bench attention --export-layouts`")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768],
                        help="dense lengths when there is no strata.json to follow")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--only", choices=["dense", "sparse"], nargs="+", default=["dense", "sparse"])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()

    strata = {}
    if args.layouts:
        with open(os.path.join(args.layouts, "strata.json")) as f:
            strata = json.load(f)
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}: bfloat16", flush=True)
    generator = torch.Generator(device="cuda").manual_seed(1)
    limit = measure_gemm_limit(args.iterations)

    dense_best, flex = {}, {}
    if "dense" in args.only:
        configs = strata.get("dense") or default_dense_configs(args.lengths, args.head_dims)
        dense_best = dense(configs, args.iterations, limit, generator)
    if "sparse" in args.only and strata.get("sparse"):
        print("block-sparse (FlexAttention): (x) = time / (density x FlexAttention with every block), "
              "target <= 1.3", flush=True)
        flex = sparse(args.layouts, strata["sparse"], args.iterations, generator)
    if strata:
        ratio_table(strata, dense_best, flex)


if __name__ == "__main__":
    main()
