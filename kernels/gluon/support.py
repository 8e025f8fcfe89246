"""Whether Gluon's Hopper path can run in this process, and compiling a Gluon kernel for a GPU that is not here."""

from __future__ import annotations

from functools import cache
from typing import Any

HOPPER = ("cuda", 90, 32)  # backend, compute capability, warp size


@cache
def unavailable_reason() -> str | None:
    """``None`` on a CUDA GPU of compute capability 9.x with a Triton that ships Gluon's Hopper API, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if (missing := api_missing()) is not None:
        return missing
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (on the CPU, kernels.gluon.simulator runs the kernels for tests)"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return f"the Hopper kernels need compute capability 9.x; this GPU is {major}.{minor}"
    return None


@cache
def api_missing() -> str | None:
    """Why this Triton cannot express our Gluon kernels (no Gluon Hopper API; the CPU simulator needs it too)."""
    try:
        from triton.experimental.gluon.language.nvidia import hopper  # noqa: F401
    except ImportError as err:
        return f"this Triton has no Gluon Hopper API ({err})"
    return None


def compile_for(kernel: Any, args: dict[str, Any], constexprs: dict[str, Any], target: tuple = HOPPER) -> Any:
    """Compile the Gluon ``kernel`` down to a cubin for ``target`` without a GPU (Triton's own ptxas), so CI sees a
    Gluon API change or a kernel that no longer lowers. ``args``: the runtime arguments by name (tensor
    descriptors over CPU tensors are fine, only their types count); ``constexprs`` by name, ``num_warps`` included.
    Returns Triton's compiled kernel (``.asm['ptx']``, ``.asm['cubin']``, ``.metadata.shared`` in bytes)."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import native_specialize_impl

    signature = {name: native_specialize_impl(BaseBackend, value, False, True, True)[0] for name, value in args.items()}
    signature |= dict.fromkeys(constexprs, "constexpr")
    source = GluonASTSource(kernel, signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget(*target), options={"num_warps": constexprs.get("num_warps", 4)})
