"""TFLA mLSTM: public entry points, input checks, the forward and backward passes and their autograd function.

``mlstm_tfla(q, k, v, i, f, variant="exp"|"sig", ...)`` with ``q, k: (B, NH, S, DHQK)``,
``v: (B, NH, S, DHHV)``, ``i, f: (B, NH, S)``; returns ``h (B, NH, S, DHHV)`` in the input dtype and,
with ``return_last_states=True``, also ``MLSTMStates`` (fp32 ``C, n, m``). The math is written down in
``kernels.mlstm.reference``; ``chunk_fw`` and ``chunk_bw`` hold the Triton kernels and their launchers,
``gates`` the per-token gate kernels, ``tiles`` the tile selection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import triton

from kernels.mlstm.backends import choose_backend
from kernels.mlstm.chunk_bw import launch_bw_dk, launch_bw_dq, launch_bw_dv, launch_bw_states
from kernels.mlstm.chunk_fused import fused_tiles, launch_fw_fused
from kernels.mlstm.chunk_fw import launch_fw_output, launch_fw_states
from kernels.mlstm.gates import gate_arrays, gate_grads, normalizer_grads, stabilizer_per_token
from kernels.mlstm.launch import gpu_sm_count, interpreting, tma_ready
from kernels.mlstm.reference import VARIANTS, MLSTMStates
from kernels.mlstm.tiles import KernelTiles, TileConfig, check_tiles, choose_tiles, state_dtype, unpipelined_state_loads

if TYPE_CHECKING:
    from kernels.gluon.config import LaunchOptions

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CHUNK, MAX_HEAD_DIM = 16, 1024


def gluon_options(backend: str, kernel: str, dhqk: int, dhhv: int, chunk_size: int) -> LaunchOptions | None:
    """The options the Gluon ``kernel`` (``fw_states``, ``bw_states``, ``bw_dq_dk``: ``kernels.gluon.config``'s
    ``<kernel>_options``) runs with under ``backend``, or ``None`` where the Triton kernel runs: any backend but
    ``gluon``, or a shape the config leaves to Triton."""
    if backend != "gluon":
        return None
    from kernels.gluon import config

    return getattr(config, f"{kernel}_options")(dhqk, dhhv, chunk_size)


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial: MLSTMStates | None,
    variant: str,
    chunk_size: int,
) -> None:
    """Raise ``ValueError`` naming the argument when the inputs cannot be run."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    for name, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, NH, S, DHQK), got {tuple(q.shape)}")
    B, NH, S, DHQK = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape (B, NH, S, DHHV) = ({B}, {NH}, {S}, DHHV), got {tuple(v.shape)}")
    for name, t in (("i", i), ("f", f)):
        if t.shape != (B, NH, S):
            raise ValueError(f"{name} must have shape (B, NH, S) = {(B, NH, S)}, got {tuple(t.shape)}")
    DHHV = v.shape[-1]
    for name, d in (("q/k head dim (DHQK)", DHQK), ("v head dim (DHHV)", DHHV)):
        if d % 16 or not 16 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be a multiple of 16 in [16, {MAX_HEAD_DIM}], got {d}")
    if q.dtype not in DTYPES:
        raise ValueError(f"q dtype must be one of {DTYPES}, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype must equal q dtype {q.dtype}, got {t.dtype}")
    for name, t in (("i", i), ("f", f)):
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}")
    if S < 1:
        raise ValueError(f"sequence length (q.shape[2]) must be >= 1, got {S}")
    if not isinstance(chunk_size, int) or chunk_size < MIN_CHUNK or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= {MIN_CHUNK}, got {chunk_size!r}")
    longest = max(MIN_CHUNK, triton.next_power_of_2(S))
    if chunk_size > longest:
        raise ValueError(f"chunk_size must be at most {longest} for sequence length {S}, got {chunk_size}")
    for name, t in (("k", k), ("v", v), ("i", i), ("f", f)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: all inputs must share one device")
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("q is a CPU tensor: TFLA kernels need a CUDA device, or TRITON_INTERPRET=1 on the CPU")
    if initial is not None:
        expected = {"C": (B, NH, DHQK, DHHV), "n": (B, NH, DHQK), "m": (B, NH)}
        for name, shape in expected.items():
            t = getattr(initial, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"initial state {name} must have shape {shape}, got {tuple(t.shape)}")
            if t.device != q.device:
                raise ValueError(f"initial state {name} is on {t.device}, q on {q.device}")


class ForwardState(NamedTuple):
    """What the forward leaves for the backward (``BH = B * NH``, ``SP`` = S padded to whole chunks): fp32 gate
    arrays ``gate_b, gate_i (BH, SP)``, chunk states ``c_st (BH, NC, DHQK, DHHV)`` (state dtype), fp32
    ``n_st (BH, NC+1, DHQK)``, ``m_st (BH, NC+1)`` and per-token fp32 ``m_tok, z_tok (BH, SP)``."""

    gate_b: torch.Tensor
    gate_i: torch.Tensor
    c_st: torch.Tensor
    n_st: torch.Tensor
    m_st: torch.Tensor
    m_tok: torch.Tensor
    z_tok: torch.Tensor


def tfla_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    variant: str,
    normalize: bool,
    chunk_size: int,
    eps: float,
    tiles: TileConfig,
    backend: str = "triton",
) -> tuple[torch.Tensor, MLSTMStates, ForwardState]:
    """The forward pass on checked, TMA-ready inputs: ``h (B, NH, S, DHHV)``, the last states (fp32 ``C, n, m``)
    and the ``ForwardState``. ``init`` is the initial ``(C0, n0, m0)`` or ``None``; ``tiles`` the fitted table;
    ``backend`` (``triton`` or ``gluon``, as ``backends.choose_backend`` resolved it) the output kernel's and, where
    ``kernels.gluon.config.fw_states_options`` has options for the shape, the state kernel's."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    BH, L = B * NH, chunk_size
    NC = triton.cdiv(S, L)
    SP = NC * L
    gate_b, gate_i = gate_arrays(i, f, variant, L)
    f32 = dict(dtype=torch.float32, device=q.device)
    c_st = torch.empty(BH, NC, DHQK, DHHV, dtype=state_dtype(q.dtype), device=q.device)
    c_last = torch.empty(BH, DHQK, DHHV, **f32)
    n_st = torch.empty(BH, NC + 1, DHQK, **f32)
    m_st = torch.empty(BH, NC + 1, **f32)
    exp = variant == "exp"
    init = tuple(x.contiguous() for x in init) if init is not None else None  # type: ignore[assignment]
    if (states_options := gluon_options(backend, "fw_states", DHQK, DHHV, L)) is not None:
        from kernels.gluon.mlstm_fw_states import launch_fw_states as launch_fw_states_gluon

        launch_fw_states_gluon(k, v, gate_b, gate_i, init, c_st, n_st, m_st, c_last, L, exp, **states_options.kwargs())
    else:
        launch_fw_states(k, v, gate_b, gate_i, init, c_st, n_st, m_st, c_last, L, exp, tiles.fw_states)
    h = torch.empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    m_tok = stabilizer_per_token(gate_b, gate_i, m_st, L) if exp else torch.zeros(BH, SP, **f32)
    z_tok = torch.empty(BH, SP, **f32)
    if backend == "gluon":
        from kernels.gluon.config import fw_output_options
        from kernels.gluon.mlstm_fw_output import launch_fw_output as launch_fw_output_gluon

        launch_fw_output_gluon(
            q, k, v, gate_b, gate_i, c_st, n_st, m_st, h, m_tok, z_tok, L, exp, normalize, eps,
            **fw_output_options(DHQK, DHHV, L).kwargs(),
        )  # fmt: skip
    else:
        launch_fw_output(
            q, k, v, gate_b, gate_i, c_st, n_st, m_st, h, m_tok, z_tok, L, exp, normalize, eps, tiles.fw_output
        )
    last = MLSTMStates(c_last.reshape(B, NH, DHQK, DHHV), n_st[:, NC].reshape(B, NH, DHQK), m_st[:, NC].reshape(B, NH))
    return h, last, ForwardState(gate_b, gate_i, c_st, n_st, m_st, m_tok, z_tok)


def tfla_fwd_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    variant: str,
    normalize: bool,
    chunk_size: int,
    eps: float,
    tiles: KernelTiles | None = None,
) -> tuple[torch.Tensor, MLSTMStates]:
    """The forward without a gradient in one pass (``chunk_fused``): ``h (B, NH, S, DHHV)`` and the last states
    (fp32 ``C, n, m``), no ``ForwardState``. Inputs as ``tfla_fwd``'s; ``tiles`` (``BV``, warps, stages) default to
    ``chunk_fused.fused_tiles``'."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    BH = B * NH
    gate_b, gate_i = gate_arrays(i, f, variant, chunk_size)
    f32 = dict(dtype=torch.float32, device=q.device)
    h = torch.empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    c_last, n_last, m_last = torch.empty(BH, DHQK, DHHV, **f32), torch.empty(BH, DHQK, **f32), torch.empty(BH, **f32)
    init = tuple(x.contiguous() for x in init) if init is not None else None  # type: ignore[assignment]
    tiles = tiles or fused_tiles(chunk_size, DHQK, DHHV, interpreting())
    launch_fw_fused(
        q, k, v, gate_b, gate_i, init, h, c_last, n_last, m_last, chunk_size, variant == "exp", normalize, eps, tiles
    )
    last = MLSTMStates(c_last.reshape(B, NH, DHQK, DHHV), n_last.reshape(B, NH, DHQK), m_last.reshape(B, NH))
    return h, last


