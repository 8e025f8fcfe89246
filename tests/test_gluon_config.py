"""``kernels.gluon.config``: the options the Gluon backend runs its kernels with (pure; no kernel launch)."""

from __future__ import annotations

import pytest

from kernels.gluon import mlstm_bw_dv, mlstm_bw_states, mlstm_fw_output, mlstm_fw_states
from kernels.gluon.config import (
    BwDvOptions,
    BwStatesOptions,
    FwOutputOptions,
    FwStatesOptions,
    bw_dv_options,
    bw_states_options,
    fw_output_options,
    fw_states_options,
)
from tests.gluon_cases import bw_dv_tensors, bw_states_tensors, fw_output_tensors, fw_states_tensors


def test_the_measured_shapes_get_the_fastest_measured_options() -> None:
    """v14 of docs/performance.md: two consumers, state pieces; key tiles of 64 rows at DHQK 256, 32 at 128."""
    assert fw_output_options(256, 512, 128) == FwOutputOptions(64, 64, 256, True, 2)
    assert fw_output_options(128, 256, 128) == FwOutputOptions(64, 32, 256, True, 2)
    assert bw_dv_options(256, 512, 128) == BwDvOptions(64, 64, 256, True, 2)
    assert bw_dv_options(128, 256, 128) == BwDvOptions(64, 64, 256, True, 2)
    assert fw_output_options(256, 512, 64).consumers == bw_dv_options(256, 512, 64).consumers == 1  # one 64-row tile
    # v25, v29, v30: the state kernels with two consumers and 128-token slices (the forward's gates packed), the
    # forward's up to chunk 256 (Triton's from 512 on) where the tiles are not wide, the backward's up to 1024
    assert fw_states_options(128, 256, 128) == fw_states_options(128, 256, 256) == FwStatesOptions(128, 128, 2, 2, True)
    assert bw_states_options(128, 256, 128) == bw_states_options(128, 256, 1024) == BwStatesOptions(128, 128, 2, 2)
    assert fw_states_options(128, 256, 512) is None
    # v33..v35: at the 7B head dims both walks take 256-column tiles (64-token slices 3 deep; the forward one store
    # buffer a consumer, the backward one forward state slot), the forward up to chunk 1024, the backward from 256 on
    wide = FwStatesOptions(64, 256, 3, 2, True, store_bufs=1)
    wide_bw = BwStatesOptions(64, 256, 3, 2, state_slots=1)
    for chunk in (128, 256, 512, 1024):
        assert fw_states_options(256, 512, chunk) == wide
    for chunk in (256, 512, 1024):
        assert bw_states_options(256, 512, chunk) == wide_bw
    assert bw_states_options(256, 512, 128) == BwStatesOptions(128, 128, 2, 2)  # v35: wide there 1.02x
    assert fw_states_options(256, 512, 2048) is bw_states_options(256, 512, 2048) is None
    assert fw_states_options(64, 64, 64) == FwStatesOptions(64, 64, 3, 1, True)  # one 64-row tile, 64-token slices
    assert bw_states_options(64, 64, 64) == BwStatesOptions(64, 64, 3, 1)


@pytest.mark.parametrize("chunk", [64, 128, 192, 256, 1024])
@pytest.mark.parametrize("dhqk,dhhv", [(16, 16), (32, 64), (64, 48), (104, 200), (128, 256), (256, 512), (256, 64)])
def test_every_choice_is_one_the_kernels_take(dhqk: int, dhhv: int, chunk: int) -> None:
    """The chosen options pass each kernel's own checks (``launch_args``, on CPU tensors: no launch) wherever the
    backend takes the problem (16-bit inputs, DHQK <= 256, a chunk that is a multiple of 64)."""
    fw = fw_output_options(dhqk, dhhv, chunk)
    mlstm_fw_output.launch_args(*fw_output_tensors(dhqk, dhhv, chunk, chunk), chunk, False, False, 1e-6, **fw.kwargs())
    dv = bw_dv_options(dhqk, dhhv, chunk)
    mlstm_bw_dv.launch_args(*bw_dv_tensors(dhqk, dhhv, chunk, chunk), chunk, False, **dv.kwargs())
    if (states := fw_states_options(dhqk, dhhv, chunk)) is not None:
        mlstm_fw_states.launch_args(*fw_states_tensors(dhqk, dhhv, chunk, chunk), chunk, True, **states.kwargs())
    if (grads := bw_states_options(dhqk, dhhv, chunk)) is not None:
        mlstm_bw_states.launch_args(*bw_states_tensors(dhqk, dhhv, chunk, chunk), True, chunk, True, **grads.kwargs())


def test_the_choice_is_cached_and_cannot_be_changed() -> None:
    assert fw_output_options(256, 512, 128) is fw_output_options(256, 512, 128)
    with pytest.raises(AttributeError):
        fw_output_options(256, 512, 128).consumers = 1  # type: ignore[misc]
