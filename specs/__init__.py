"""Registry entries: one module per kernel family or library (ours, the references, the baselines); the registry
imports every module here, and each registers its kernels on import."""