def tfla_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    h: torch.Tensor,
    state: ForwardState,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    dh: torch.Tensor | None,
    dC_last: torch.Tensor | None,
    dn_last: torch.Tensor | None,
    variant: str,
    normalize: bool,
    chunk_size: int,
    eps: float,
    tiles: TileConfig,
    backend: str = "triton",
) -> tuple[torch.Tensor, ...]:
    """The backward pass: ``dq, dk, dv, di, df`` and the initial states' ``dC0, dn0, dm0`` (``None`` without
    ``init``) from the output's and the last states' gradients (any may be ``None``: zero). ``backend`` as in
    ``tfla_fwd``: the ``dv`` kernel's (``gluon``: ``kernels.gluon.mlstm_bw_dv``) and, where they can run, the ``dq``
    and ``dk`` kernels' (``kernels.gluon.mlstm_bw_dq_dk``) and, where ``kernels.gluon.config.bw_states_options`` has
    options for the shape, the state-gradient kernel's."""
    gate_b, gate_i, c_st, n_st, m_st, m_tok, z_tok = state
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    BH, NC, L = B * NH, c_st.shape[1], chunk_size
    exp = variant == "exp"
    f32 = dict(dtype=torch.float32, device=q.device)
    dh = torch.zeros_like(h) if dh is None else tma_ready(dh)
    inv_den, dz = normalizer_grads(dh, h, z_tok, m_tok, eps, normalize)
    has_dlast = dC_last is not None or dn_last is not None
    dC_last = torch.zeros(B, NH, DHQK, DHHV, **f32) if dC_last is None else dC_last.float().contiguous()
    dn_last = torch.zeros(B, NH, DHQK, **f32) if dn_last is None else dn_last.float().contiguous()
    # State gradients in the input dtype: the dk / dv kernels feed them to tl.dot in that dtype anyway.
    dc_st = torch.empty(BH, NC + 1, DHQK, DHHV, dtype=q.dtype, device=q.device)
    dc_first = torch.empty(BH, DHQK, DHHV, **f32)
    dn_st = torch.empty(BH, NC + 1, DHQK, **f32)
    states_args = (q, dh, gate_b, inv_den, dz, c_st, n_st, m_st, m_tok, dC_last, dn_last, dc_st, dn_st, dc_first)
    if (states_options := gluon_options(backend, "bw_states", DHQK, DHHV, L)) is not None:
        from kernels.gluon.mlstm_bw_states import launch_bw_states as launch_bw_states_gluon

        x_part = launch_bw_states_gluon(*states_args, has_dlast, L, exp, **states_options.kwargs())
    else:
        x_part = launch_bw_states(*states_args, has_dlast, L, exp, tiles.bw_states)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq_args = (q, k, v, dh, gate_b, gate_i, inv_den, dz, c_st, n_st, m_st, m_tok, dq, L, exp)
    dk_args = (q, k, v, dh, gate_b, gate_i, inv_den, dz, dc_st, dn_st, m_st, m_tok, dk, L, exp)
    dv_args = (q, k, dh, gate_b, gate_i, inv_den, dc_st, m_st, m_tok, dv)
    dq_dk_options = gluon_options(backend, "bw_dq_dk", DHQK, DHHV, L)
    options = {} if dq_dk_options is None else dq_dk_options.kwargs()
    if options.pop("with_dv", False):  # dq, dk and dv in one launch (kernels.gluon.mlstm_bw_grads)
        from kernels.gluon import mlstm_bw_grads

        del options["one_launch"]
        qdq, kdk, kdk_inter, kdk_off = mlstm_bw_grads.launch_bw_grads(
            dq_args[:-2], dk_args[:-2], dv_args, L, exp, **options
        )
    else:
        if dq_dk_options is not None:
            from kernels.gluon import mlstm_bw_dq_dk

            qdq, kdk, kdk_inter, kdk_off = mlstm_bw_dq_dk.launch_bw_dq_dk(dq_args[:-2], dk_args[:-2], L, exp, **options)
        else:
            qdq = launch_bw_dq(*dq_args, tiles.bw_dq)
            kdk, kdk_inter, kdk_off = launch_bw_dk(*dk_args, tiles.bw_dk)
        if backend == "gluon":
            from kernels.gluon.config import bw_dv_options
            from kernels.gluon.mlstm_bw_dv import launch_bw_dv as launch_bw_dv_gluon

            launch_bw_dv_gluon(*dv_args, L, exp, **bw_dv_options(DHQK, DHHV, L).kwargs())
        else:
            launch_bw_dv(*dv_args, L, exp, tiles.bw_dv)
    di, df = gate_grads(qdq, kdk, kdk_off, kdk_inter, x_part, i, f, L, variant)
    dC0 = dn0 = dm0 = None
    if init is not None:
        C0, n0, m0 = init
        dC0 = dc_first.reshape(C0.shape)
        dn0 = dn_st[:, 0].reshape(n0.shape)
        if exp:
            dm0 = ((C0.float() * dC0).sum((-1, -2)) + (n0.float() * dn0).sum(-1)).to(m0.dtype)
        else:
            dm0 = torch.zeros_like(m0)
        dC0, dn0 = dC0.to(C0.dtype), dn0.to(n0.dtype)
    return dq, dk, dv, di, df, dC0, dn0, dm0


