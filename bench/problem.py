"""``Problem``: one point of a sweep, validated on construction by ``validate()``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

DTYPES = ("float32", "float16", "bfloat16")
MODES = ("fw", "bw", "fwbw")
DEVICES = ("cuda", "cpu")
# Every size is stored as int64 and becomes a tensor dimension: larger values are input errors, refused before work.
MAX_SIZE = 2**31 - 1


@dataclass(frozen=True)
class Problem:
    """Shapes of one benchmark config (mLSTM layout: ``q, k (B, NH, S, DHQK)``, ``v (B, NH, S, DHHV)``).

    ``chunk_size`` is 0 for kernels that have none. ``mode``: ``fw`` forward, ``bw`` backward only,
    ``fwbw`` both.
    """

    batch: int
    heads: int
    seq_len: int
    head_dim_qk: int
    head_dim_v: int
    chunk_size: int = 0
    dtype: str = "bfloat16"
    mode: str = "fw"
    device: str = "cuda"

    def validate(self) -> Problem:
        """Return self, or raise ``ValueError`` naming the bad field and the allowed values."""
        for name in ("batch", "heads", "seq_len", "head_dim_qk", "head_dim_v"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE:
                raise ValueError(f"{name} must be a positive integer up to {MAX_SIZE}, got {value!r}")
        if (
            not isinstance(self.chunk_size, int)
            or isinstance(self.chunk_size, bool)
            or not 0 <= self.chunk_size <= MAX_SIZE
            or (self.chunk_size and self.chunk_size & (self.chunk_size - 1))
        ):
            raise ValueError(f"chunk_size must be a power of two (or 0 for none), got {self.chunk_size!r}")
        for name, allowed in (("dtype", DTYPES), ("mode", MODES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        return self

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @property
    def torch_dtype(self):  # noqa: ANN201 - torch is imported lazily
        import torch

        return getattr(torch, self.dtype)

    def with_(self, **changes: object) -> Problem:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


KEY_FIELDS = ("kernel", *Problem.__dataclass_fields__.keys())
