"""Gluon kernels: compiled for sm_90 here without a GPU (Triton's ptxas), run against float64 on the device."""

from __future__ import annotations

import pytest
import torch

gluon = pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper", reason="this Triton has no Gluon")

from kernels.gluon import support, ws_matmul  # noqa: E402

HOPPER_SMEM_BYTES = 227 * 1024  # the most dynamic shared memory one block of an sm_90 GPU may take


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ws_matmul_lowers_to_warp_specialized_wgmma(dtype: torch.dtype) -> None:
    """The kernel compiles to a cubin whose PTX has the asynchronous wgmma, the TMA loads, the mbarrier waits and
    the per-partition register split (``setmaxnreg``) of a warp-specialized kernel, in sm_90's shared memory."""
    m, n, k = 256, 256, 512
    a, b, c = torch.empty(m, k, dtype=dtype), torch.empty(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype)
    a_desc, b_desc, c_desc = ws_matmul.descriptors(a, b, c, 128, 128, 64)
    compiled = support.compile_for(
        ws_matmul.ws_matmul_kernel,
        {"a_desc": a_desc, "b_desc": b_desc, "c_desc": c_desc, "K": k},
        {"STAGES": 3, "INSTR_N": ws_matmul.instr_n(128, 128, 4), "num_warps": 4},
    )
    ptx = compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    for instruction in ("wgmma.mma_async", "cp.async.bulk.tensor", "mbarrier.try_wait", "setmaxnreg"):
        assert instruction in ptx, f"{instruction} missing from the PTX"
    assert (".bf16" if dtype == torch.bfloat16 else ".f16") in next(
        x for x in ptx.splitlines() if "wgmma.mma_async" in x
    )
    assert 3 * (128 * 64 + 64 * 128) * 2 <= compiled.metadata.shared <= HOPPER_SMEM_BYTES


@pytest.mark.parametrize(("block_m", "block_n", "num_warps"), [(128, 128, 4), (64, 256, 4), (128, 256, 8)])
def test_instr_n_is_a_legal_wgmma_width(block_m: int, block_n: int, num_warps: int) -> None:
    n = ws_matmul.instr_n(block_m, block_n, num_warps)
    assert n % 8 == 0 and 8 <= n <= 256 and block_n % n == 0


def test_unavailable_reason_names_the_gpu_when_there_is_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "GPU" in (support.unavailable_reason() or "")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k"), [(256, 256, 512), (300, 136, 200), (1024, 2048, 4096)])
def test_ws_matmul_matches_float64(m: int, n: int, k: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh random inputs, shapes that are not multiples of the blocks, output poisoned with NaN beforehand."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if (reason := support.unavailable_reason()) is not None:
        pytest.skip(reason)
    gen = torch.Generator(device="cuda").manual_seed(torch.seed() % 2**31)
    a = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
    b = torch.randn(k, n, device="cuda", dtype=dtype, generator=gen)
    out = ws_matmul.ws_matmul(a, b, out=torch.full((m, n), float("nan"), device="cuda", dtype=dtype)).double()
    ref = a.double() @ b.double()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < (5e-3 if dtype == torch.float16 else 2e-2), f"relative error {err:.2e}"
