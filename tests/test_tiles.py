"""Tile selection (``kernels.mlstm.tiles``): which table serves which problem, and the shared-memory rules behind
it. Pure functions: nothing here launches a kernel (the numerical kernel tests are in ``test_tfla.py``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import kernels.mlstm.tiles as tiling
from kernels.mlstm.tiles import KernelTiles, TileConfig


def test_16bit_state_loops_run_without_software_pipelining() -> None:
    """Triton 3.6 on the H100 miscompiled pipelined 16-bit chunk-state loads (docs/performance.md, v2): the
    state-loading loop of each reader runs 1 stage unless its tiles set ``state_stages`` (the GPU table does,
    after a bit-exact check, v7); every other loop keeps the kernel's stages."""
    tiles = replace(TileConfig.uniform(KernelTiles(num_stages=2)), fw_states=KernelTiles(num_stages=3))
    for dtype in (torch.bfloat16, torch.float16):
        for chunk in (64, 128, 1024):
            table = tiling.choose_tiles(chunk, 256, 512, interpret=False, dtype=dtype)
            for config in (tiles, table):
                fixed = tiling.unpipelined_state_loads(config, dtype)
                for name in tiling.KERNELS:
                    before, after = getattr(config, name), getattr(fixed, name)
                    assert after.num_stages == before.num_stages
                    unset = 1 if name in tiling.STATE_READERS else before.num_stages
                    assert after.state_loop_stages == (before.state_stages or unset)
            launched = tiling.unpipelined_state_loads(table, dtype)
            assert launched.fw_output.state_loop_stages == (2 if chunk >= tiling.LARGE_CHUNK else 1)
            assert launched.bw_dq.state_loop_stages == 2
    assert tiling.unpipelined_state_loads(tiles, torch.float32) == tiles
    explicit = replace(tiles, fw_output=KernelTiles(num_stages=2, state_stages=3))
    assert tiling.unpipelined_state_loads(explicit, torch.bfloat16).fw_output.state_loop_stages == 3


def test_wide_qk_head_dims_pipeline_the_dq_state_loop() -> None:
    """bw_dq takes WIDE_QK_TILES (a pipelined state loop) from DHQK 256 on in 16-bit, where it was faster on the
    H100; at the paper's DHQK 128 and in fp32 it keeps the GPU_TILES entry (1-stage state loop for 16-bit)."""
    for chunk in (128, 1024):
        wide = tiling.choose_tiles(chunk, 256, 512, interpret=False).bw_dq
        assert wide == tiling.WIDE_QK_TILES["bw_dq"].fit(chunk, 256, 512)
        assert tiling.slice_args("bw_dq", wide, 256, 512, 2)["BS"] == 64
        paper = tiling.choose_tiles(chunk, 128, 256, interpret=False).bw_dq
        assert paper == tiling.GPU_TILES.bw_dq.fit(chunk, 128, 256)
        assert tiling.slice_args("bw_dq", paper, 128, 256, 2)["BS"] == paper.BV
        assert tiling.choose_tiles(chunk, 256, 512, interpret=False, dtype=torch.float32).bw_dq.state_slice is None


@pytest.mark.parametrize(
    ("dtype", "chunk", "dqk", "dv", "ahead"),
    [(torch.bfloat16, 128, 256, 512, True), (torch.bfloat16, 1024, 256, 512, True)]
    + [(torch.bfloat16, 128, 128, 256, True), (torch.bfloat16, 256, 64, 64, True)]
    + [(torch.bfloat16, 64, 256, 512, False), (torch.bfloat16, 128, 64, 64, False)]
    + [(torch.bfloat16, 256, 128, 128, False), (torch.bfloat16, 256, 16, 32, False)]
    + [(torch.float16, 128, 256, 512, False), (torch.float32, 128, 256, 512, False)],
)
def test_bw_states_reads_the_state_ahead_where_ptxas_keeps_it(
    dtype: torch.dtype, chunk: int, dqk: int, dv: int, ahead: bool
) -> None:
    """bf16, 4+ warps, at most a 64 x 128 state tile and several token slices a chunk: the 7B and paper shapes'
    64 x 128 tile with 64-token slices, the 64-wide table's 8-warp 64 x 64 tile from chunk 256 on. Not one slice a
    chunk (chunk 64 at 7B; chunk 128 of the small tables, whose slices are 128 tokens), nor the 128 x 128 tile of
    head dims 128 or the 2-warp table of head dims 32, nor fp16 or fp32: those spill in the sm_90 compile (fp32
    states also cannot travel as int32 words of pairs). ``tests/test_state_kernel_fit.py`` checks the compile."""
    tiles = tiling.choose_tiles(chunk, dqk, dv, interpret=False, dtype=dtype).bw_states
    assert tiling.reads_state_ahead(tiles, dtype, chunk) is ahead


