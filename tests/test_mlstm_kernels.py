"""The official TFLA kernels (``mlstm_kernels``) on the CPU through Triton's interpreter, fp32: what their backward
computes, checked by ``bench.measure.verify`` against float64 references. Skipped without the package (the ``test``
extra installs it)."""

from __future__ import annotations

import re

import pytest

from bench.measure import verify
from bench.problem import Problem
from bench.registry import get
from specs import mlstm_kernels

pytest.importorskip("mlstm_kernels")

SMALL = Problem(batch=1, heads=1, seq_len=64, head_dim_qk=32, head_dim_v=32, chunk_size=32, dtype="float32")
FP32_BOUND = 1e-5  # fp32 kernels against float64: measured 4e-7 .. 2e-6 at these shapes


def _true_gradient_distance(note: str) -> dict[str, float]:
    """The ``vs the true gradient`` part of verify's note, as numbers."""
    tail = note.split("vs the true gradient:")[1]
    return {name: float(value) for name, value in re.findall(r"(d\w+) ([0-9.e+-]+)", tail)}


@pytest.mark.parametrize("name", ["mlstm_kernels.limit_chunk", "mlstm_kernels.xl_chunk"])
def test_official_exp_backward_holds_the_normalizer_constant(name: str) -> None:
    """Their dq, dk, di, df are the gradient with the normalizer held constant (to fp32 rounding), far from the true
    gradient of their forward; dv and the output are the same either way."""
    errors, note = verify(get(name), SMALL.with_(device="cpu", mode="fwbw"))
    assert set(errors) == {"out", "dq", "dk", "dv", "di", "df"}
    assert max(errors.values()) < FP32_BOUND, errors
    assert mlstm_kernels.NORMALIZER_HELD_CONSTANT in note
    apart = _true_gradient_distance(note)
    assert min(apart[g] for g in ("dq", "dk", "di", "df")) > 0.1 and apart["dv"] < FP32_BOUND, apart


def test_official_siging_backward_is_the_true_gradient() -> None:
    spec = get("mlstm_kernels.xl_chunk_siging")
    assert spec.backward is None
    errors, note = verify(spec, SMALL.with_(device="cpu", mode="fwbw"))
    assert max(errors.values()) < FP32_BOUND and len(errors) == 6 and note == "", (errors, note)


def test_official_xl_chunk_backward_with_split_chunks_is_wrong_and_flagged() -> None:
    """Chunk 256 runs as intra chunks of 256 over inter chunks of 128: with two intra chunks the backward of
    mlstm_kernels 2.0.6 is wrong by its own convention, and only there do the rows carry the known issue."""
    spec = get("mlstm_kernels.xl_chunk")
    split = SMALL.with_(seq_len=512, chunk_size=256, device="cpu", mode="fwbw")
    assert spec.params(split)["chunk_size_inter"] == 128 and spec.params(split)["chunk_size"] == 256
    issue = spec.known_issue(split)
    assert issue is not None and "xl_chunk backward is wrong here" in issue.what
    assert set(issue.outputs) == {"dk", "dv", "di", "df"}  # fp32: no df rounding issue beside it
    errors, _ = verify(spec, split)
    assert errors["out"] < FP32_BOUND and errors["dq"] < FP32_BOUND
    assert min(errors[g] for g in ("dk", "dv", "di", "df")) > 1e-3, errors

    both = spec.known_issue(split.with_(dtype="bfloat16"))  # with bf16's df rounding: one issue, both texts
    assert both is not None and both.outputs == ("dk", "dv", "di", "df") and "rounded to bfloat16" in both.what

    whole = split.with_(chunk_size=128)
    assert spec.known_issue(whole) is None
    errors, _ = verify(spec, whole)
    assert max(errors.values()) < FP32_BOUND, errors
