"""Test set-up. ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel module is imported, so the choice between
Triton's interpreter (the CPU kernel tests) and compiled kernels is made here, before any test module imports one:
the interpreter, except for ``pytest -m gpu``, whose in-process GPU tests launch compiled kernels."""

from __future__ import annotations

import os

import pytest

GPU_ONLY_MARKEXPR = "gpu"


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("markexpr", "").strip() != GPU_ONLY_MARKEXPR:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with `pytest -m gpu` on the device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def compiled_kernels() -> None:
    """Skips an in-process GPU test when this run imported the Triton kernels for the interpreter (a run of CPU and
    GPU tests together): they launch compiled kernels only under ``pytest -m gpu``."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the Triton kernels were imported for the interpreter in this run: run `pytest -m gpu`")


@pytest.fixture
def poison_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the TFLA wrapper allocates starts as NaN instead of whatever memory held, so that an element a
    kernel leaves unwritten shows in the results."""
    import types

    import torch

    import kernels.mlstm.chunk_bw as chunk_bw
    import kernels.mlstm.gates as gates
    import kernels.mlstm.tfla as tfla

    def empty(*shape, dtype=None, device=None, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        return torch.full(
            shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape,
            float("nan"),
            dtype=dtype,
            device=device,
        )

    def empty_like(x, **kw):  # noqa: ANN001, ANN003, ANN202
        return torch.full_like(x, float("nan"))

    proxy = types.SimpleNamespace(**{n: getattr(torch, n) for n in dir(torch) if not n.startswith("__")})
    proxy.empty, proxy.empty_like = empty, empty_like
    for module in (tfla, chunk_bw, gates):  # the modules that allocate buffers
        monkeypatch.setattr(module, "torch", proxy)
