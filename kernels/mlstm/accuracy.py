"""Accuracy of the TFLA kernels against the float64 recurrent reference, one random draw at a time.

Used by the kernel tests (bounds per output) and by ``scripts/precision_stats.py`` (worst case over many
draws). Errors are relative, ``||out - ref|| / ||ref||``; the reference runs on the inputs already rounded
to the kernel dtype, so only the kernel's own arithmetic is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.mlstm.reference import MLSTMStates, mlstm_recurrent
from kernels.mlstm.tfla import mlstm_tfla
from kernels.mlstm.tiles import TileConfig

GRADIENTS = ("q", "k", "v", "i", "f", "C0", "n0", "m0")


@dataclass(frozen=True)
class AccuracyCase:
    """One problem and input distribution: ``q, k ~ N(qk_mean, 1)`` (``|.|`` with ``positive_qk``),
    ``v ~ N(0, 1)``, ``i ~ N(0, i_scale^2)``, ``f ~ N(f_shift, 9)``; with states ``C0, m0 ~ N(0, 1)`` and
    ``n0 ~ N(qk_mean, 1)``. ``qk_mean`` defaults to 2 with the normalizer (so ``q.n`` stays away from 0,
    where ``h = N / |q.n|`` is ill-conditioned in any precision; with mean 1 about one fp16 draw in a
    hundred still lands near it) and 0 without. ``tiles`` overrides the
    kernels' tile table. ``term_scale`` measures each gradient against the size of its terms before they
    cancel (see ``relative_errors``)."""

    variant: str
    normalize: bool
    S: int
    DK: int
    DV: int
    L: int
    dtype: torch.dtype
    with_states: bool
    i_scale: float = 3.0
    f_shift: float = 2.0
    B: int = 1
    NH: int = 2
    positive_qk: bool = False
    qk_mean: float | None = None
    tiles: TileConfig | None = None
    term_scale: bool = False

    def inputs(self) -> list[torch.Tensor]:
        """``[q, k, v, i, f]`` plus ``[C0, n0, m0]`` with states; CPU tensors."""
        B, NH, S = self.B, self.NH, self.S
        mean = self.qk_mean if self.qk_mean is not None else 2.0 * self.normalize
        q = (torch.randn(B, NH, S, self.DK) + mean).to(self.dtype)
        k = (torch.randn(B, NH, S, self.DK) + mean).to(self.dtype)
        if self.positive_qk:
            q, k = q.abs(), k.abs()
        v = torch.randn(B, NH, S, self.DV).to(self.dtype)
        i = torch.randn(B, NH, S) * self.i_scale
        f = torch.randn(B, NH, S) * 3.0 + self.f_shift
        out = [q, k, v, i, f]
        if self.with_states:
            n0 = torch.randn(B, NH, self.DK) + mean
            out += [torch.randn(B, NH, self.DK, self.DV), n0.abs() if self.positive_qk else n0, torch.randn(B, NH)]
        return out


# (variant, normalize, S, DK, DV, L, with_states): the shapes of the kernel tests and of precision_stats.
SHAPES = (
    ("exp", True, 64, 32, 32, 16, False),  # S a multiple of L, several chunks
    ("exp", True, 45, 16, 48, 16, True),  # S not a multiple of L, DHQK != DHHV, initial/last states
    ("exp", True, 100, 48, 16, 128, False),  # one partial chunk, chunk > S (next power of two)
    ("sig", True, 37, 32, 16, 32, True),
    ("sig", False, 80, 16, 32, 16, True),
    ("sig", False, 64, 64, 64, 64, False),  # chunk == S
)
GATE_EXTREMES = ((-10.0, 20.0), (10.0, 20.0), (-10.0, 1.0), (10.0, 1.0))  # (f_shift, i_scale)


def signed_input_case(variant: str, dtype: torch.dtype) -> AccuracyCase:
    """Mean-zero q, k: both signs of ``q.n``, so some token's normalizer can land near 0 (S = 64, chunks of 16,
    initial states)."""
    return AccuracyCase(variant, True, 64, 32, 32, 16, dtype, True, qk_mean=0.0)


def gate_extreme_case(variant: str, f_shift: float, i_scale: float, dtype: torch.dtype) -> AccuracyCase:
    """Extreme gates: ``f ~ N(f_shift, 9)`` with ``f_shift = +-10``, non-negative ``q, k`` (so ``q.n`` stays
    away from 0), S = 48 in chunks of 16 with initial states. fp16 caps the input-gate spread at 20 / 3 (the
    issue's range, |i| <= ~20). Gradients are measured with ``term_scale``: with ``f = -10`` every token sees
    only itself, and with ``f = +10`` and input gates of spread 20 one token can outweigh all others in a
    normalized output (``h ~ v_s sign(q.k_s)``, whose gradient for ``q`` is 0), so plain relative errors of
    ``dq, di, df, dn0`` measure cancellations in the exact gradient (see ``relative_errors``), not the kernel."""
    if dtype == torch.float16:
        i_scale = min(i_scale, 20.0 / 3)
    return AccuracyCase(
        variant, True, 48, 16, 16, 16, dtype, True, i_scale=i_scale, f_shift=f_shift, positive_qk=True, term_scale=True
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64; ``inf`` when ``a`` holds NaN or Inf."""
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _term_scales(
    ref_in: list[torch.Tensor],
    ref_init: MLSTMStates | None,
    h_ref: torch.Tensor,
    cotangents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    kw: dict[str, object],
) -> list[torch.Tensor | None]:
    """Per gradient, the larger norm of two float64 reference gradients without cancellation: the share
    through the numerator alone, and the gradient for ``dh_t`` turned parallel to ``h_t`` (same norm), so
    that ``dh_t . h_t`` is ``|dh_t| |h_t|`` instead of a sum of terms of both signs."""
    dh, dC, dn = cotangents
    dh_par = h_ref * (dh.norm(dim=-1, keepdim=True) / h_ref.norm(dim=-1, keepdim=True).clamp_min(1e-300))
    norms: list[torch.Tensor | None] = [None] * len(ref_in)
    for detach, cot in ((True, dh), (False, dh_par)):
        h, last = mlstm_recurrent(*ref_in[:5], initial=ref_init, detach_normalizer=detach, **kw)
        loss = (h * cot).sum() + (last.C * dC).sum() + (last.n * dn).sum()
        for j, x in enumerate(torch.autograd.grad(loss, ref_in, allow_unused=True)):
            if x is not None:
                norms[j] = x.norm() if norms[j] is None else torch.maximum(norms[j], x.norm())
    return norms


def _output_errors(
    case: AccuracyCase, h: torch.Tensor, last: MLSTMStates, h_ref: torch.Tensor, last_ref: MLSTMStates
) -> dict[str, float]:
    """Errors of ``h`` and the last states (``last_m`` for mLSTMexp only) against the reference's; an
    ``AssertionError`` when ``h`` has the wrong dtype or shape."""
    if h.dtype != case.dtype or h.shape != h_ref.shape:
        raise AssertionError(f"h is {h.dtype} {tuple(h.shape)}, expected {case.dtype} {tuple(h_ref.shape)}")
    errors = {"h": relative_error(h, h_ref)}
    for name in ("C", "n") + (("m",) if case.variant == "exp" else ()):
        errors[f"last_{name}"] = relative_error(getattr(last, name), getattr(last_ref, name))
    return errors


def forward_errors(case: AccuracyCase, backend: str, device: str = "cpu") -> dict[str, float]:
    """One fresh draw, forward only and without a gradient (``torch.no_grad``, as inference runs it): errors of
    ``h`` and the last states (``last_C``, ``last_n``, ``last_m`` for mLSTMexp) of ``mlstm_tfla`` with ``backend``
    against the float64 recurrent reference."""
    inputs = [x.to(device) for x in case.inputs()]
    ref = [x.double() for x in inputs]
    kw = dict(variant=case.variant, normalize=case.normalize)
    h_ref, last_ref = mlstm_recurrent(*ref[:5], initial=MLSTMStates(*ref[5:]) if case.with_states else None, **kw)
    with torch.no_grad():
        init = MLSTMStates(*inputs[5:]) if case.with_states else None
        h, last = mlstm_tfla(
            *inputs[:5], chunk_size=case.L, initial=init, return_last_states=True, backend=backend, **kw
        )
    return _output_errors(case, h, last, h_ref, last_ref)


def relative_errors(case: AccuracyCase, device: str = "cpu") -> dict[str, float]:
    """One fresh draw: errors of ``h``, the last states (``last_C``, ``last_n``, ``last_m``) and every gradient.

    The loss is ``<h, dh> + <C_last, dC> + <n_last, dn>`` with random ``dh, dC, dn``. ``m0``'s gradient
    ``<C0, dC0> + <n0, dn0>`` is ~0 once the initial state is forgotten, so its error is measured against
    the size of the terms it sums. Gradients that do not exist (``m0`` of mLSTMsig) are left out, after
    checking the kernel returns none or zeros there.

    With ``case.term_scale`` (and the normalizer) every gradient's error is divided by the larger of its
    own norm and the norms of ``_term_scales``: where a token's normalized output barely depends on a gate
    or on ``q``'s scale (a token that sees only itself, or one other token), the numerator and normalizer
    shares cancel to ~0, and where one token's ``dh . h`` decides a gradient (``dn0`` of a forgotten state)
    that dot product can be ~0 by chance. A plain relative error then measures only the rounding of the
    stored output ``h``, which the backward uses in ``dh . h`` (as attention backwards do).
    """
    inputs = [x.to(device) for x in case.inputs()]
    ref_in = [x.double().requires_grad_() for x in inputs]
    ker_in = [x.clone().requires_grad_() for x in inputs]
    ref_init = MLSTMStates(*ref_in[5:]) if case.with_states else None
    ker_init = MLSTMStates(*ker_in[5:]) if case.with_states else None
    kw = dict(variant=case.variant, normalize=case.normalize)
    h_ref, last_ref = mlstm_recurrent(*ref_in[:5], initial=ref_init, **kw)
    h, last = mlstm_tfla(
        *ker_in[:5], chunk_size=case.L, initial=ker_init, return_last_states=True, tiles=case.tiles, **kw
    )
    errors = _output_errors(case, h, last, h_ref, last_ref)
    dh = torch.randn_like(h_ref)
    dC, dn = torch.randn_like(last_ref.C), torch.randn_like(last_ref.n)
    loss_ref = (h_ref * dh).sum() + (last_ref.C * dC).sum() + (last_ref.n * dn).sum()
    loss = (h.double() * dh).sum() + (last.C.double() * dC).sum() + (last.n.double() * dn).sum()
    g_ref = torch.autograd.grad(loss_ref, ref_in, allow_unused=True)
    g = torch.autograd.grad(loss, ker_in, allow_unused=True)
    scales = [None] * len(GRADIENTS)
    if case.term_scale and case.normalize:
        scales = _term_scales(ref_in, ref_init, h_ref.detach(), (dh, dC, dn), kw)
    for name, a, b, scale in zip(GRADIENTS, g, g_ref, scales):
        if b is None:
            if a is not None and a.abs().any():
                raise AssertionError(f"gradient of {name} should be absent or zero")
            continue
        if a is None or a.shape != b.shape:
            raise AssertionError(f"gradient of {name} missing or of the wrong shape")
        if name == "m0":
            terms = (ref_in[5].detach() * g_ref[5]).abs().sum((-1, -2)) + (ref_in[6].detach() * g_ref[6]).abs().sum(-1)
            errors[name] = ((a.double() - b).norm() / torch.maximum(b.norm(), terms.norm())).item()
        elif scale is not None and torch.isfinite(a).all():
            errors[name] = ((a.double() - b).norm() / torch.maximum(b.norm(), scale).clamp_min(1e-30)).item()
        else:
            errors[name] = relative_error(a, b)
    return errors
