"""The official TFLA kernels (``mlstm_kernels``): the reference our kernels are measured against.

Same layout as ours. ``limit_chunk`` keeps a whole chunk in SRAM and runs at chunk 64 (as in the paper);
``xl_chunk_siging`` runs without the normalizer (as ``tfla.mlstm_sig``). The ``xl_chunk`` kernels split the chunk
into an inter-chunk size (the states' spacing, at most 128) and an intra-chunk size (the requested chunk; the whole
sequence below 128 tokens): ``mlstm_kernels``' own heuristic, whose choice each row records.

What their backward computes, measured against float64 references on the CPU (Triton interpreter, fp32,
``tests/test_mlstm_kernels.py``) and in ``bench verify`` on the GPU:

- the mLSTMexp kernels (``limit_chunk``, ``xl_chunk``) hold the normalizer ``max(|q.n|, exp(-m))`` constant: no
  gradient flows through it (their own parallel backward does the same), so dq, dk, di and df are not the gradient
  of their forward (relative distance 0.8..1.4 at small shapes); they match the normalizer-held-constant gradient to
  fp32 rounding. ``BackwardConvention`` declares it.
- ``xl_chunk`` (mLSTMexp) with more than one intra chunk of more than 128 tokens (chunk 256 and up) gets dk, dv, di
  and df wrong even by that convention (fp32: 2..11 % at S 512 / chunk 256, 6..98 % at S 1024 / chunk 512); by an
  open upstream pull request (#10), the forward saves a state every ``intra / inter`` chunks and the backward reads
  them as if every one were saved. Rows say so (``known_issue``); ``xl_chunk_siging`` is right at the same shapes.
- every one forms df from dq and dk rounded to the input dtype (``rev_cumsum(q.dq - k.dk)``, a difference of near
  terms): in bfloat16 that rounding alone puts df 0.5..2.3 % off (emulated in float64 at S 256..1024,
  ``tests/test_baselines.py``), at the 2e-2 bound of ``bench verify``; measured on the H200: 2.1e-2. Rows say so.
"""

from __future__ import annotations

import importlib

from bench.envinfo import installed_version, release
from bench.problem import Problem
from bench.registry import BackwardConvention, KernelSpec, KnownIssue, package_reason, register
from specs.mlstm import MLSTM_INPUTS, mlstm_bytes, mlstm_flops, mlstm_inputs, mlstm_reference

MODULE = "mlstm_kernels.torch.chunkwise"
LIMIT_CHUNK = 64
# name: (function, variant, normalize, fixed chunk size or None)
KERNELS = {
    "limit_chunk": ("mlstm_chunkwise__limit_chunk", "exp", True, LIMIT_CHUNK),
    "xl_chunk": ("mlstm_chunkwise__xl_chunk", "exp", True, None),
    "xl_chunk_siging": ("mlstm_siging_chunkwise__xl_chunk", "sig", False, None),
}
# The last release whose xl_chunk backward reads states the forward did not save (measured on 2.0.6).
XL_CHUNK_STATES_BUG_UNTIL = (2, 0, 6)
NORMALIZER_HELD_CONSTANT = "normalizer held constant: no gradient through max(|q.n|, exp(-m))"


def xl_chunk_sizes(seq_len: int, chunk_size: int) -> tuple[int, int] | None:
    """``(inter, intra)`` chunk sizes that ``mlstm_kernels``' heuristic picks for a requested chunk, or ``None``
    when it refuses the pair or the package is not installed (never raises: every row's params call it)."""
    try:
        from mlstm_kernels.triton.chunkwise.kernel_param_heuristics import get_xl_chunk_kernel_params

        chosen = get_xl_chunk_kernel_params(sequence_length=seq_len, target_chunk_size=chunk_size)
    except Exception:  # noqa: BLE001 - an assertion of theirs, or no package
        return None
    return chosen.chunk_size_inter, chosen.chunk_size_intra


