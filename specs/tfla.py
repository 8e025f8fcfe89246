"""Registry entries of our kernels: TFLA mLSTMexp and mLSTMsig (``kernels.mlstm.tfla``), with the output kernel
the ``auto`` backend picks (``tfla.mlstm_*``) and with the Gluon one (``tfla.mlstm_*_gluon``: Hopper; on the CPU
its simulator, for ``bench verify``) and with the one-pass inference forward (``tfla.mlstm_*_fused``: ``fw`` rows, chunks
up to 128), so a sweep compares them in one run."""

from __future__ import annotations

from bench.problem import Problem
from bench.registry import KernelSpec, package_reason, register
from specs.mlstm import MLSTM_INPUTS, mlstm_bytes, mlstm_flops, mlstm_inputs, mlstm_reference
from specs.shapes import itemsize


def _tfla_supports(p: Problem) -> str | None:
    if p.head_dim_qk % 16 or p.head_dim_v % 16 or max(p.head_dim_qk, p.head_dim_v) > 1024:
        return "head dims must be multiples of 16 up to 1024"
    if p.chunk_size < 16:
        return "chunk_size must be a power of two >= 16"
    if p.chunk_size > max(16, 1 << (p.seq_len - 1).bit_length()):
        return f"chunk_size {p.chunk_size} exceeds the sequence length {p.seq_len}"
    return None


def _backend(p: Problem, backend: str) -> str:
    """The backend a forward at ``p`` runs: a pinned one itself, ``auto``'s choice by
    ``kernels.mlstm.backends.choose_backend`` (``fw`` rows run without a gradient, so ``auto`` may run the one-pass
    forward there). Pure: rows of any status ask, so a pinned backend is never checked here."""
    if backend != "auto":
        return backend
    import torch

    from kernels.mlstm.backends import choose_backend

    dtype = getattr(torch, p.dtype)
    return choose_backend(backend, torch.device(p.device), dtype, p.head_dim_qk, p.chunk_size, p.mode != "fw")


def _kernel_work(p: Problem, backend: str) -> tuple[object, ...]:
    """Each kernel's FLOPs and bytes of a pass at ``p`` (``kernels.mlstm.cost``) under ``backend``, for ``bench
    profile``: ``dq`` and ``dk`` (and ``dv``) as one part where the Gluon backend's options run them in one launch."""
    from kernels.mlstm.cost import GRADS, PAIR, tfla_kernel_work
    from kernels.mlstm.tfla import gluon_options

    options = gluon_options(_backend(p, backend), "bw_dq_dk", p.head_dim_qk, p.head_dim_v, p.chunk_size)
    one_launch = GRADS if getattr(options, "with_dv", False) else PAIR if getattr(options, "one_launch", False) else ()
    size = itemsize(p)
    return tfla_kernel_work(
        p.batch, p.heads, p.seq_len, p.head_dim_qk, p.head_dim_v, p.chunk_size, size, p.mode, one_launch
    )


def _gluon_supports(p: Problem) -> str | None:
    import torch

    from kernels.mlstm.backends import gluon_reason

    if (reason := _tfla_supports(p)) is not None:
        return reason
    return gluon_reason(torch.device(p.device), getattr(torch, p.dtype), p.head_dim_qk, p.chunk_size)


def _fused_supports(p: Problem) -> str | None:
    from kernels.mlstm.backends import fused_reason

    if (reason := _tfla_supports(p)) is not None:
        return reason
    if (reason := fused_reason(p.head_dim_qk, p.chunk_size, p.mode != "fw")) is not None:
        return f"the one-pass forward: {reason}"
    return None


def _gluon_available() -> str | None:
    from kernels.gluon.support import api_missing

    return api_missing()


