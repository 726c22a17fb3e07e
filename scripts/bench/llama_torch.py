"""PyTorch baseline for the throughput of recipes/scaling/transformer-125m.yaml.

A development aid run on the GPU machine (plain python3 with torch), never a
dependency of Strata: the same LLaMA-style model (RMSNorm, SwiGLU with hidden
8/3 d_model, RoPE, causal scaled_dot_product_attention, tied byte embedding),
bf16 autocast with float32 weights, fused AdamW, batch 16 x 1024 bytes, eager mode
and torch.compile; prints tokens per second in the format of `strata train`.

    python3 scripts/bench/llama_torch.py [--layers 18 --d-model 768 --heads 12]
"""
import argparse
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.heads = heads
        self.attention_norm = torch.nn.RMSNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.out = torch.nn.Linear(d, d, bias=False)
        self.mlp_norm = torch.nn.RMSNorm(d)
        self.gate_up = torch.nn.Linear(d, 2 * hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin):
        b, length, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, length, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, length, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Model(torch.nn.Module):
    def __init__(self, layers, d, heads):
        super().__init__()
        self.embedding = torch.nn.Embedding(256, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads, round(8 * d / 3)) for _ in range(layers))
        self.norm = torch.nn.RMSNorm(d)
        self.head_dim = d // heads

    def forward(self, tokens):
        length = tokens.shape[1]
        inverse = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, device=tokens.device) / self.head_dim))
        angles = torch.outer(torch.arange(length, device=tokens.device), inverse)
        cos, sin = angles.cos(), angles.sin()
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x) @ self.embedding.weight.t()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    for compiled in (False, True):
        model = Model(args.layers, args.d_model, args.heads).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
        step_model = torch.compile(model) if compiled else model
        tokens = torch.randint(0, 256, (args.batch, args.length + 1), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = step_model(tokens[:, :-1])
                loss = F.cross_entropy(logits.float().view(-1, 256), tokens[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        parameters = sum(p.numel() for p in model.parameters())
        print(f"pytorch {'compiled' if compiled else 'eager'} llama {parameters / 1e6:.1f}M: "
              f"{args.steps * args.batch * args.length / seconds:.0f} tok/s, "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
