#!/usr/bin/env python3
"""The MoE layer of `strata bench moe` in PyTorch, for a side-by-side on the GPU machine.

The layer (bfloat16, top_k experts per token, SwiGLU experts of hidden size
hidden_multiplier * d_model / top_k, as `strata bench moe`): a bias-free linear
router, the top-k of the logits with their weights renormalised (a softmax over the
k chosen logits), a stable sort of the assignments by expert, a gather of the rows,
gate/up and down projections per expert, SwiGLU, and a weighted scatter-add back to
the tokens. Forward + backward with an upstream gradient on the output; gradients
flow to x and every weight (not through auxiliary losses, as in the Strata bench).

The experts run through torch._grouped_mm when this torch has it (and it accepts the
shapes), else as a loop of per-expert F.linear calls; the line says which. With
--strata-log (the saved output of `strata bench moe`), each configuration also
prints the time ratio torch / Strata (> 1: Strata is faster).

Run with plain python3 on the GPU machine, e.g.
  strata bench moe | tee strata_moe.txt
  python3 scripts/bench/moe_torch.py --strata-log strata_moe.txt
"""
import argparse
import re

import torch
import torch.nn.functional as F

from torch_timing import mean_cuda_ms


class MoELayer:
    """Stacked expert weights: gate_up (E, 2H, d) and down (E, d, H), like Strata's."""

    def __init__(self, experts, d_model, hidden, top_k, device, generator):
        def normal(*shape, scale):
            return (torch.randn(*shape, generator=generator, device=device) * scale).to(torch.bfloat16)

        self.experts, self.hidden, self.top_k = experts, hidden, top_k
        self.router = normal(experts, d_model, scale=0.02).requires_grad_()
        self.gate_up = normal(experts, 2 * hidden, d_model, scale=0.02).requires_grad_()
        self.down = normal(experts, d_model, hidden, scale=0.02).requires_grad_()

    def parameters(self):
        return [self.router, self.gate_up, self.down]

    def route(self, x):
        """-> rows of x in expert order, their tokens, their weights, the group sizes."""
        logits = F.linear(x, self.router).float()
        top_logits, top_experts = logits.topk(self.top_k, dim=-1)
        weights = torch.softmax(top_logits, dim=-1).to(x.dtype)
        flat_experts = top_experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)  # assignments grouped by expert, token order within
        tokens = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.experts)
        return x[tokens], tokens, weights.reshape(-1)[order], counts

    def forward(self, x, grouped):
        rows, tokens, weights, counts = self.route(x)
        if grouped:
            offsets = torch.cumsum(counts, 0).to(torch.int32)
            gate_up = torch._grouped_mm(rows, self.gate_up.transpose(-2, -1), offs=offsets)
            gate, up = gate_up.split(self.hidden, dim=-1)
            expert_out = torch._grouped_mm(F.silu(gate) * up, self.down.transpose(-2, -1), offs=offsets)
        else:
            outputs = []
            for e, group in enumerate(rows.split(counts.tolist(), dim=0)):
                if group.shape[0] == 0:
                    continue
                gate, up = F.linear(group, self.gate_up[e]).split(self.hidden, dim=-1)
                outputs.append(F.linear(F.silu(gate) * up, self.down[e]))
            expert_out = torch.cat(outputs, dim=0)
        out = torch.zeros_like(x)
        return out.index_add(0, tokens, expert_out * weights.unsqueeze(-1))


def strata_times(path):
    """{(experts, tokens, d_model): ms} of the grouped layer lines in a `strata bench moe` log."""
    times, key = {}, None
    with open(path) as log:
        for line in log:
            header = re.match(r"-- experts (\d+) tokens (\d+) d_model (\d+)", line)
            if header:
                key = tuple(int(v) for v in header.groups())
            layer = re.match(r"moe layer fwd\+bwd, grouped GEMM\s+([0-9.]+) ms", line)
            if layer and key is not None:
                times[key] = float(layer.group(1))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--d-model", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden-multiplier", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--strata-log", help="saved output of `strata bench moe` to compare against")
    args = parser.parse_args()

    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(7)
    has_grouped_mm = hasattr(torch, "_grouped_mm")
    reference = strata_times(args.strata_log) if args.strata_log else {}
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} (bfloat16); top_k {args.top_k}, "
          f"expert hidden = {args.hidden_multiplier} * d_model / top_k, SwiGLU experts; "
          f"torch._grouped_mm {'available' if has_grouped_mm else 'absent: per-expert loop only'}")

    for d_model in args.d_model:
        for experts in args.experts:
            for tokens in args.tokens:
                hidden = max(1, args.hidden_multiplier * d_model // args.top_k)
                print(f"-- experts {experts} tokens {tokens} d_model {d_model} hidden {hidden} "
                      f"(rows {tokens * args.top_k})")
                layer = MoELayer(experts, d_model, hidden, args.top_k, device, generator)
                x = torch.randn(tokens, d_model, generator=generator, device=device).to(torch.bfloat16)
                x.requires_grad_()
                grad_y = torch.randn(tokens, d_model, generator=generator, device=device).to(torch.bfloat16)

                def step(grouped):
                    for t in layer.parameters() + [x]:
                        t.grad = None
                    layer.forward(x, grouped).backward(grad_y)

                strategies = [("per-expert loop", False)]
                if has_grouped_mm:
                    try:
                        step(True)
                        strategies.insert(0, ("torch._grouped_mm", True))
                    except RuntimeError as error:  # shapes or layouts this build's kernel refuses
                        print(f"torch._grouped_mm refused this configuration: {str(error).splitlines()[0]}")
                for name, grouped in strategies:
                    ms = mean_cuda_ms(lambda: step(grouped), args.iterations)
                    line = f"{'moe layer fwd+bwd, ' + name:<46} {ms:9.3f} ms"
                    strata_ms = reference.get((experts, tokens, d_model))
                    if strata_ms:
                        line += f"  torch / Strata time {ms / strata_ms:5.2f}x (Strata {strata_ms:.3f} ms)"
                    print(line)
                del layer, x, grad_y
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
