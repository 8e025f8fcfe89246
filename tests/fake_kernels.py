"""Fake kernels for the runner tests (registered through ``TFLA_BENCH_PLUGINS=tests.fake_kernels``)."""

from __future__ import annotations

import os
import time

from bench.problem import Problem
from bench.registry import BackwardConvention, KernelSpec, KnownIssue, register


def _inputs(p: Problem) -> tuple:
    import torch

    return (torch.randn(p.batch, p.seq_len, p.head_dim_v),)


def _ok(x):  # noqa: ANN001, ANN202
    return x * 2.0


def _abort(x):  # noqa: ANN001, ANN202
    print("fake kernel: about to abort inside a 'compiler'", flush=True)
    os.abort()


def _hang(x):  # noqa: ANN001, ANN202
    time.sleep(3600)


def _raise(x):  # noqa: ANN001, ANN202
    raise RuntimeError("fake kernel failure")


def _oom(x):  # noqa: ANN001, ANN202
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB")


def _spec(name: str, fn, **kw) -> KernelSpec:  # noqa: ANN001
    return KernelSpec(
        name=f"fake.{name}",
        family="mlstm",
        make_inputs=_inputs,
        fn=fn,
        flops=lambda p: float(p.batch * p.seq_len * p.head_dim_v),
        bytes=lambda p: 8.0 * p.batch * p.seq_len,
        devices=("cpu", "cuda"),
        reference=lambda x: x * 2.0,
        **kw,
    )


register(_spec("ok", _ok))
register(_spec("abort", _abort))
register(_spec("hang", _hang))
register(_spec("raise", _raise))
register(_spec("oom", _oom))
register(_spec("unsupported", _ok, supports=lambda p: "seq_len too long" if p.seq_len > 64 else None))
register(_spec("unavailable", _ok, available=lambda: "package 'nothing' is not installed"))


def _cpu_oom(x):  # noqa: ANN001, ANN202
    import torch

    return torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the host allocator refuses


register(_spec("cpu_oom", _cpu_oom))


def _bad_grad(x):  # noqa: ANN001, ANN202
    import torch

    class Doubled(torch.autograd.Function):
        """Forward ``2 x``; the backward is planted wrong: ``3 dy`` instead of ``2 dy``."""

        @staticmethod
        def forward(ctx, x):  # noqa: ANN001, ANN205
            return x * 2.0

        @staticmethod
        def backward(ctx, dy):  # noqa: ANN001, ANN205
            return dy * 3.0

    return Doubled.apply(x)


register(_spec("bad_grad", _bad_grad, input_names=("x",)))


def _thrice_minus_once(x):  # noqa: ANN001, ANN202
    """The value of ``2 x`` whose gradient is 3: fake.convention's declared backward."""
    return x * 3.0 - x.detach()


# The same planted backward as fake.bad_grad, declared as the kernel's convention: verify holds it to that.
register(
    _spec(
        "convention",
        _bad_grad,
        input_names=("x",),
        backward=BackwardConvention(_thrice_minus_once, "dx is 3 dy by design"),
    )
)


def _wrong_past_32(x):  # noqa: ANN001, ANN202
    """``2 x`` up to 32 tokens, ``2.5 x`` past them: the bug fake.known_issue declares."""
    return x * (2.5 if x.shape[1] > 32 else 2.0)


register(
    _spec(
        "known_issue",
        _wrong_past_32,
        input_names=("x",),
        known_issue=lambda p: KnownIssue("planted: wrong past 32 tokens", ("out", "dx")) if p.seq_len > 32 else None,
    )
)