def xl_chunk_states_issue(p: Problem) -> KnownIssue | None:
    """The wrong backward of ``xl_chunk`` (mLSTMexp) at ``p``, or ``None`` (see the module's docstring)."""
    version = installed_version("mlstm-kernels")
    if p.mode == "fw" or not version or release(version) > XL_CHUNK_STATES_BUG_UNTIL:
        return None
    sizes = xl_chunk_sizes(p.seq_len, p.chunk_size)
    if sizes is None or sizes[0] == sizes[1] or p.seq_len <= sizes[1]:
        return None
    inter, intra = sizes
    what = (
        f"mlstm_kernels {version} xl_chunk backward is wrong here: intra chunk {intra} > inter chunk {inter} with "
        f"{p.seq_len // intra} intra chunks (dk, dv, di, df; the forward is right)"
    )
    return KnownIssue(what, ("dk", "dv", "di", "df"))


def df_rounding_issue(p: Problem) -> KnownIssue | None:
    """The bfloat16 precision of the official kernels' forget-gate gradient (see the module's docstring)."""
    if p.mode == "fw" or p.dtype != "bfloat16":
        return None
    what = "df is formed from dq and dk rounded to bfloat16: 0.5..2.3 % off from that alone, at verify's 2e-2 bound"
    return KnownIssue(what, ("df",))


def _register(name: str, function: str, variant: str, normalize: bool, fixed_chunk: int | None) -> None:
    def chunk_of(p: Problem) -> int:
        return fixed_chunk or p.chunk_size

    def fn(q, k, v, i, f, _chunk: int):  # noqa: ANN001, ANN202
        kernel = getattr(importlib.import_module(MODULE), function)
        extra = {"normalize": normalize} if variant == "sig" else {}
        return kernel(q, k, v, i, f, chunk_size=_chunk, autocast_kernel_dtype=q.dtype, **extra)

    def supports(p: Problem) -> str | None:
        L = chunk_of(p)
        if L < 16 or p.seq_len % L:
            return f"the official kernels need seq_len to be a multiple of the chunk size {L}"
        if p.head_dim_qk % 16 or p.head_dim_v % 16:
            return "head dims must be multiples of 16"
        return None

    def known_issue(p: Problem) -> KnownIssue | None:
        return KnownIssue.combine(xl_chunk_states_issue(p) if name == "xl_chunk" else None, df_rounding_issue(p))

    def params(p: Problem) -> dict[str, object]:
        chosen: dict[str, object] = {"chunk_size": chunk_of(p)}
        if fixed_chunk is None and (sizes := xl_chunk_sizes(p.seq_len, p.chunk_size)) is not None:
            chosen = {"chunk_size": sizes[1], "chunk_size_inter": sizes[0]}
        return {"variant": variant, "normalize": normalize, "function": function, **chosen}

    register(
        KernelSpec(
            name=f"mlstm_kernels.{name}",
            family="mlstm",
            make_inputs=lambda p: (*mlstm_inputs(p), chunk_of(p)),
            fn=fn,
            flops=lambda p: mlstm_flops(p.with_(chunk_size=chunk_of(p))),
            bytes=mlstm_bytes,
            supports=supports,
            available=lambda: package_reason("mlstm_kernels", "triton"),
            params=params,
            reference=mlstm_reference(variant, normalize),
            backward=BackwardConvention(mlstm_reference(variant, normalize, True), NORMALIZER_HELD_CONSTANT)
            if normalize
            else None,
            known_issue=known_issue,
            input_names=MLSTM_INPUTS,
            uses_chunk_size=fixed_chunk is None,
            description=f"official TFLA {function} (mlstm_kernels)"
            + ("; its backward holds the normalizer constant" if normalize else ""),
            devices=("cuda", "cpu"),  # the CPU through Triton's interpreter, as ours
        )
    )


for _name, _args in KERNELS.items():
    _register(_name, *_args)
