"""PyTorch references of the mLSTM: the ground truth for tests (any dtype, float64 included).

Shapes: ``q, k: (B, NH, S, DHQK)``, ``v: (B, NH, S, DHHV)``, gate pre-activations ``i, f: (B, NH, S)``;
states ``C: (B, NH, DHQK, DHHV)``, ``n: (B, NH, DHQK)``, ``m: (B, NH)``.

Two variants share one formula. With ``G_t = sum_{r<=t} logsigmoid(f_r)``, the log input gate
``iota_s`` (``i_s`` for ``exp``, ``logsigmoid(i_s)`` for ``sig``) and ``q`` scaled by ``DHQK**-0.5``:

    h_t = N_t / (max(|Z_t|, exp(-m_t)) + eps)
    N_t = sum_{s<=t} exp(G_t - G_s + iota_s - m_t) (q_t . k_s) v_s + exp(G_t + m_0 - m_t) q_t C_0
    Z_t = the same with v_s replaced by 1 and C_0 by n_0

``exp`` (mLSTMexp): ``m_t`` is the running max of the log weights (the stabilizer, no gradient flows
through it), ``m_0`` defaults to 0. ``sig`` (mLSTMsig): ``m_t = 0``; ``normalize=False`` gives
``h_t = N_t``. The states are stabilized: the true ``C_t`` is ``exp(m_t) * C``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

VARIANTS = ("exp", "sig")


@dataclass(frozen=True)
class MLSTMStates:
    """Last (or initial) states: ``C (B, NH, DHQK, DHHV)``, ``n (B, NH, DHQK)``, ``m (B, NH)``."""

    C: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def _log_input_gate(i: torch.Tensor, variant: str) -> torch.Tensor:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return i if variant == "exp" else F.logsigmoid(i)


def _common(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """All inputs in one compute dtype (the promotion of theirs): bf16 q/k/v with fp32 gates run in fp32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def _initial(q: torch.Tensor, v: torch.Tensor, initial: MLSTMStates | None) -> MLSTMStates:
    B, NH, _, DHQK = q.shape
    DHHV = v.shape[-1]
    if initial is not None:
        return initial
    zeros = dict(dtype=q.dtype, device=q.device)
    return MLSTMStates(
        torch.zeros(B, NH, DHQK, DHHV, **zeros), torch.zeros(B, NH, DHQK, **zeros), torch.zeros(B, NH, **zeros)
    )


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    variant: str = "exp",
    normalize: bool = True,
    initial: MLSTMStates | None = None,
    eps: float = 1e-6,
    detach_normalizer: bool = False,
) -> tuple[torch.Tensor, MLSTMStates]:
    """Step-by-step form. Returns ``h (B, NH, S, DHHV)`` and the last states (in the promoted input dtype).

    ``detach_normalizer=True`` lets no gradient flow through the normalizer ``max(|Z_t|, exp(-m_t))``: the
    numerator's share of each gradient, the size of the terms that the normalizer's share cancels.
    """
    q, k, v, i, f = _common(q, k, v, i, f)
    S, DHQK = q.shape[2], q.shape[3]
    log_i = _log_input_gate(i, variant)
    log_f = F.logsigmoid(f)
    state = _initial(q, v, initial)
    C, n, m = state.C, state.n, state.m if variant == "exp" else torch.zeros_like(state.m)
    outs = []
    for t in range(S):
        if variant == "exp":
            m_new = torch.maximum(log_f[:, :, t] + m, log_i[:, :, t]).detach()
        else:
            m_new = m
        f_act = torch.exp(log_f[:, :, t] + m - m_new)[:, :, None]
        i_act = torch.exp(log_i[:, :, t] - m_new)[:, :, None]
        k_t, v_t = k[:, :, t], v[:, :, t]
        C = f_act[..., None] * C + i_act[..., None] * (k_t[..., :, None] * v_t[..., None, :])
        n = f_act * n + i_act * k_t
        m = m_new
        q_t = q[:, :, t] * DHQK**-0.5
        num = (q_t[..., None, :] @ C)[..., 0, :]
        if normalize:
            qn = (q_t * n).sum(-1, keepdim=True)
            den = torch.maximum(qn.abs(), torch.exp(-m)[..., None]) + eps
            num = num / (den.detach() if detach_normalizer else den)
        outs.append(num)
    return torch.stack(outs, dim=2), MLSTMStates(C, n, m)


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    variant: str = "exp",
    normalize: bool = True,
    initial: MLSTMStates | None = None,
    eps: float = 1e-6,
    detach_normalizer: bool = False,
) -> torch.Tensor:
    """Quadratic (attention-like) form. Returns ``h (B, NH, S, DHHV)``; memory grows with ``S**2``.
    ``detach_normalizer`` as in ``mlstm_recurrent``."""
    q, k, v, i, f = _common(q, k, v, i, f)
    S, DHQK = q.shape[2], q.shape[3]
    state = _initial(q, v, initial)
    log_i = _log_input_gate(i, variant)
    G = torch.cumsum(F.logsigmoid(f), dim=-1)  # (B, NH, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    log_w = torch.where(causal, G[..., :, None] - G[..., None, :] + log_i[..., None, :], -torch.inf)
    m0 = state.m if variant == "exp" else torch.zeros_like(state.m)
    log_w0 = G + m0[..., None]  # (B, NH, S): weight of the initial state
    if variant == "exp":
        m = torch.maximum(log_w.amax(-1), log_w0).detach()
    else:
        m = torch.zeros_like(G)
    w = torch.exp(log_w - m[..., None])
    w0 = torch.exp(log_w0 - m)[..., None]
    qs = q * DHQK**-0.5
    scores = (qs @ k.transpose(-1, -2)) * w
    num = scores @ v + w0 * (qs @ state.C)
    if not normalize:
        return num
    z = scores.sum(-1) + w0[..., 0] * (qs * state.n[..., None, :]).sum(-1)
    den = torch.maximum(z.abs(), torch.exp(-m)) + eps
    return num / (den.detach() if detach_normalizer else den)[..., None]
