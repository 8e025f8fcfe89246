"""The kernel registry: one ``KernelSpec`` per benchmarked kernel, added with ``register``.

Every module of the ``specs`` package registers kernels on import (found automatically, so a new kernel family
or baseline library is one new file), then the modules of ``$TFLA_BENCH_PLUGINS``. Specs import their libraries
lazily, inside ``available``/``make_inputs``/``fn``, so listing kernels never needs a GPU or the baseline packages.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.problem import Problem

FAMILIES = ("mlstm", "attention", "linear_attention", "ssm")
ROLES = ("ours", "baseline", "reference")  # what a kernel is in a comparison: reports and figures read it
SPEC_PACKAGE = "specs"


@dataclass(frozen=True)
class BackwardConvention:
    """A backward that by design is not the gradient of the kernel's forward.

    ``reference(*inputs)`` (float64, the kernel's call signature, the same forward values as ``KernelSpec.reference``)
    is the function whose gradient the backward computes; ``description`` says what differs, for verify's rows.
    """

    reference: Callable[..., Any]
    description: str


@dataclass(frozen=True)
class KnownIssue:
    """A known wrong result of a kernel at a problem: ``what`` it is (said in the rows' message) and the
    ``outputs`` it makes wrong, by ``bench verify``'s names (``out``, ``dq``, ``df``, ...)."""

    what: str
    outputs: tuple[str, ...]

    @staticmethod
    def combine(*issues: KnownIssue | None) -> KnownIssue | None:
        """One issue saying each of ``issues`` (``None`` ignored) and covering all their outputs; ``None`` if none."""
        found = [issue for issue in issues if issue is not None]
        if not found:
            return None
        outputs = tuple(dict.fromkeys(name for issue in found for name in issue.outputs))
        return KnownIssue("; ".join(issue.what for issue in found), outputs)


@dataclass(frozen=True)
class KernelSpec:
    """How to run one kernel on a ``Problem``.

    ``make_inputs(problem) -> tuple`` builds the inputs on ``problem.device`` in the kernel's own layout;
    ``fn(*inputs)`` runs the forward and returns the output tensor (or a tuple whose first item is it);
    ``flops(problem)`` / ``bytes(problem)`` are analytical counts; ``supports(problem)`` and ``available()``
    return ``None`` or the reason why not; ``params(problem)`` records the shape mapping of the row;
    ``reference(*inputs)`` (optional) computes the same output in float64 for ``--verify``;
    ``backward`` (optional) declares a backward that is not the forward's gradient by design: ``bench verify``
    checks the gradients against its reference and reports how far they are from the true ones;
    ``caveat()`` names a known problem on this machine that ``bench list`` shows (e.g. a broken backward);
    ``known_issue(problem)`` (a ``KnownIssue`` or ``None``) names a known wrong result at ``problem`` (measured all
    the same: the row says it; ``bench verify`` shows it as ``known`` where only its outputs are off);
    ``input_names`` name the inputs in ``bench verify``'s per-gradient errors (``dq``, ``dk``, ...);
    ``kernel_work(problem)`` (optional) splits a pass's work over the kernels it launches (``bench.profile.Work``
    items), for ``bench profile``'s floors; ``role`` (``ROLES``) says whether it is one of ours, a baseline or a
    reference; ``sources`` are the paths in this repository (files or folders) of the code it runs besides its
    spec module, for ``bench check``'s staleness warning (empty for installed libraries, whose version the rows
    record).
    """

    name: str
    family: str
    make_inputs: Callable[[Problem], tuple[Any, ...]]
    fn: Callable[..., Any]
    flops: Callable[[Problem], float]
    bytes: Callable[[Problem], float]
    supports: Callable[[Problem], str | None] = lambda p: None
    available: Callable[[], str | None] = lambda: None
    params: Callable[[Problem], dict[str, Any]] = lambda p: {}
    reference: Callable[..., Any] | None = None
    backward: BackwardConvention | None = None
    caveat: Callable[[], str | None] = lambda: None
    known_issue: Callable[[Problem], KnownIssue | None] = lambda p: None
    input_names: tuple[str, ...] = ()  # names of ``make_inputs``' items, for per-gradient errors (default x0, x1, ..)
    uses_chunk_size: bool = False
    description: str = ""
    devices: Sequence[str] = field(default=("cuda",))
    role: str = "baseline"
    sources: tuple[str, ...] = ()
    kernel_work: Callable[[Problem], Sequence[Any]] | None = None


_REGISTRY: dict[str, KernelSpec] = {}
_LOADED = False
_PLUGIN_ERROR: Exception | None = None


def register(spec: KernelSpec) -> KernelSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {spec.family!r} for {spec.name}")
    if spec.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {spec.role!r} for {spec.name}")
    if spec.name in _REGISTRY:
        raise ValueError(f"kernel {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


PLUGINS_ENV = "TFLA_BENCH_PLUGINS"


def _load() -> None:
    """Import the modules that register kernels: every module of ``SPEC_PACKAGE``, then ``$TFLA_BENCH_PLUGINS``.

    ``TFLA_BENCH_PLUGINS`` is a comma-separated list of importable modules with more ``register`` calls
    (your own kernels, or the test suite's fakes); worker processes inherit it.
    """
    global _LOADED, _PLUGIN_ERROR
    if _LOADED:
        if _PLUGIN_ERROR is not None:
            raise _PLUGIN_ERROR
        return
    _LOADED = True
    package = importlib.import_module(SPEC_PACKAGE)
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{SPEC_PACKAGE}.{mod.name}")
    for name in plugin_modules():
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure of a user's module is named, never a traceback
            _PLUGIN_ERROR = PluginError(
                f"{PLUGINS_ENV}: module {name!r} cannot be imported ({type(err).__name__}: {err})"
            )
            raise _PLUGIN_ERROR from err


class PluginError(ValueError):
    """A module named in ``TFLA_BENCH_PLUGINS`` that does not import or registers a bad spec."""


def plugin_modules() -> list[str]:
    """The modules named in ``$TFLA_BENCH_PLUGINS``."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def check_plugins() -> None:
    """Load the registry now; ``PluginError`` naming the variable and the module that fails."""
    _load()


def all_specs() -> list[KernelSpec]:
    _load()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get(name: str) -> KernelSpec:
    """The spec called ``name``; ``ValueError`` listing the known names otherwise."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown kernel {name!r}; known kernels: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def role_of(name: str) -> str:
    """The ``role`` of kernel ``name``; ``baseline`` for a name this tree does not register (a row from a plugin
    or from another version of the tree)."""
    _load()
    spec = _REGISTRY.get(name)
    return spec.role if spec is not None else "baseline"


def resolve(patterns: Sequence[str]) -> list[KernelSpec]:
    """Names or glob patterns (``tfla.*``) to specs, in the given order without repeats."""
    import fnmatch

    _load()
    out: list[KernelSpec] = []
    for pattern in patterns:
        names = sorted(fnmatch.filter(_REGISTRY, pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not names:
            raise ValueError(f"kernel pattern {pattern!r} matches nothing; known: {', '.join(sorted(_REGISTRY))}")
        out += [get(n) for n in names if get(n) not in out]
    return out


def cuda_reason() -> str | None:
    """``None`` when a CUDA GPU is visible, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU visible"


def package_reason(*modules: str) -> str | None:
    """``None`` when every module imports, else the missing package (without importing heavy code twice)."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"package {module!r} is not installed"
    return None


def first_reason(*checks: Callable[[], str | None]) -> str | None:
    for check in checks:
        reason = check()
        if reason:
            return reason
    return None
