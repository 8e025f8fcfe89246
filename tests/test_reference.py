"""The two PyTorch references agree in float64 (forward and every gradient), both variants."""

from __future__ import annotations

import pytest
import torch

from kernels.mlstm.reference import MLSTMStates, mlstm_parallel, mlstm_recurrent


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("variant,normalize", [("exp", True), ("sig", True), ("sig", False)])
@pytest.mark.parametrize("with_initial", [False, True])
def test_recurrent_equals_parallel(variant: str, normalize: bool, with_initial: bool) -> None:
    B, NH, S, DK, DV = 2, 2, 29, 16, 24

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, dtype=torch.float64) * scale).requires_grad_()

    q, k, v = leaf(B, NH, S, DK), leaf(B, NH, S, DK), leaf(B, NH, S, DV)
    i, f = leaf(B, NH, S, scale=3.0), leaf(B, NH, S, scale=3.0)
    init = MLSTMStates(leaf(B, NH, DK, DV), leaf(B, NH, DK), leaf(B, NH)) if with_initial else None
    h_rec, _ = mlstm_recurrent(q, k, v, i, f, variant=variant, normalize=normalize, initial=init)
    h_par = mlstm_parallel(q, k, v, i, f, variant=variant, normalize=normalize, initial=init)
    assert _rel(h_rec, h_par) < 1e-10
    dh = torch.randn_like(h_rec)
    leaves = [q, k, v, i, f] + ([init.C, init.n] if init else [])
    g_rec = torch.autograd.grad(h_rec, leaves, dh, allow_unused=True)
    g_par = torch.autograd.grad(h_par, leaves, dh, allow_unused=True)
    for a, b in zip(g_rec, g_par):
        if a is None or b is None:  # n0 does not enter mLSTMsig without the normalizer
            assert a is None and b is None and not normalize
            continue
        assert _rel(a, b) < 1e-10


def test_unknown_variant_is_refused() -> None:
    x = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="variant"):
        mlstm_parallel(x, x, x, x[..., 0], x[..., 0], variant="tanh")
