"""The gate's planted slowdown (``scripts/gate_noise/plant.py``): spin cycles from the measured pass times, the
output and every gradient left as the base kernel's. The GPU spin and the CUDA-event timing are stubbed here; the
slowdown itself is measured on the GPU (``results/h200/noise/README.md``)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from bench import registry
from bench.measure import first_output

PLANT = Path(__file__).resolve().parents[1] / "scripts" / "gate_noise" / "plant.py"


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The plant module, loaded without leaving ``plant.mlstm_sig`` in the registry."""
    registry.get("tfla.mlstm_sig")  # the built-in kernels are registered before the copy is made
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = importlib.util.spec_from_file_location("plant_under_test", PLANT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs() -> list[torch.Tensor]:
    torch.manual_seed(torch.seed() % 2**31)
    b, nh, s, d = 1, 2, 64, 32
    q, k, v = (torch.randn(b, nh, s, d, requires_grad=True) for _ in range(3))
    i = torch.randn(b, nh, s, requires_grad=True)
    f = (torch.randn(b, nh, s) + 3.0).requires_grad_(True)
    return [q, k, v, i, f]


def test_the_plant_spins_extra_of_each_pass_and_keeps_the_gradients(plant, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    spins: list[int] = []
    monkeypatch.setattr(torch.cuda, "_sleep", spins.append)
    times = iter([2.0, 6.5])  # forward, then forward + backward (ms)
    monkeypatch.setattr(plant, "_median_ms", lambda step: next(times))
    monkeypatch.setattr(plant, "_cycles_per_ms", lambda: 1000.0)
    monkeypatch.setattr(plant, "EXTRA", 0.2)
    planted = registry.get("plant.mlstm_sig")
    x = _inputs()
    dh = torch.randn(1, 2, 64, 32)
    h = planted.fn(*x, 32)
    assert spins == [400]  # 0.2 x 2.0 ms x 1000 cycles/ms after the forward
    h.backward(dh)
    assert spins == [400, 900]  # 0.2 x (6.5 - 2.0) ms before the backward
    grads = [t.grad.clone() for t in x]
    y = [t.detach().clone().requires_grad_(True) for t in x]
    ref = first_output(registry.get("tfla.mlstm_sig").fn(*y, 32))
    ref.backward(dh)
    assert torch.equal(h.detach(), ref.detach())
    assert all(torch.equal(g, t.grad) for g, t in zip(grads, y))
    planted.fn(*x, 32)
    assert spins == [400, 900, 400]  # measured once per shape


def test_without_extra_the_plant_is_the_base_kernel(plant, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: pytest.fail("no spin without EXTRA"))
    x = _inputs()
    out = first_output(registry.get("tfla.mlstm_sig").fn(*x, 32))
    assert torch.equal(registry.get("plant.mlstm_sig").fn(*x, 32), out)
