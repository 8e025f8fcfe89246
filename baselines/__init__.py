"""Baseline adapters, one module per external library; each registers its kernels on import."""
