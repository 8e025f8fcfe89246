"""flash-linear-attention (``fla-core``): GLA, simple GLA and the gated delta rule, layout ``(B, S, H, D)``.

Shape mapping: the mLSTM problem's heads and head dims (``head_dim_qk`` for q/k, ``head_dim_v`` for v),
log-space gates from ``logsigmoid``; FLA's own chunk size (64).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from bench import flops
from bench.problem import Problem
from bench.registry import KernelSpec, first_reason, package_reason, register
from specs.shapes import hopper_triton_bw_caveat, hopper_triton_bw_reason, itemsize

FLA_CHUNK = 64
# name: (module, function, gate kind) with gate kind "scalar" (B, S, H), "vector" (B, S, H, DK) or "delta"
KERNELS = {
    "chunk_simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla", "scalar"),
    "chunk_gla": ("fla.ops.gla", "chunk_gla", "vector"),
    "fused_chunk_gla": ("fla.ops.gla", "fused_chunk_gla", "vector"),
    "chunk_gated_delta_rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", "delta"),
}


def fla_inputs(p: Problem, gate: str) -> tuple[Any, ...]:
    import torch
    import torch.nn.functional as F

    dt, dev = p.torch_dtype, p.device
    q = torch.randn(p.batch, p.seq_len, p.heads, p.head_dim_qk, dtype=dt, device=dev)
    k = torch.randn(p.batch, p.seq_len, p.heads, p.head_dim_qk, dtype=dt, device=dev)
    v = torch.randn(p.batch, p.seq_len, p.heads, p.head_dim_v, dtype=dt, device=dev)
    if gate == "delta":
        k = F.normalize(k.float(), dim=-1).to(dt)
    gshape = (p.batch, p.seq_len, p.heads) + ((p.head_dim_qk,) if gate == "vector" else ())
    g = F.logsigmoid(torch.randn(*gshape, device=dev) + 3.0)
    if gate == "delta":
        return q, k, v, g, torch.rand(p.batch, p.seq_len, p.heads, dtype=dt, device=dev)
    return q, k, v, g.to(dt) if gate == "vector" else g


def gla_reference(q, k, v, g):  # noqa: ANN001, ANN201
    """Causal gated linear attention in the input dtype, FLA layout ``(B, S, H, D)``, scale ``DK**-0.5``.

    ``g`` is the log decay per token (``(B, S, H)``, simple GLA) or per token and key dim (``(B, S, H, DK)``):
    ``h_t = sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s v_s`` with ``G`` the cumulative sum of ``g``.
    """
    import torch

    q, k, v, g = (x.transpose(1, 2).to(torch.promote_types(q.dtype, g.dtype)) for x in (q, k, v, g))
    G = g.cumsum(2)
    S, DK = q.shape[2], q.shape[3]
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    if G.dim() == 3:  # scalar gate per token
        decay = torch.where(causal, G[..., :, None] - G[..., None, :], -torch.inf).exp()
        scores = (q @ k.transpose(-1, -2)) * decay
    else:  # one gate per key dim: (B, H, S, S, DK)
        diff = torch.where(causal[..., None], G[..., :, None, :] - G[..., None, :, :], -torch.inf)
        scores = torch.einsum("bhtd,bhsd,bhtsd->bhts", q, k, diff.exp())
    return ((scores * DK**-0.5) @ v).transpose(1, 2)


def gated_delta_rule_reference(q, k, v, g, beta):  # noqa: ANN001, ANN201
    """The gated delta rule step by step, in the inputs' promoted dtype, FLA layout ``(B, S, H, D)``, scale
    ``DK**-0.5``: the state ``M (B, H, DK, DV)`` decays by ``exp(g_t)``, then takes the delta update
    ``M += k_t (beta_t (v_t - k_t^T M))^T``; ``o_t = (q_t DK**-0.5)^T M``. Returns ``o (B, S, H, DV)``.
    """
    import torch

    dtype = functools.reduce(torch.promote_types, (t.dtype for t in (q, k, v, g, beta)))
    q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
    B, S, H, DK = q.shape
    state = q.new_zeros(B, H, DK, v.shape[-1])
    outs = []
    for t in range(S):
        state = state * g[:, t].exp()[..., None, None]
        k_t = k[:, t]
        update = (v[:, t] - (k_t[..., None] * state).sum(-2)) * beta[:, t][..., None]
        state = state + k_t[..., None] * update[..., None, :]
        outs.append(((q[:, t] * DK**-0.5)[..., None] * state).sum(-2))
    return torch.stack(outs, dim=1)


def _register(name: str, module: str, function: str, gate: str) -> None:
    def fn(*inputs):  # noqa: ANN002, ANN202
        return getattr(importlib.import_module(module), function)(*inputs)

    def available() -> str | None:
        if name == "fused_chunk_gla":
            from bench.envinfo import installed_version, release

            if release(installed_version("fla-core")) >= (0, 6):
                return "fused_chunk_gla is deprecated in fla-core >= 0.6 (raises NotImplementedError)"
        return None

    def supports(p: Problem) -> str | None:
        if p.head_dim_qk > 256 or p.head_dim_v > 512:
            return "FLA kernels support head dims up to 256 (qk) and 512 (v)"
        # The gated delta rule's backward goes through the same gated chunk_bwd_dqkwg kernel (seen on the
        # H100: it raises the same RuntimeError), so the Hopper/Triton caveat holds for every FLA kernel here.
        return hopper_triton_bw_reason(p)

    register(
        KernelSpec(
            name=f"fla.{name}",
            family="linear_attention",
            make_inputs=lambda p: fla_inputs(p, gate),
            fn=fn,
            flops=lambda p: flops.chunkwise_flops(
                p.batch, p.heads, p.seq_len, p.head_dim_qk, p.head_dim_v, FLA_CHUNK, p.mode
            ),
            bytes=lambda p: flops.sequence_mixer_bytes(
                p.batch, p.heads, p.seq_len, p.head_dim_qk, p.head_dim_v, itemsize(p), p.mode, 1
            ),
            supports=supports,
            available=lambda: first_reason(lambda: package_reason("fla"), available),
            params=lambda p: {"chunk_size": FLA_CHUNK, "gate": gate, "layout": "BSHD"},
            reference=gated_delta_rule_reference if gate == "delta" else gla_reference,
            input_names=("q", "k", "v", "g", "beta"),
            caveat=hopper_triton_bw_caveat,
            description=f"FLA {function} ({module})",
        )
    )


for _name, (_module, _function, _gate) in KERNELS.items():
    _register(_name, _module, _function, _gate)
