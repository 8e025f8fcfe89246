"""Gluon names that moved between Triton releases, under one spelling for our kernels.

Triton 3.6 (the pinned one) names the TMA copies ``async_copy_global_to_shared`` / ``async_copy_shared_to_global``;
3.9 renamed them ``async_load`` / ``async_store`` and makes the old names raise. The kernels call
``compat.tma_load`` / ``compat.tma_store``, with the 3.6 argument order (descriptor, coordinates, barrier, buffer).
3.6's ``shared_memory_descriptor._reinterpret`` is public ``reinterpret`` in 3.9 (the private name gone):
``compat.reinterpret_as``.
"""

from triton.experimental import gluon
from triton.experimental.gluon.language._core import shared_memory_descriptor
from triton.experimental.gluon.language.nvidia.hopper import tma

tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

if hasattr(shared_memory_descriptor, "reinterpret"):

    @gluon.jit
    def reinterpret_as(buf, desc):
        """The bytes of ``buf`` as a buffer of ``desc``'s block shape and shared layout (same element type)."""
        return buf.reinterpret(buf.dtype, desc.block_type.shape, desc.layout)

else:

    @gluon.jit
    def reinterpret_as(buf, desc):
        """The bytes of ``buf`` as a buffer of ``desc``'s block shape and shared layout (same element type)."""
        return buf._reinterpret(buf.dtype, desc.block_type.shape, desc.layout)
