"""Gluon kernels (``triton.experimental.gluon``): explicit layouts, TMA, mbarriers, Hopper ``warpgroup_mma`` and
warp specialization. GPU only (sm_90+): the Triton interpreter does not run Gluon, so ``pytest -m gpu`` and
``bench verify`` on the device cover them; ``unavailable_reason`` says why they cannot run here."""

from kernels.gluon.support import unavailable_reason

__all__ = ["unavailable_reason"]
