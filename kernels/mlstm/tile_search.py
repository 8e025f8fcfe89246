"""The tile candidates ``bench tune`` tries, per kernel of ``kernels.mlstm.tiles.KERNELS``: pure functions of the
problem's chunk size and head dims (no tensor, no GPU), so a search space is reproducible and testable.

Families: ``rolled`` (``candidates``: head-dim slices looped inside the kernel), ``unrolled``
(``unrolled_candidates``: the ``unroll_slices`` tiles of the intra-chunk kernels), ``all`` (both) and ``small``
(``small_candidates``: whole head-dim tiles for head dims up to 128).
"""

from __future__ import annotations

import itertools

import triton

from kernels.mlstm.cost import LAUNCH_NAMES
from kernels.mlstm.tiles import INTRA_CHUNK, KERNELS, STATE_READERS, KernelTiles, unrolls_head_slices

FAMILIES = ("rolled", "unrolled", "all", "small")

# Kernel -> (the head-dim tile its grid is split over, the one it loops over inside).
SPLIT = {"fw_states": ("BK", "BV"), "bw_states": ("BK", "BV"), **{k: v[:2] for k, v in INTRA_CHUNK.items()}}
# Kernel -> the Triton function it launches (its name in a profile; kernels.mlstm.cost lists the Triton one first).
KERNEL_FUNCTIONS = {kernel: names[0] for kernel, names in LAUNCH_NAMES.items()}


def candidates(kernel: str, pipelined_states: bool = False, chunk: int = 128) -> list[KernelTiles]:
    """Head-dim tiles 64..256 on the split dim, 64/128 inside; 4/8 warps; 2/3 stages (1 as well for the
    kernels that read the chunk states; the ``STATE_READERS``' state-loading loop runs 1 stage for 16-bit states
    unless ``pipelined_states`` gives it the kernel's stages); token tiles 64 (and 128; fw_states also 32).
    From chunk 256 on, where the intra-chunk products dominate, also token tiles of 128 x 64, 64 x 128 and
    128 x 128 with 8 warps, and for fw_output the whole-width BV 512 (no recomputed q k^T at DHHV 512)."""
    split, inner = SPLIT[kernel]
    reader = kernel in STATE_READERS
    stages = (1, 2, 3) if reader else (2, 3)
    out = []
    for s, i, w, st in itertools.product((64, 128, 256), (64, 128), (4, 8), stages):
        state_stages = st if reader and pipelined_states else None
        out.append(KernelTiles(**{split: s, inner: i}, num_warps=w, num_stages=st, state_stages=state_stages))
    for s in (64, 128):
        out.append(KernelTiles(BQ=128, BKV=128, **{split: s, inner: 64}, num_warps=8, num_stages=2))
    if kernel in ("fw_states", "bw_states"):  # token slices of 32 and 128 (one slice per chunk at chunk 128)
        for bq, s, w in itertools.product((32, 128), (64, 128), (4, 8)):
            out.append(KernelTiles(BQ=bq, BKV=bq, BK=s, BV=128, num_warps=w, num_stages=2))
    if kernel in ("fw_output", "bw_dq"):
        out.append(KernelTiles(BQ=128, BKV=64, **{split: 64, inner: 64}, num_warps=8, num_stages=2))
    if kernel in ("bw_dk", "bw_dv"):
        out.append(KernelTiles(BQ=64, BKV=128, **{split: 64, inner: 64}, num_warps=8, num_stages=2))
    if chunk >= 256 and kernel not in ("fw_states", "bw_states"):
        for (bq, bkv), s, i in itertools.product(((128, 64), (64, 128), (128, 128)), (128, 256), (64, 128)):
            out.append(KernelTiles(BQ=bq, BKV=bkv, **{split: s, inner: i}, num_warps=8, num_stages=2))
        if kernel == "fw_output":
            for i, w in itertools.product((64, 128), (4, 8)):
                out.append(KernelTiles(BV=512, BK=i, num_warps=w, num_stages=2))
    return list(dict.fromkeys(out))


def unrolled_candidates(kernel: str, dhqk: int, dhhv: int) -> list[KernelTiles]:
    """``unroll_slices`` tiles of an intra-chunk kernel: the sliced head dim whole (its operand loads once) or in
    halves, split tiles 128..512, fixed x streamed token tiles 64 x 32, 64 x 64, 128 x 64; 4/8 warps, 2/3 stages;
    kept where the fp32 accumulator takes at most 128 registers a thread and the bf16 tiles fit
    (``unrolls_head_slices``)."""
    if kernel not in INTRA_CHUNK:
        return []
    split, inner, streamed = INTRA_CHUNK[kernel]
    d, other = (dhqk, dhhv) if inner == "BK" else (dhhv, dhqk)
    fixed = "BQ" if streamed == "BKV" else "BKV"
    out = []
    whole = triton.next_power_of_2(d)
    for s, i, (f, st), w, stages in itertools.product(
        (128, 256, 512), (whole, whole // 2), ((64, 32), (64, 64), (128, 64)), (4, 8), (2, 3)
    ):
        t = KernelTiles(
            **{split: s, inner: i, fixed: f, streamed: st}, num_warps=w, num_stages=stages, unroll_slices=True
        )
        if (
            s <= triton.next_power_of_2(other)
            and f * s <= 4096 * w
            and unrolls_head_slices(kernel, t, dhqk, dhhv, input_bytes=2)
        ):
            out.append(t)
    return out


def small_candidates(kernel: str, dhqk: int, dhhv: int) -> list[KernelTiles]:
    """Tiles for small head dims (both at most 128): each head dim in one tile, so the token tiles carry the work:
    32..128 query and key tokens, 2/4/8 warps, 2/3 stages, intra-chunk kernels rolled and ``unroll_slices``."""
    if max(dhqk, dhhv) > 128:
        return []
    heads = {"BK": triton.next_power_of_2(dhqk), "BV": triton.next_power_of_2(dhhv)}
    tokens = ((64, 64), (128, 64), (64, 128), (128, 128), (32, 64), (64, 32))
    if kernel in ("fw_states", "bw_states"):  # BQ is their token slice
        tokens = ((32, 32), (64, 64), (128, 128))
    unroll = (False, True) if kernel in INTRA_CHUNK else (False,)
    return [
        KernelTiles(BQ=bq, BKV=bkv, **heads, num_warps=w, num_stages=st, unroll_slices=u)
        for (bq, bkv), w, st, u in itertools.product(tokens, (2, 4, 8), (2, 3), unroll)
    ]


def search_space(
    kernel: str, family: str, chunk: int, dhqk: int, dhhv: int, pipelined_states: bool = False
) -> list[KernelTiles]:
    """The candidates of ``family`` (``FAMILIES``) for ``kernel`` that the problem does not clamp (``fit`` keeps
    them as they are), without duplicates. ``ValueError`` naming the kernel or family when unknown."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    if family == "small":
        found = small_candidates(kernel, dhqk, dhhv)
    else:
        found = candidates(kernel, pipelined_states, chunk) if family != "unrolled" else []
        found += unrolled_candidates(kernel, dhqk, dhhv) if family != "rolled" else []
    return [t for t in dict.fromkeys(found) if t.fit(chunk, dhqk, dhhv) == t]
