#!/usr/bin/env bash
# Build mamba-ssm from its source archive for one GPU architecture only (the stock build compiles nine; sm_90
# alone takes about 3 minutes on the 16-core H200 machine) and install it into a folder for PYTHONPATH.
#   scripts/build_mamba.sh ARCHIVE TARGET [ARCH]   e.g. scripts/build_mamba.sh .whl/src/mamba_ssm-2.3.2.post1.tar.gz /tmp/mamba 90
# The archive comes from `pip download --no-deps --no-binary :all: mamba-ssm==2.3.2.post1` (MAMBA_SKIP_CUDA_BUILD=TRUE).
set -euo pipefail
archive=$(realpath "$1"); target=$2; arch=${3:-90}
work=$(mktemp -d)
tar -xzf "$archive" -C "$work"
cd "$work"/mamba_ssm-*
# keep only the -gencode pair of the wanted architecture
python3 - "$arch" <<'PY'
import re, sys
arch = sys.argv[1]
text = open("setup.py").read()
text = re.sub(
    r'(\s*)cc_flag\.append\("-gencode"\)\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)',
    lambda m: m.group(0) if m.group(2) == arch else m.group(1) + "pass",  # keeps every `if` block non-empty
    text,
)
assert f"compute_{arch}" in text, f"setup.py has no gencode for sm_{arch}"
open("setup.py", "w").write(text)
PY
MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} python3 -m pip install -q --no-build-isolation --no-deps --no-index \
  --target "$target" .
echo "built mamba-ssm for sm_$arch into $target"
