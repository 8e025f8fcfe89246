"""Which implementation runs a TFLA forward: the Triton kernels (portable: the interpreter, any CUDA GPU, any
Triton) or, on Hopper, the Gluon output kernel (``kernels.gluon.mlstm_fw_output``) in place of the Triton one, the
Gluon state kernel (``mlstm_fw_states``) up to a chunk of 256, and in the backward the Gluon state-gradient kernel
(``mlstm_bw_states``) up to a chunk of 1024 and the Gluon ``dv``, ``dq`` and ``dk`` kernels
(``kernels.gluon.mlstm_bw_dv``, ``mlstm_bw_dq_dk``); on the CPU, their simulator: results for tests, never picked by
``auto``. A forward that needs no gradient can also run in one pass (``fused``: ``kernels.mlstm.chunk_fused``, the
states kept in registers), where ``FASTEST_INFERENCE`` says it wins. Pure: no tensor is read here."""

from __future__ import annotations

import torch

from kernels.mlstm.launch import interpreting

BACKENDS = ("auto", "triton", "gluon", "fused")
# The backend ``auto`` picks, by (GPU name as ``torch.cuda.get_device_name`` gives it, q/k head dim, chunk size):
# only where a sweep of both backends in one run showed Gluon's whole pass faster than Triton's beyond the rows'
# p20-p80 spread (docs/performance.md v16, v18, v19, v22, v25, v29, v30, v32); every other GPU and shape runs Triton. On the H100 at
# the paper shape (DHQK 128) the Gluon backend is 1.01..1.05x at chunk 128 (v29), mixed at 512 and 0.98..0.99x at 1024
# with the spreads overlapping (sig fwbw), so none of those is listed.
FASTEST: dict[tuple[str, int, int], str] = {
    ("NVIDIA H100 80GB HBM3", 256, 128): "gluon",  # 7B, S 8192 (v29): sig fw 0.91x fwbw 0.84x, exp 0.84x / 0.85x
    ("NVIDIA H100 80GB HBM3", 256, 256): "gluon",  # 7B, S 8192 (v29): sig 0.86x / 0.82x, exp 0.87x / 0.83x
    ("NVIDIA H100 80GB HBM3", 128, 256): "gluon",  # paper shape, S 8192 (v29): sig fw 0.98x fwbw 0.97x, exp the same
    ("NVIDIA H100 80GB HBM3", 256, 512): "gluon",  # 7B, S 8192 (v30): sig fw 0.89x fwbw 0.84x, exp 0.90x / 0.84x
    ("NVIDIA H100 80GB HBM3", 256, 1024): "gluon",  # 7B, S 8192 (v30): sig fw 0.86x fwbw 0.82x, exp 0.87x / 0.83x
    ("NVIDIA H100 80GB HBM3", 128, 512): "gluon",  # paper shape, S 8192 (v30): sig fw 1.01x fwbw 0.97x, exp the same
    ("NVIDIA H100 80GB HBM3", 128, 1024): "gluon",  # paper shape, S 8192 (v30): sig 1.00x / 0.97x, exp 0.99x / 0.97x
    ("NVIDIA H200", 256, 128): "gluon",  # 7B, S 8192 (v32): sig fw 0.80x fwbw 0.82x, exp 0.78x / 0.82x
    ("NVIDIA H200", 256, 256): "gluon",  # 7B, S 8192 (v32): sig 0.86x / 0.82x, exp 0.86x / 0.83x
    ("NVIDIA H200", 256, 512): "gluon",  # 7B, S 8192 (v32): sig 0.90x / 0.85x, exp 0.91x / 0.85x
    ("NVIDIA H200", 256, 1024): "gluon",  # 7B, S 8192 (v32): sig 0.87x / 0.84x, exp 0.85x / 0.85x
    ("NVIDIA H200", 128, 128): "gluon",  # paper shape, S 8192 (v32): sig fw 0.96x fwbw 0.98x, exp 0.94x / 0.97x
    ("NVIDIA H200", 128, 256): "gluon",  # paper shape, S 8192 (v32): sig 0.97x / 0.98x, exp 0.98x / 0.97x
    ("NVIDIA H200", 128, 512): "gluon",  # paper shape, S 8192 (v32): sig 1.01x / 0.98x, exp the same
    ("NVIDIA H200", 128, 1024): "gluon",  # paper shape, S 8192 (v32): sig 0.98x / 0.97x, exp 0.99x / 0.97x
}
# The forward without a gradient that ``auto`` runs in one pass (``fused``), by (GPU name, q/k head dim, chunk size):
# only where that pass measured faster than the two-pass forward at its best chunk in the same run.
FASTEST_INFERENCE: dict[tuple[str, int, int], str] = {}
# The one-pass kernel holds a chunk's q and k whole (TMA boxes of at most 256 columns) and its state slice in
# registers: larger chunks or head dims do not fit an sm_90 program.
FUSED_MAX_CHUNK, FUSED_MAX_HEAD_DIM_QK = 128, 256
GLUON_MAX_HEAD_DIM_QK = 256  # the Gluon output kernel loads the q/k head dim whole (kernels.gluon.mlstm_fw_output)
GLUON_QUERY_TILE = 64