def _params(p: Problem, variant: str, normalize: bool, backend: str) -> dict[str, object]:
    """A row's ``kernel_params``; with the Gluon backend also the options its kernels ran with
    (``kernels.gluon.config``), with the one-pass forward its tiles. Pure: rows of any status call it."""
    params: dict[str, object] = {
        "variant": variant,
        "normalize": normalize,
        "chunk_size": p.chunk_size,
        "backend": backend,
    }
    if backend == "fused":
        from kernels.mlstm.chunk_fused import fused_tiles
        from kernels.mlstm.launch import interpreting

        tiles = fused_tiles(p.chunk_size, p.head_dim_qk, p.head_dim_v, interpreting())  # the tiles that ran
        params["fused"] = {"BV": tiles.BV, "num_warps": tiles.num_warps, "num_stages": tiles.num_stages}
    if backend == "gluon":
        from kernels.gluon.config import bw_dv_options, fw_output_options
        from kernels.mlstm.tfla import gluon_options

        shape = (p.head_dim_qk, p.head_dim_v, p.chunk_size)

        def options_or_triton(kernel: str) -> dict[str, object] | str:  # "triton" where the Triton kernel runs
            options = gluon_options(backend, kernel, *shape)
            return options.kwargs() if options else "triton"

        params["gluon"] = {
            "fw_states": options_or_triton("fw_states"),  # the Triton kernel from chunk 512 on
            "fw_output": fw_output_options(*shape).kwargs(),
            "bw_states": options_or_triton("bw_states"),
            "bw_dv": bw_dv_options(*shape).kwargs(),
            "bw_dq_dk": options_or_triton("bw_dq_dk"),  # the Triton kernels where the Gluon ones cannot run
        }
    return params


def _register_tfla(variant: str, normalize: bool, description: str, backend: str = "auto") -> None:
    def fn(q, k, v, i, f, _chunk: int = 0):  # noqa: ANN001, ANN202
        from kernels.mlstm.tfla import mlstm_tfla

        return mlstm_tfla(q, k, v, i, f, variant=variant, normalize=normalize, chunk_size=_chunk, backend=backend)

    gluon = backend == "gluon"
    supports = {"gluon": _gluon_supports, "fused": _fused_supports}.get(backend, _tfla_supports)
    register(
        KernelSpec(
            name=f"tfla.mlstm_{variant}" + ("" if backend == "auto" else f"_{backend}"),
            family="mlstm",
            make_inputs=lambda p: (*mlstm_inputs(p), p.chunk_size),
            fn=fn,
            flops=mlstm_flops,
            bytes=mlstm_bytes,
            supports=supports,
            available=_gluon_available if gluon else lambda: package_reason("triton"),
            params=lambda p: _params(p, variant, normalize, _backend(p, backend)),
            reference=mlstm_reference(variant, normalize),
            input_names=MLSTM_INPUTS,
            uses_chunk_size=True,
            description=description,
            devices=("cuda", "cpu"),  # Gluon on the CPU: its simulator (kernels.gluon.simulator), for verify
            role="ours",
            sources=("kernels/mlstm", "kernels/gluon") if gluon else ("kernels/mlstm",),
            # the one-pass forward's one kernel has no split in cost.py
            kernel_work=None if backend == "fused" else lambda p: _kernel_work(p, backend),
        )
    )


_register_tfla("exp", True, "TFLA mLSTMexp (ours): exponential input gate, max-state stabilizer; the fastest backend")
_register_tfla("sig", False, "TFLA mLSTMsig (ours): sigmoid input gate, no normalizer; the fastest backend")
# Each backend pinned, so that one sweep compares them where `auto` would run the same one twice.
for _variant, _normalize in (("exp", True), ("sig", False)):
    _register_tfla(
        _variant, _normalize, f"TFLA mLSTM{_variant}, the Triton kernels only (ours: the portable path)", "triton"
    )
    _register_tfla(
        _variant,
        _normalize,
        f"TFLA mLSTM{_variant}, the Gluon kernels (ours, Hopper; the state walks and dq / dk where their caps allow)",
        "gluon",
    )
    _register_tfla(
        _variant,
        _normalize,
        f"TFLA mLSTM{_variant}, the forward in one pass (ours: no gradient, chunks up to 128; the state in registers)",
        "fused",
    )