@pytest.mark.parametrize("chunk", [128, 256, 512, 4096])
def test_large_chunks_take_their_own_tiles(chunk: int) -> None:
    """At the 7B head dims in bf16: UNROLLED_TILES at every chunk size, LARGE_CHUNK_TILES from LARGE_CHUNK on
    (clamped to the problem), WIDE_QK_TILES (DHQK 256); every other kernel keeps GPU_TILES. fp32 keeps the rolled table at every chunk."""
    tiles = tiling.choose_tiles(chunk, 256, 512, interpret=False)
    large = chunk >= tiling.LARGE_CHUNK
    for name in tiling.KERNELS:
        expected = (tiling.LARGE_CHUNK_TILES.get(name) if large else None) or tiling.UNROLLED_TILES.get(name)
        expected = expected or tiling.WIDE_QK_TILES.get(name) or getattr(tiling.GPU_TILES, name)
        assert getattr(tiles, name) == expected.fit(chunk, 256, 512)
    assert large == tiles.fw_output.unroll_slices
    fp32 = tiling.choose_tiles(chunk, 256, 512, interpret=False, dtype=torch.float32)
    assert not any(getattr(fp32, name).unroll_slices for name in tiling.KERNELS)


@pytest.mark.parametrize(
    "dhqk,dhhv,dtype,unrolled",
    [
        (256, 512, torch.bfloat16, {"fw_output", "bw_dk", "bw_dv"}),  # 7B: the tuned shape
        (128, 256, torch.float16, {"fw_output", "bw_dk", "bw_dv"}),  # paper: the tiles clamp to whole head dims
        (32, 64, torch.bfloat16, set(tiling.INTRA_CHUNK)),  # SMALL_HEAD_TILES: all four unrolled
        (512, 1024, torch.bfloat16, set()),  # headdim preset's widest: two slices per stage would not fit
        (256, 1024, torch.bfloat16, {"fw_output", "bw_dv"}),  # bw_dk's DHHV 1024 would not
        (64, 128, torch.float32, set()),  # tuned in bf16: fp32 keeps the rolled table
    ],
)
def test_unrolled_tiles_only_where_they_fit(dhqk: int, dhhv: int, dtype: torch.dtype, unrolled: set) -> None:
    """choose_tiles takes an unrolled entry only where ``unrolled_smem`` fits ``UNROLLED_SMEM`` (under the H100's
    227 KiB per block), else the rolled GPU_TILES entry: every chosen tile launches unrolled as chosen."""
    tiles = tiling.choose_tiles(1024, dhqk, dhhv, interpret=False, dtype=dtype)
    for name in tiling.INTRA_CHUNK:
        t = getattr(tiles, name)
        assert t.unroll_slices == (name in unrolled)
        assert tiling.unrolls_head_slices(name, t, dhqk, dhhv, dtype.itemsize) == t.unroll_slices
        if not t.unroll_slices and dtype != torch.float32 and max(dhqk, dhhv) > max(tiling.SMALL_HEAD_TILES):
            rolled = tiling.WIDE_QK_TILES.get(name) if dhqk >= tiling.WIDE_QK else None
            assert t == (rolled or getattr(tiling.GPU_TILES, name)).fit(1024, dhqk, dhhv)
    # Triton allocated up to 5.6 KiB more than estimated for the tuner's 168 unrolled candidates (sm_90)
    assert tiling.UNROLLED_SMEM + 6 * 1024 <= 227 * 1024


@pytest.mark.parametrize(
    "dhqk,dhhv,width",
    [(16, 32, 32), (32, 32, 32), (32, 64, 64), (64, 64, 64), (64, 128, 128), (128, 128, 128), (128, 256, None)],
)
@pytest.mark.parametrize("chunk", [64, 128, 1024])
def test_small_head_dims_take_their_own_table(dhqk: int, dhhv: int, width: int | None, chunk: int) -> None:
    """16-bit inputs whose head dims are both at most 128 take the ``SMALL_HEAD_TILES`` entry of the narrowest
    width that holds them (clamped to the problem), at every chunk size, and every unrolled tile there fits its
    shared memory; the paper's 128 / 256 and fp32 inputs do not."""
    for dtype in (torch.bfloat16, torch.float16):
        tiles = tiling.choose_tiles(chunk, dhqk, dhhv, interpret=False, dtype=dtype)
        if width is None:
            assert all(tiles != t.fit(chunk, dhqk, dhhv) for t in tiling.SMALL_HEAD_TILES.values())
            continue
        assert tiles == tiling.SMALL_HEAD_TILES[width].fit(chunk, dhqk, dhhv)
        assert (tiles.fw_output.BK, tiles.fw_output.BV) == (dhqk, dhhv)  # whole head dims in one tile
        for name in tiling.INTRA_CHUNK:
            assert tiling.unrolls_head_slices(name, getattr(tiles, name), dhqk, dhhv, dtype.itemsize)
    fp32 = tiling.choose_tiles(chunk, dhqk, dhhv, interpret=False, dtype=torch.float32)
    assert not any(getattr(fp32, name).unroll_slices for name in tiling.KERNELS)


@pytest.mark.parametrize("batch_heads,warps", [(32, tiling.SMALL_GRID_STATE_WARPS), (64, 4), (0, 4)])
def test_state_kernel_warps_follow_its_grid(batch_heads: int, warps: int) -> None:
    """Paper head dims (128 / 256) on 132 SMs: 32 heads give fw_states 128 programs, one per SM, so it runs
    more warps; 64 heads (256 programs) and an unknown head count keep the table's 4. No other kernel changes."""
    table = tiling.choose_tiles(128, 128, 256, interpret=False)
    tiles = tiling.choose_tiles(128, 128, 256, False, torch.bfloat16, batch_heads, 132)
    assert table.fw_states.num_warps == 4
    assert tiles.fw_states.num_warps == warps
    assert replace(tiles, fw_states=table.fw_states) == table