def gluon_reason(device: torch.device, dtype: torch.dtype, dhqk: int, chunk_size: int) -> str | None:
    """Why the Gluon kernels (output, ``dv``) cannot run this pass (``None``: they can). They run on a Hopper GPU, and on the
    CPU through ``kernels.gluon.simulator``, beside the Triton kernels in the interpreter (results, not timings)."""
    simulated = device.type == "cpu"
    if not simulated and (interpreting() or device.type != "cuda"):
        return "Gluon runs compiled on a CUDA GPU, or simulated on the CPU (not on a GPU under TRITON_INTERPRET=1)"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the Gluon kernel takes float16 or bfloat16 inputs; got {dtype}"
    if dhqk > GLUON_MAX_HEAD_DIM_QK:
        return f"the Gluon kernel takes a q/k head dim up to {GLUON_MAX_HEAD_DIM_QK}; got {dhqk}"
    if chunk_size % GLUON_QUERY_TILE:
        return f"the Gluon kernel needs a chunk size that is a multiple of {GLUON_QUERY_TILE}; got {chunk_size}"
    if simulated:
        from kernels.gluon.support import api_missing

        return api_missing()
    return gluon_unavailable()


def gluon_unavailable() -> str | None:
    """Why no Gluon kernel can run in this process (no Gluon in this Triton, no Hopper GPU), else ``None``."""
    try:
        from kernels.gluon.support import unavailable_reason
    except ImportError as err:
        return f"this Triton has no Gluon ({err})"
    return unavailable_reason()


def fused_reason(dhqk: int, chunk_size: int, needs_grad: bool) -> str | None:
    """Why the one-pass forward (``fused``) cannot run this pass (``None``: it can)."""
    if needs_grad:
        return "it keeps no chunk states for a backward: it runs forwards without a gradient (torch.no_grad)"
    if chunk_size > FUSED_MAX_CHUNK:
        return f"it takes a chunk size up to {FUSED_MAX_CHUNK}; got {chunk_size}"
    if dhqk > FUSED_MAX_HEAD_DIM_QK:
        return f"it takes a q/k head dim up to {FUSED_MAX_HEAD_DIM_QK}; got {dhqk}"
    return None


def choose_backend(
    backend: str, device: torch.device, dtype: torch.dtype, dhqk: int, chunk_size: int, needs_grad: bool = True
) -> str:
    """``triton``, ``gluon`` or ``fused`` for a forward on ``device`` (``needs_grad``: a backward follows):
    ``backend`` itself, or for ``auto`` without a gradient ``fused`` where ``FASTEST_INFERENCE`` names it, else the
    one ``FASTEST`` names for this GPU, ``dhqk`` and ``chunk_size`` where Gluon can run (else Triton). ``ValueError``
    naming the allowed values for an unknown backend, and the reason when ``gluon`` or ``fused`` is asked for where
    it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "triton":
        return "triton"
    fused_cannot = fused_reason(dhqk, chunk_size, needs_grad)
    if backend == "fused":
        if fused_cannot is not None:
            raise ValueError(f"backend='fused' cannot run this forward: {fused_cannot}")
        return "fused"
    sixteen_bit = dtype in (torch.float16, torch.bfloat16)  # FASTEST_INFERENCE was measured in bf16
    on_a_gpu = device.type == "cuda" and torch.cuda.is_available() and not interpreting()  # rows of any status ask
    if backend == "auto" and fused_cannot is None and sixteen_bit and on_a_gpu:
        if FASTEST_INFERENCE.get((torch.cuda.get_device_name(device), dhqk, chunk_size)) == "fused":
            return "fused"
    reason = gluon_reason(device, dtype, dhqk, chunk_size)
    if backend == "gluon":
        if reason is not None:
            raise ValueError(f"backend='gluon' cannot run this forward: {reason}")
        return "gluon"
    if reason is None and device.type == "cuda":
        return FASTEST.get((torch.cuda.get_device_name(device), dhqk, chunk_size), "triton")
    return "triton"
