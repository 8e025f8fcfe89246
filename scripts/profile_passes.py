"""Run a few TFLA passes at one shape so a profiler can attach (Nsight Compute on the H100), or print each
kernel's CUDA time per pass (``--times``, from ``torch.profiler``) for one or more chunk sizes.

Usage, e.g. the 7B forward kernels' counters (the first pass compiles and is skipped)::

    ncu --clock-control none -k regex:fw_chunk --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python3 scripts/profile_passes.py --shape 8,8,8192,256,512 --mode fw --passes 2

or the per-kernel split of one fwbw pass over chunk sizes::

    python3 scripts/profile_passes.py --mode fwbw --chunk 128,256,512,1024 --times

``--shape B,NH,S,DHQK,DHHV``; inputs from ``make_inputs`` (bf16 random, forget gates near 1), also used by
``tune_tiles.py`` and ``state_loop_check.py``.
"""

from __future__ import annotations

import argparse

import torch

from kernels.mlstm.tfla import mlstm_tfla
from kernels.mlstm.tiles import TileConfig


def kernel_times(run: callable, passes: int) -> dict[str, float]:
    """Mean CUDA time per call (us) of every kernel launched by ``run``, over ``passes`` calls after a warm-up."""
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(passes):
            run()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        out[e.key] = out.get(e.key, 0.0) + total / passes
    return out


def make_inputs(shape: tuple[int, ...], seed: int = 0, grad: bool = True) -> list[torch.Tensor]:
    """bf16 ``q, k (B, NH, S, DHQK)``, ``v (B, NH, S, DHHV)`` and fp32 gates ``i, f (B, NH, S)`` (forget gates
    near 1), drawn from a CUDA generator seeded with ``seed``; ``grad``: as leaves that require gradients."""
    B, NH, S, DK, DV = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    q = torch.randn(B, NH, S, DK, **kw).bfloat16()
    k = torch.randn(B, NH, S, DK, **kw).bfloat16()
    v = torch.randn(B, NH, S, DV, **kw).bfloat16()
    i = torch.randn(B, NH, S, **kw) * 2
    f = torch.randn(B, NH, S, **kw) * 2 + 3
    return [x.requires_grad_(grad) for x in (q, k, v, i, f)]


def fwbw(
    inputs: list[torch.Tensor], dh: torch.Tensor, variant: str, chunk: int, tiles: TileConfig | None = None
) -> list[torch.Tensor]:
    """One forward and backward pass (``tiles``: the table's when ``None``): ``[h, dq, dk, dv, di, df]``.
    Gradients are reset first, as the harness does (no accumulation kernels in the pass)."""
    for x in inputs:
        x.grad = None
    h = mlstm_tfla(*inputs, variant=variant, chunk_size=chunk, tiles=tiles)
    h.backward(dh)
    return [h.detach()] + [x.grad for x in inputs]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8,8,8192,256,512", help="B,NH,S,DHQK,DHHV")
    p.add_argument("--chunk", default="128", help="chunk size, or a comma list with --times")
    p.add_argument("--variant", default="sig", choices=("sig", "exp"))
    p.add_argument("--mode", default="fw", choices=("fw", "fwbw"))
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--times", action="store_true", help="print each kernel's CUDA time per pass (us)")
    a = p.parse_args()
    chunks = [int(c) for c in a.chunk.split(",")]
    inputs = make_inputs(tuple(int(x) for x in a.shape.split(",")), grad=a.mode == "fwbw")
    dh = torch.randn_like(inputs[2])

    def one_pass(chunk: int) -> None:
        if a.mode == "fwbw":
            fwbw(inputs, dh, a.variant, chunk)
        else:
            mlstm_tfla(*inputs, variant=a.variant, chunk_size=chunk)

    if not a.times:
        for _ in range(a.passes):
            one_pass(chunks[0])
        torch.cuda.synchronize()
        print(f"{a.passes} {a.mode} passes at {a.shape}, chunk {chunks[0]}, {a.variant}: done")
        return 0
    table = {c: kernel_times(lambda c=c: one_pass(c), a.passes) for c in chunks}
    names = sorted({n for t in table.values() for n in t}, key=lambda n: -table[chunks[-1]].get(n, 0.0))
    print(f"{a.mode} {a.variant} at {a.shape}: CUDA us per pass")
    print(f"{'kernel':32s}" + "".join(f"{'L=' + str(c):>10s}" for c in chunks))
    for n in names:
        print(f"{n[:32]:32s}" + "".join(f"{table[c].get(n, 0.0):10.1f}" for c in chunks))
    totals = {c: sum(t.values()) for c, t in table.items()}
    print(f"{'all kernels':32s}" + "".join(f"{totals[c]:10.1f}" for c in chunks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
