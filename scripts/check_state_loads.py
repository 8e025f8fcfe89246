"""Device check of 16-bit chunk states, per tile config: the store path (fw_states writing bf16 vs fp32 states
cast afterwards: must be bit-identical) and the load path (fw_output reading bf16 states vs the same values
stored as fp32: must give the same h up to the tiles' rounding, ~1e-5). On Triton 3.6 / H100 the load path is
wrong when the state loop is software-pipelined, for some tiles (results/h100/logs/bf16_state_loads*.log); rerun
after a Triton upgrade before pipelining it (``kernels.mlstm.tiles.STATE_READERS``).
Usage: ``python scripts/check_state_loads.py [--chunk 128] [--variants sig,exp] [--state-stages 1] [--skip-store]
[--shape B,NH,S,DHQK,DHHV]`` (CUDA only). ``--state-stages 0`` pipelines the state loop like the rest of the kernel;
each tile's h is then also compared with the same tiles' h with a 1-stage state loop, which must be identical."""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, replace

import torch

import kernels.mlstm.chunk_fw as T
from bench.profile import tfla_inputs
from kernels.mlstm.accuracy import relative_error as rel
from kernels.mlstm.gates import gate_arrays, stabilizer_per_token
from kernels.mlstm.tiles import KernelTiles

dev, dt = "cuda", torch.bfloat16
f32 = dict(dtype=torch.float32, device=dev)


@dataclass
class StateLoadCase:
    """Inputs of the spec's factory (``bench.profile.tfla_inputs``, seed 0) seen per head: q, k (BH, S, DK),
    v (BH, S, DV), gates (B, NH, S); chunk size L."""

    L: int
    B: int = 2
    NH: int = 4
    S: int = 2048
    DK: int = 256
    DV: int = 512

    def __post_init__(self) -> None:
        self.BH, self.NC = self.B * self.NH, self.S // self.L
        self.SP = self.NC * self.L
        q, k, v, self.i, self.f = tfla_inputs((self.B, self.NH, self.S, self.DK, self.DV), grad=False)
        self.q, self.k, self.v = (x.reshape(self.BH, self.S, -1) for x in (q, k, v))


def states(P: StateLoadCase, variant: str, sdt: torch.dtype, tiles: KernelTiles):
    """Chunk states of fw_states with ``tiles``, stored in ``sdt``: ``gate_b, gate_i, C, n, m``."""
    gb, gi = gate_arrays(P.i, P.f, variant, P.L)
    c = torch.full((P.BH, P.NC, P.DK, P.DV), float("nan"), dtype=sdt, device=dev)
    last = torch.empty(P.BH, P.DK, P.DV, **f32)
    n = torch.empty(P.BH, P.NC + 1, P.DK, **f32)
    m = torch.empty(P.BH, P.NC + 1, **f32)
    T.launch_fw_states(P.k, P.v, gb, gi, None, c, n, m, last, P.L, variant == "exp", tiles)
    return gb, gi, c, n, m


def output(P: StateLoadCase, variant, gb, gi, c, n, m, tiles):
    """``h`` of fw_output with ``tiles`` from the chunk states ``c`` (bf16 or fp32), ``n``, ``m``."""
    h = torch.full((P.BH, P.S, P.DV), float("nan"), dtype=dt, device=dev)
    exp = variant == "exp"
    m_tok = stabilizer_per_token(gb, gi, m, P.L) if exp else torch.zeros(P.BH, P.SP, **f32)
    z = torch.empty(P.BH, P.SP, **f32)
    T.launch_fw_output(P.q, P.k, P.v, gb, gi, c, n, m, h, m_tok, z, P.L, exp, True, 1e-6, tiles)
    torch.cuda.synchronize()
    return h


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--variants", default="sig,exp")
    p.add_argument("--state-stages", type=int, default=1, help="stages of fw_output's state loop (0: the kernel's)")
    p.add_argument("--skip-store", action="store_true", help="check the load path only")
    p.add_argument("--shape", default="2,4,2048,256,512", help="B,NH,S,DHQK,DHHV")
    a = p.parse_args()
    state_stages = a.state_stages or None
    P = StateLoadCase(a.chunk, *(int(x) for x in a.shape.split(",")))
    print(f"B={P.B} NH={P.NH} S={P.S} DHQK={P.DK} DHHV={P.DV} chunk {P.L}")
    for variant in a.variants.split(","):
        ref32 = states(P, variant, torch.float32, KernelTiles(BK=64, BV=64, num_stages=1))
        store_tiles = [] if a.skip_store else list(itertools.product((64, 128), (64, 128), (4, 8), (1, 2, 3)))
        if store_tiles:
            print(f"== {variant}: store path (fw_states bf16 vs fp32 cast), per tile")
        for bk, bv, w, st in store_tiles:
            t = KernelTiles(BK=bk, BV=bv, num_warps=w, num_stages=st)
            try:
                c16 = states(P, variant, dt, t)[2]
            except Exception as e:  # noqa: BLE001
                print(f"  states BK{bk} BV{bv} w{w} s{st}: {type(e).__name__}")
                continue
            d = (c16.float() - ref32[2].to(dt).float()).abs().max().item()
            print(
                f"  states BK{bk} BV{bv} w{w} s{st}: max|bf16 - fp32.to(bf16)| = {d:.3g} nan={c16.isnan().any().item()}"
            )
        gb, gi, c32, n, m = ref32
        cb = c32.to(dt)
        h_ref = output(P, variant, gb, gi, cb.float(), n, m, KernelTiles(BK=64, BV=128, num_stages=1))
        print(
            f"== {variant}: load path (fw_output, bf16 C, state loop {a.state_stages or 'kernel'} stages): vs fp32 C"
            " (64 x 128 tiles, 1 stage); vs the same tiles with a 1-stage state loop (must be identical)"
        )
        for bk, bv, w, st in itertools.product((64, 128), (64, 128, 256), (4, 8), (2, 3)):
            t = KernelTiles(BK=bk, BV=bv, num_warps=w, num_stages=st, state_stages=state_stages)
            try:
                hb = output(P, variant, gb, gi, cb, n, m, t)
                h1 = (
                    hb if t.state_loop_stages == 1 else output(P, variant, gb, gi, cb, n, m, replace(t, state_stages=1))
                )
            except Exception as e:  # noqa: BLE001
                print(f"  out BK{bk} BV{bv} w{w} s{st}: {type(e).__name__}")
                continue
            err, same = rel(hb, h_ref), torch.equal(hb, h1)
            verdict = "ok" if err < 1e-4 and same else "WRONG"
            print(f"  out BK{bk} BV{bv} w{w} s{st}: vs fp32 states {err:.3g}, equal to 1-stage loop: {same} {verdict}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
