"""``kernels.gluon.config``: the options the Gluon backend runs its kernels with (pure; no kernel launch)."""

from __future__ import annotations

import pytest
import torch

from kernels.gluon import mlstm_bw_dv, mlstm_fw_output
from kernels.gluon.config import BwDvOptions, FwOutputOptions, bw_dv_options, fw_output_options


def test_the_measured_shapes_get_the_fastest_measured_options() -> None:
    """v14 of docs/performance.md: two consumers, state pieces; key tiles of 64 rows at DHQK 256, 32 at 128."""
    assert fw_output_options(256, 512, 128) == FwOutputOptions(64, 64, 256, True, 2)
    assert fw_output_options(128, 256, 128) == FwOutputOptions(64, 32, 256, True, 2)
    assert bw_dv_options(256, 512, 128) == BwDvOptions(64, 64, 256, True, 2)
    assert bw_dv_options(128, 256, 128) == BwDvOptions(64, 64, 256, True, 2)
    assert fw_output_options(256, 512, 64).consumers == bw_dv_options(256, 512, 64).consumers == 1  # one 64-row tile


@pytest.mark.parametrize("chunk", [64, 128, 256, 1024])
@pytest.mark.parametrize("dhqk,dhhv", [(16, 16), (32, 64), (64, 48), (104, 200), (128, 256), (256, 512), (256, 64)])
def test_every_choice_is_one_the_kernels_take(dhqk: int, dhhv: int, chunk: int) -> None:
    """The chosen options pass each kernel's own checks (``launch_args``, on CPU tensors: no launch) wherever the
    backend takes the problem (16-bit inputs, DHQK <= 256, a chunk that is a multiple of 64)."""
    rows, bh, nc = chunk, 1, 1
    q = torch.zeros(1, bh, rows, dhqk, dtype=torch.float16)
    v = torch.zeros(1, bh, rows, dhhv, dtype=torch.float16)
    f32 = {"dtype": torch.float32}
    gates = [torch.zeros(bh, nc * chunk, **f32) for _ in range(2)]
    c_st = torch.zeros(bh, nc, dhqk, dhhv, dtype=torch.float16)
    n_st, m_st = torch.zeros(bh, nc + 1, dhqk, **f32), torch.zeros(bh, nc + 1, **f32)
    tok = [torch.zeros(bh, nc * chunk, **f32) for _ in range(2)]
    fw = fw_output_options(dhqk, dhhv, chunk)
    mlstm_fw_output.launch_args(q, q, v, *gates, c_st, n_st, m_st, v, *tok, chunk, False, False, 1e-6, **fw.kwargs())
    dc_st = torch.zeros(bh, nc + 1, dhqk, dhhv, dtype=torch.float16)
    dv = bw_dv_options(dhqk, dhhv, chunk)
    mlstm_bw_dv.launch_args(q, q, v, *gates, tok[0], dc_st, m_st, tok[1], v, chunk, False, **dv.kwargs())


def test_the_choice_is_cached_and_cannot_be_changed() -> None:
    assert fw_output_options(256, 512, 128) is fw_output_options(256, 512, 128)
    with pytest.raises(AttributeError):
        fw_output_options(256, 512, 128).consumers = 1  # type: ignore[misc]
