"""Timing for the PyTorch bench scripts beside `strata bench` (attention_torch.py,
moe_torch.py, ssm_torch.py); they import it from this folder."""
import torch


def mean_cuda_ms(work, iterations, warmup=3):
    """Mean milliseconds of work() on the current CUDA stream (events around the loop)."""
    for _ in range(warmup):
        work()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iterations):
        work()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations


def time_passes(forward, leaves, grad_out, time_ms):
    """(forward ms, backward ms) of forward(), each measured by time_ms(work): the
    forward without autograd; the backward replays one recorded graph (retain_graph)
    with the leaves' grads cleared, as Strata does. The leaves end without grads and
    without requires_grad, also when a pass raises."""
    with torch.no_grad():
        forward_ms = time_ms(forward)
    try:
        for leaf in leaves:
            leaf.requires_grad_(True)
        out = forward()

        def backward():
            for leaf in leaves:
                leaf.grad = None
            out.backward(grad_out, retain_graph=True)

        backward_ms = time_ms(backward)
    finally:
        for leaf in leaves:
            leaf.grad = None
            leaf.requires_grad_(False)
    return forward_ms, backward_ms
