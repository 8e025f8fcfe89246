#!/usr/bin/env bash
# The A/B gate's noise and a planted slow-down on this machine (results/h200/noise/README.md):
#   scripts/gate_noise/run.sh OUT [RUNS]
# RUNS A/A runs (`check --against HEAD --run ci`), then the planted kernel (plant.py: our kernel plus EXTRA of its
# work) against itself without it. Everything runs in a temporary clone of HEAD: this checkout is never touched.
# Writes OUT/aa_N.parquet, OUT/plant.parquet and OUT/exit_codes.txt.
set -uo pipefail
[ $# -ge 1 ] || { sed -n '2,6p' "$0"; exit 2; }
mkdir -p "$1"; out=$(realpath "$1"); runs=${2:-5}; here=$(realpath "$(dirname "$0")")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
git clone -q "$(git -C "$here" rev-parse --show-toplevel)" "$tmp/repo" && cd "$tmp/repo" || exit 2
for n in $(seq "$runs"); do
  python3 cli.py check --against HEAD --run ci --out "$out/aa_$n.parquet" > "$out/aa_$n.txt" 2>&1
  echo "aa_$n $?" | tee -a "$out/exit_codes.txt"
done
cp "$here/plant.py" plant.py
sed -e 's/^kernels = \[/kernels = ["plant.mlstm_sig", /' bench/presets/ci.toml > plant.toml
git add plant.py plant.toml && git -c user.name=gate -c user.email=gate@localhost commit -qm "plant: EXTRA = 0"
sed -i 's/^EXTRA = 0.0$/EXTRA = 0.2/' plant.py
TFLA_BENCH_PLUGINS=plant python3 cli.py check --against HEAD --run plant.toml --out "$out/plant.parquet" \
  > "$out/plant.txt" 2>&1
echo "plant $?" | tee -a "$out/exit_codes.txt"