class _TFLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, variant, normalize, chunk_size, eps, tiles, backend):  # type: ignore[override]
        B, NH, _, DHQK = q.shape
        DHHV, L = v.shape[-1], chunk_size
        if tiles:
            tiles = tiles.fit(L, DHQK, DHHV)
        else:
            tiles = choose_tiles(L, DHQK, DHHV, interpreting(), q.dtype, B * NH, gpu_sm_count(q.device))
        tiles = unpipelined_state_loads(tiles, q.dtype)
        q, k, v = tma_ready(q), tma_ready(k), tma_ready(v)
        init = (C0, n0, m0) if C0 is not None else None
        h, last, state = tfla_fwd(q, k, v, i, f, init, variant, normalize, L, eps, tiles, backend)
        ctx.save_for_backward(q, k, v, i, f, h, *state, *(init or ()))
        ctx.config = (variant, normalize, L, eps, tiles, backend)
        ctx.set_materialize_grads(False)
        return h, last.C, last.n, last.m

    @staticmethod
    def backward(ctx, dh, dC_last, dn_last, dm_last):  # type: ignore[override]
        variant, normalize, L, eps, tiles, backend = ctx.config
        q, k, v, i, f, h, *rest = ctx.saved_tensors
        state, init = ForwardState(*rest[:7]), tuple(rest[7:]) or None
        grads = tfla_bwd(
            q, k, v, i, f, h, state, init, dh, dC_last, dn_last, variant, normalize, L, eps, tiles, backend
        )
        return *grads, None, None, None, None, None, None


