"""The work of each kernel of one TFLA pass as this design splits it: matmul FLOPs and the fewest bytes through
device memory (every operand a kernel touches read once, every output written once), and the floor time those
set at given peaks. Pure: shapes in, numbers out.

Per head and chunk of ``L`` tokens (``P = L (L + 1) / 2`` causal query-key pairs, ``K`` / ``V`` the q/k and v head
dims, ``NC`` chunks, multiply-adds counted as 2; the gate and normalizer vectors, fp32 per token, are left out of
the bytes as they are of ``bench.flops``):

=========== ======================================================= ===============================================
kernel      FLOPs per chunk                                          reads / writes
=========== ======================================================= ===============================================
fw_states   ``k^T v``: 2 L K V                                       k, v / the chunk states ``C``
fw_output   ``q C``: 2 L K V; ``q k^T``: 2 P K; ``P v``: 2 P V       q, k, v, ``C`` / h
bw_states   ``q^T dh``: 2 L K V                                      q, dh, ``C`` / the state gradients ``dC``
bw_dq       ``dh C^T``: 2 L K V; ``dh v^T``: 2 P V; ``dS k`` and     q, k, v, dh, ``C`` / dq
            the gate's ``q k^T``: 2 x 2 P K
bw_dk       ``v dC^T``: 2 L K V; ``v dh^T``: 2 P V; ``dS^T q`` and   q, k, v, dh, ``dC`` / dk
            the gate's ``k q^T``: 2 x 2 P K
bw_dv       ``k dC``: 2 L K V; ``k q^T``: 2 P K; ``P^T dh``: 2 P V   q, k, dh, ``dC`` / dv
=========== ======================================================= ===============================================

Kernels that run as one launch (``one_launch``: the Gluon backend's ``dq`` and ``dk``, ``bw_dq_dk_pair_kernel``, or
``dq``, ``dk`` and ``dv``, ``bw_grads_kernel``) are one part, named by theirs joined with `` + ``: their FLOPs, each
operand any of them reads read once, their outputs written (``dq`` and ``dk``: q, k, v, dh, ``C`` and ``dC`` / dq,
dk).

``C`` is ``NC`` states of ``K x V`` in the input dtype for 16-bit inputs (``tiles.state_dtype``), ``dC`` ``NC + 1``
of them in the input dtype. The forward kernels' FLOPs add up to ``bench.flops.chunkwise_flops``'s forward; the
backward kernels do more than its "useful" backward: ``dq`` and ``dk`` each recompute ``dh v^T`` and the scores for
the gate gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

FW_KERNELS = ("fw_states", "fw_output")
BW_KERNELS = ("bw_states", "bw_dq", "bw_dk", "bw_dv")
# The compiled kernels that do each part's work, by function name: Triton's first, then the Gluon backend's.
LAUNCH_NAMES: dict[str, tuple[str, ...]] = {
    "fw_states": ("fw_chunk_states_kernel", "fw_states_kernel"),
    "fw_output": ("fw_chunk_output_kernel", "fw_output_kernel", "fw_output_ws_kernel"),
    "bw_states": ("bw_chunk_state_grads_kernel", "bw_states_kernel"),
    "bw_dq": ("bw_chunk_dq_kernel", "bw_dq_dk_kernel"),  # the Gluon one does dq and dk, a launch each
    "bw_dk": ("bw_chunk_dk_kernel", "bw_dq_dk_kernel"),
    "bw_dv": ("bw_chunk_dv_kernel", "bw_dv_kernel"),
}
# Each kernel's operands: what it reads, what it writes (the module docstring's table).
OPERANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fw_states": (("k", "v"), ("C",)),
    "fw_output": (("q", "k", "v", "C"), ("h",)),
    "bw_states": (("q", "dh", "C"), ("dC",)),
    "bw_dq": (("q", "k", "v", "dh", "C"), ("dq",)),
    "bw_dk": (("q", "k", "v", "dh", "dC"), ("dk",)),
    "bw_dv": (("q", "k", "dh", "dC"), ("dv",)),
}
# The kernels the Gluon backend can run as one launch, with the compiled kernel that does them.
ONE_LAUNCH: dict[tuple[str, ...], tuple[str, ...]] = {
    ("bw_dq", "bw_dk"): ("bw_dq_dk_pair_kernel",),
    ("bw_dq", "bw_dk", "bw_dv"): ("bw_grads_kernel",),
}
PAIR = ("bw_dq", "bw_dk")
GRADS = ("bw_dq", "bw_dk", "bw_dv")


def part_name(kernels: tuple[str, ...]) -> str:
    """The name of the part that ``kernels`` in one launch make: ``bw_dq + bw_dk``."""
    return " + ".join(kernels)


@dataclass(frozen=True)
class KernelWork:
    """One kernel's share of a pass: ``flops`` (matmul, multiply-add = 2) and ``bytes`` (fewest, through device
    memory); ``launch_names`` the compiled kernels that do it."""

    kernel: str
    flops: float
    bytes: float
    launch_names: tuple[str, ...]

    def _seconds(self, peak_tflops: float, peak_gbs: float) -> tuple[float, float]:
        """The FLOPs at ``peak_tflops`` and the bytes at ``peak_gbs`` (GB/s), in seconds."""
        return self.flops / (peak_tflops * 1e12), self.bytes / (peak_gbs * 1e9)

    def floor_us(self, peak_tflops: float, peak_gbs: float) -> float:
        """The shortest time this work can take in microseconds: FLOPs at ``peak_tflops`` or bytes at
        ``peak_gbs`` (GB/s), whichever is longer."""
        return max(self._seconds(peak_tflops, peak_gbs)) * 1e6

    def bound(self, peak_tflops: float, peak_gbs: float) -> str:
        """``memory`` or ``compute``: which of the two sets ``floor_us``."""
        compute, memory = self._seconds(peak_tflops, peak_gbs)
        return "memory" if memory >= compute else "compute"


def tfla_kernel_work(
    batch: int,
    heads: int,
    seq_len: int,
    dqk: int,
    dv: int,
    chunk: int,
    itemsize: int,
    mode: str,
    one_launch: tuple[str, ...] = (),
) -> tuple[KernelWork, ...]:
    """Each kernel's ``KernelWork`` for a pass of ``mode`` (``fw``: the forward's kernels, ``bw``: the backward's,
    ``fwbw``: both) on inputs of ``itemsize`` bytes per element (2 for 16-bit, 4 for fp32); ``one_launch``: backward
    kernels that run as one launch (a key of ``ONE_LAUNCH``, or none), one part in place of the first of them."""
    if mode not in ("fw", "bw", "fwbw"):
        raise ValueError(f"mode must be one of fw, bw, fwbw; got {mode!r}")
    if one_launch and one_launch not in ONE_LAUNCH:
        raise ValueError(f"one_launch is one of {', '.join(map(part_name, ONE_LAUNCH))} or none; got {one_launch!r}")
    L = min(chunk, seq_len)
    nc = -(-seq_len // L)
    bh = batch * heads
    tokens = bh * nc * L  # the padded sequence: every kernel runs whole chunks
    pairs = bh * nc * L * (L + 1) / 2
    state_flops = 2.0 * tokens * dqk * dv
    qk_bytes, v_bytes = tokens * dqk * itemsize, tokens * dv * itemsize
    size = dict.fromkeys(("q", "k", "dq", "dk"), qk_bytes) | dict.fromkeys(("v", "dh", "h", "dv"), v_bytes)
    size |= {"C": bh * nc * dqk * dv * itemsize, "dC": bh * (nc + 1) * dqk * dv * itemsize}
    flops = {
        "fw_states": state_flops,
        "fw_output": state_flops + 2 * pairs * (dqk + dv),
        "bw_states": state_flops,
        "bw_dq": state_flops + 2 * pairs * (dv + 2 * dqk),
        "bw_dk": state_flops + 2 * pairs * (dv + 2 * dqk),
        "bw_dv": state_flops + 2 * pairs * (dqk + dv),
    }

    def part(kernels: tuple[str, ...], launch_names: tuple[str, ...]) -> KernelWork:
        operands = {o for k in kernels for side in OPERANDS[k] for o in side}
        return KernelWork(part_name(kernels), sum(flops[k] for k in kernels), sum(size[o] for o in operands),
                          launch_names)  # fmt: skip

    names = {"fw": FW_KERNELS, "bw": BW_KERNELS, "fwbw": FW_KERNELS + BW_KERNELS}[mode]
    if mode == "fw" or not one_launch:
        return tuple(part((n,), LAUNCH_NAMES[n]) for n in names)
    merged = part(one_launch, ONE_LAUNCH[one_launch])
    return tuple(
        merged if n == one_launch[0] else part((n,), LAUNCH_NAMES[n]) for n in names if n not in one_launch[1:]
    )
