"""tfla-bench harness: problems, registry, measurement, sweeps, storage and checks."""