def mlstm_tfla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    variant: str = "exp",
    normalize: bool = True,
    chunk_size: int = 128,
    initial: MLSTMStates | None = None,
    return_last_states: bool = False,
    eps: float = 1e-6,
    tiles: TileConfig | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, MLSTMStates]:
    """Chunkwise mLSTM with two levels of tiling. Differentiable in every tensor argument.

    ``tiles`` overrides the tile table of ``choose_tiles`` (for tuning; clamped to the problem; not the one-pass
    forward's). ``backend`` (``backends.BACKENDS``): the forward's output kernel and the backward's ``dv`` kernel in
    ``triton``, in ``gluon`` (Hopper, 16-bit inputs; on the CPU simulated; ``ValueError`` with the reason
    elsewhere), ``fused``: a forward without a gradient in one pass (``chunk_fused``; chunks up to
    ``backends.FUSED_MAX_CHUNK``), or ``auto``, the one measured fastest on this GPU (``backends.FASTEST`` and, without
    a gradient, ``backends.FASTEST_INFERENCE``; Triton where none is recorded).
    """
    check_inputs(q, k, v, i, f, initial, variant, chunk_size)
    if tiles is not None:
        check_tiles(tiles)
    C0, n0, m0 = (initial.C, initial.n, initial.m) if initial is not None else (None, None, None)
    leaves = (q, k, v, i, f, C0, n0, m0)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in leaves)
    run_on = choose_backend(backend, q.device, q.dtype, q.shape[-1], chunk_size, needs_grad)
    if run_on == "fused":
        init = (C0, n0, m0) if C0 is not None else None
        h, last = tfla_fwd_fused(
            tma_ready(q), tma_ready(k), tma_ready(v), i, f, init, variant, normalize, chunk_size, eps
        )
        return (h, last) if return_last_states else h
    h, C, n, m = _TFLAFunction.apply(q, k, v, i, f, C0, n0, m0, variant, normalize, chunk_size, eps, tiles, run_on)
    if return_last_states:
        return h, MLSTMStates(C, n, m)
    return h


def mlstm_exp(q, k, v, i, f, **kwargs) -> torch.Tensor | tuple[torch.Tensor, MLSTMStates]:  # noqa: ANN001
    """mLSTMexp: exponential input gate, max-state stabilizer, normalizer ``max(|n.q|, exp(-m))``."""
    return mlstm_tfla(q, k, v, i, f, variant="exp", **kwargs)


def mlstm_sig(q, k, v, i, f, **kwargs) -> torch.Tensor | tuple[torch.Tensor, MLSTMStates]:  # noqa: ANN001
    """mLSTMsig: sigmoid input gate, no max state; ``normalize=False`` drops the normalizer."""
    return mlstm_tfla(q, k, v, i, f, variant="sig", **kwargs)
