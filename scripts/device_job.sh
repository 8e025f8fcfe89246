#!/usr/bin/env bash
# One device call's work as named steps, each with its own time limit, so that a call spends its 10 minutes on
# what is planned and a slow step cannot take the rest:
#   scripts/device_job.sh STEP[:SECONDS] ...      (on the device, in the repository root; $OUT must be set)
# Each step's output goes to $OUT/STEP.txt, its exit status, seconds and end time to $OUT/steps.tsv (124: cut at
# its limit). Parquet a step writes is kept in /tmp/results (which outlives the call while the machine stays warm,
# so a sweep cut at its limit resumes where it stopped when the step is sent again) and copied, compacted, to $OUT. The steps run in order whatever the previous one returned, and
# the script prints steps.tsv last. Steps (default limit in seconds):
#   env (30)           nvidia-smi, the torch / Triton / baseline versions Python sees
#   gluon (360)        pytest -m gpu tests/test_gluon.py, scripts/gluon_time.py (output and dv kernels) at 7B and paper shapes,
#                      bench profile of the Triton and Gluon fwbw at 7B (each kernel's time: fw_output, bw_dv), and
#                      sweep rows of both backends at S 8192, 7B and paper shapes (gluon_consttoken7b.parquet, gluon_consttoken.parquet)
#   backends (420)     sweep rows of both backends (Triton, Gluon) at the chunks of CHUNKS (default "512 1024"), S 8192,
#                      7B and paper shapes (backends_consttoken7b.parquet, backends_consttoken.parquet)
#   bimodal (300)      the chunk-512 fwbw row's two levels (docs/performance.md v38): REPEATS (default 3) fresh sweeps of
#                      tfla.mlstm_sig fwbw (7B, S 8192) at the chunks of SWEEP_CHUNKS (default 256,512) with each timer
#                      (events, cudagraph), every repetition's row kept (bimodal.parquet), the GPU's clocks sampled
#                      meanwhile (bimodal_clocks.csv, each sweep's window in bimodal_marks.txt, scripts/clock_windows.py
#                      per sweep), then bench profile of each chunk of CHUNKS (default "512 256"), 40 passes: each
#                      kernel's p20..p80 over the passes
#   placement (240)    does placement set the chunk-512 fwbw time? scripts/placement_time.py at chunk 512 (inputs after
#                      pads of PADS MiB, default 0,2,64,130,512; eager and CUDA graph; then expandable segments) and
#                      at 256 (eager) as the control: medians across placements against the band within one
#   gluon_dq (300)     the Gluon dq and dk kernels: their times against Triton's (scripts/gluon_time.py --kernel
#                      bw_dq / bw_dk, 7B, S 8192, sig) at the chunks of CHUNKS (default "128 256 1024"), then their
#                      GPU tests against the Triton kernels
#   dq_dk_launch (540) dq and dk in one launch or two: scripts/gluon_time.py --kernel bw_dq_dk (both kernels alone, 7B,
#                      S 8192, sig) at the chunks of CHUNKS (default "256 1024"), scripts/options_time.py (the whole
#                      pass, sig and exp, the option sets of DQ_DK_SETS (default "one_launch=1 one_launch=1,num_warps=8":
#                      one launch with one and two warpgroups) against the backend's options,
#                      interleaved) at the same chunks, then the GPU tests of both forms against Triton (the pair
#                      alone, and the whole Gluon backend with and without it)
#   gluon_states (300) the Gluon state kernel: its times against Triton's (scripts/gluon_time.py --kernel fw_states,
#                      7B, S 8192, sig and exp) at the chunks of CHUNKS (default "128 256", where the backend runs it),
#                      the backend's options with the gates in the k tile's rows and packed (or the tiles of
#                      STATES_TILES, gluon_time.py's --gluon, at the ring depths of STATES_STAGES), then its GPU test
#   gluon_bw_states (300) the Gluon state-gradient kernel: its times against Triton's (scripts/gluon_time.py --kernel
#                      bw_states, 7B, S 8192, sig and exp) at the chunks of CHUNKS (default "128 256"), its default
#                      tiles or those of BW_STATES_TILES at the ring depths of STATES_STAGES, then its GPU tests
#   pytest_gpu (300)   pytest -m gpu tests (every GPU test)
#   profile (240)      bench profile of both backends' sig fwbw (7B, S 8192) at each chunk of CHUNKS (default 512): every
#                      kernel's time against its floor at the peaks measured on this GPU
#   mamba (240)        scripts/build_mamba.sh on the mamba-ssm source archive (.whl/src, carried) into /tmp/mamba;
#                      MAMBA_PACK=1 also packs the build into OUT (xz, 15 MiB parts, SHA256SUMS); with those parts
#                      carried in .stage-mamba/ the step unpacks them instead (seconds instead of ~3 minutes)
#   verify (330)       bench verify --jobs 8: every kernel's output and gradients against float64
#   ncu (240)          Nsight Compute on the state kernels and dk at 7B, chunk 128: DRAM bytes, L2 hit rate, occupancy,
#                      warp stalls (why bw_states sits at 55 % of its floor, docs/performance.md v16)
#   ncu_sass (240)     per-SASS-instruction warp stall samples of fw_states and bw_states, or of the kernels named
#                      in NCU_KERNELS (e.g. "bw_chunk_dk bw_chunk_dq") (OUT/<kernel>_stalls.txt)
#   ncu_bytes (240)    Nsight Compute's DRAM bytes, L2 bytes and hit rate of every kernel of the 7B sig fwbw pass at
#                      each chunk of CHUNKS (default "128 256"): bytes moved against each kernel's floor (OUT/ncu_bytes_<chunk>.csv)
#   states (420)       per-kernel times of the state kernels' one slice loop + bw_states' state-ahead against
#                      BASE (default ed6efba, the commit before) in the same run, 7B sig chunk 128/256, exp 128
#   gluon_base (300)   scripts/gluon_time.py --kernel GLUON_KERNEL (default bw_dk) at the chunks of CHUNKS (default
#                      "256 1024") in a worktree of BASE (default HEAD~1) and in this tree, then this tree's GPU tests
#                      of the kernel and of the whole Gluon backend against Triton (a kernel change's before and after
#                      in one call)
#   states_verify (300) pytest -m gpu tests/test_tfla.py; bench verify of tfla in fp16 and at head dims 128
#   premove (420)      bench check --against 2e403e8 --run ci (the layout move's before/after, issue #23)
#   plant (300)        the gate's planted 1.2x slow-down against HEAD (scripts/gate_noise/run.sh OUT/gate 0; tables:
#                      scripts/gate_noise/tables.py)
#   fused (360)        scripts/fused_time.py: the one-pass inference forward's options (FUSED_OPTIONS_7B,
#                      FUSED_OPTIONS_PAPER: chunk,BV,warps,stages;...) against the two-pass forward at chunks 128 and
#                      256, 7B sig and exp, paper sig; then its GPU tests
#   consttoken7b (540) bench sweep --preset consttoken7b at the sequence lengths of SEQ_LENS (default 2048,8192) and the
#                      chunks of SWEEP_CHUNKS (default the preset's, 128; e.g. 128,256,1024), the preset's kernels or those of
#                      SWEEP_KERNELS, after scripts/warm_autotune.py has compiled the swept FLA kernels' autotune candidates
#                      in WARM_PROCS (default 6) processes
#   consttoken (540)   the same with --preset consttoken
#   headdim (540)      the same with --preset headdim, at the preset's sequence length and chunk unless SEQ_LENS /
#                      SWEEP_CHUNKS say otherwise
#   chunksize (540)    bench sweep --preset chunksize (7B, S 8192, chunks 64..4096: ours and the official kernels), the
#                      preset's grid unless SEQ_LENS / SWEEP_CHUNKS / SWEEP_KERNELS say otherwise
# With staged packages (../shared/gpu/README.md) run `. /tmp/stage/env.sh` first; /tmp/mamba joins PYTHONPATH here
# once built. The machine's copy of .git can lag behind the files it got (rows then name an old commit, -dirty):
# carry `.head.bundle` (`git bundle create .head.bundle OLD..HEAD`, OLD a commit the machine has) and HEAD moves
# to this tree's commit first.
set -uo pipefail
[ $# -ge 1 ] && [ -n "${OUT:-}" ] || { sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2; }  # the comment above
declare -A LIMIT=([env]=30 [gluon]=360 [backends]=420 [gluon_dq]=300 [dq_dk_launch]=540 [gluon_states]=300 [gluon_bw_states]=300 [fused]=360 [pytest_gpu]=300 [profile]=240 [bimodal]=300 [placement]=240 [mamba]=240 [verify]=330 [ncu]=240 [ncu_sass]=240 [ncu_bytes]=240
  [states]=420 [gluon_base]=300 [states_verify]=300 [premove]=420 [plant]=300 [consttoken7b]=540 [consttoken]=540 [headdim]=540 [chunksize]=540)
for arg in "$@"; do  # every step known and every limit a number, before anything runs
  step=${arg%%:*}
  [ -n "${LIMIT[$step]:-}" ] || { echo "device_job.sh: unknown step '$step'; steps: ${!LIMIT[*]}" >&2; exit 2; }
  [[ $arg != *:* || ${arg#*:} =~ ^[0-9]+$ ]] || { echo "device_job.sh: STEP:SECONDS wants whole seconds; got '$arg'" >&2; exit 2; }
done
RESULTS=/tmp/results
mkdir -p "$OUT" "$RESULTS"
if [ -f .head.bundle ]; then
  printf '/.head.bundle\n/.stage*/\n/.whl/\n' >> .git/info/exclude
  # forward only: a stale bundle left in a checkout must not move that checkout's HEAD back
  git fetch -q .head.bundle HEAD && git merge-base --is-ancestor HEAD FETCH_HEAD && git reset -q FETCH_HEAD \
    && echo "HEAD: $(git log --oneline -1)"
fi
[ -d /tmp/mamba ] && export PYTHONPATH=/tmp/mamba${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # scripts/*.py import the package from the repository root

both_backends() {  # sweep rows of both backends and both variants, S 8192, 7B and paper shapes, into
  # RESULTS/$1_<preset>.parquet; the other arguments go to bench sweep
  local name=$1; shift
  for preset in consttoken7b consttoken; do
    $py cli.py sweep --preset $preset --kernels 'tfla.mlstm_sig_triton,tfla.mlstm_sig_gluon,tfla.mlstm_exp_triton,tfla.mlstm_exp_gluon' \
      --seq-len 8192 --out "$RESULTS/${name}_$preset.parquet" "$@"
  done
}

run_step() {  # the commands of one step (a subshell, so that `timeout` can cut it whole)
  case $1 in
    env) nvidia-smi; $py -c "import torch, triton; print(torch.__version__, triton.__version__)"; $py cli.py env ;;
    gluon)
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gluon.py
      for shape in 8,8,8192,256,512 8,16,8192,128,256; do
        $py scripts/gluon_time.py --kernel fw_output --shape $shape --chunk 128 --variant sig
        $py scripts/gluon_time.py --kernel bw_dv --shape $shape --chunk 128 --variant sig
      done
      $py cli.py profile --kernels tfla.mlstm_sig,tfla.mlstm_sig_gluon --mode fwbw  # per kernel: bw_dv against Gluon's
      both_backends gluon ;;  # end to end, both backends, the same run: the case for FASTEST
    backends) both_backends backends --chunk-size "$(echo ${CHUNKS:-512 1024} | tr ' ' ,)" ;;
    profile)
      for chunk in ${CHUNKS:-512}; do
        COLUMNS=200 $py cli.py profile --kernels tfla.mlstm_sig,tfla.mlstm_sig_gluon --mode fwbw --chunk-size "$chunk" --passes 5
      done ;;
    bimodal)
      reasons=clocks_event_reasons.active  # newer drivers' name; older ones know only clocks_throttle_reasons
      nvidia-smi --query-gpu=$reasons --format=csv > /dev/null 2>&1 || reasons=clocks_throttle_reasons.active
      # the sampler's own limit (a call's 10 minutes) ends it should the step be cut before its kill
      timeout 600 nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,$reasons \
        --format=csv,noheader -lms 50 > "$OUT/bimodal_clocks.csv" &
      sampler=$!
      for i in $(seq "${REPEATS:-3}"); do
        for timer in events cudagraph; do
          for chunk in $(echo "${SWEEP_CHUNKS:-256,512}" | tr , ' '); do  # one chunk a sweep: a window of clock samples each
            rm -rf /tmp/bimodal_one.parquet*
            echo "$(date +%FT%T.%N) start $chunk $timer $i" >> "$OUT/bimodal_marks.txt"
            $py cli.py sweep --preset chunksize --kernels tfla.mlstm_sig --chunk-size "$chunk" --mode fwbw \
              --timer $timer --out /tmp/bimodal_one.parquet > /dev/null
            echo "$(date +%FT%T.%N) end $chunk $timer $i" >> "$OUT/bimodal_marks.txt"
            $py -c 'import sys; from bench import store; store.append(sys.argv[2], store.records(store.load(sys.argv[1])))' \
              /tmp/bimodal_one.parquet "$RESULTS/bimodal.parquet"
          done
        done
      done
      $py -c 'import sys; from bench import store; print(store.load(sys.argv[1])[["chunk_size", "timer", "runtime_ms",
        "runtime_p20_ms", "runtime_p80_ms"]].round(3).to_string())' "$RESULTS/bimodal.parquet"
      kill $sampler
      $py scripts/clock_windows.py "$OUT/bimodal_clocks.csv" "$OUT/bimodal_marks.txt"  # each sweep's clocks
      for chunk in ${CHUNKS:-512 256}; do
        COLUMNS=200 $py cli.py profile --kernels tfla.mlstm_sig --mode fwbw --chunk-size "$chunk" --passes 40
      done ;;
    placement)
      pads=${PADS:-0,2,64,130,512}
      $py scripts/placement_time.py --chunk 512 --pads "$pads"
      $py scripts/placement_time.py --chunk 512 --pads "$pads" --graph
      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True $py scripts/placement_time.py --chunk 512 --pads "$pads"
      $py scripts/placement_time.py --chunk 256 --pads "$pads" ;;
    gluon_dq)
      for chunk in ${CHUNKS:-128 256 1024}; do  # the times first: their tables check each run against Triton too
        for kernel in bw_dq bw_dk; do $py scripts/gluon_time.py --kernel $kernel --chunk $chunk; done
      done
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gluon.py -k bw_dq_dk ;;
    dq_dk_launch)
      for chunk in ${CHUNKS:-256 1024}; do $py scripts/gluon_time.py --kernel bw_dq_dk --chunk $chunk; done
      $py scripts/options_time.py --kernel bw_dq_dk $(printf -- '--set %s ' ${DQ_DK_SETS:-one_launch=1 one_launch=1,num_warps=8}) \
        --chunks "$(echo ${CHUNKS:-256 1024} | tr ' ' ,)" --variants sig,exp --rounds 3
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gluon.py -k "one_launch or gluon_backend" ;;
    gluon_states)
      for chunk in ${CHUNKS:-128 256}; do
        for variant in sig exp; do
          $py scripts/gluon_time.py --kernel fw_states --chunk $chunk --variant $variant \
            --gluon "${STATES_TILES:-128,64,128,4,1,0,2}" --stages "${STATES_STAGES:-2}"
        done
      done
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gluon.py -k fw_states ;;
    gluon_bw_states)
      for chunk in ${CHUNKS:-128 256}; do
        for variant in sig exp; do
          $py scripts/gluon_time.py --kernel bw_states --chunk $chunk --variant $variant \
            ${BW_STATES_TILES:+--gluon "$BW_STATES_TILES"} ${STATES_STAGES:+--stages "$STATES_STAGES"}
        done
      done
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gluon.py -k bw_states ;;
    fused)  # the one-pass inference forward's options (FUSED_OPTIONS_7B / _PAPER) against the two-pass forward
      $py scripts/fused_time.py --variant sig --fused "${FUSED_OPTIONS_7B:-64,64,8,2;64,128,8,2;32,64,8,2;128,64,8,1}" \
        --two-pass 128,256 --csv "$OUT/fused.csv"
      $py scripts/fused_time.py --variant exp --fused "${FUSED_OPTIONS_7B:-64,64,8,2;64,128,8,2;32,64,8,2;128,64,8,1}" \
        --two-pass 128,256 --csv "$OUT/fused.csv"
      $py scripts/fused_time.py --shape 8,16,8192,128,256 --variant sig --fused "${FUSED_OPTIONS_PAPER:-64,64,8,2;64,128,8,2;128,64,8,1}" \
        --two-pass 128,256 --csv "$OUT/fused.csv"
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_fused.py ;;
    pytest_gpu) $py -m pytest -m gpu -q -rs -p no:cacheprovider tests ;;
    mamba)  # a build packed by an earlier call (.stage-mamba, carried) is unpacked instead of built again
      if [ -s .stage-mamba/SHA256SUMS ]; then
        (cd .stage-mamba && sha256sum -c --quiet SHA256SUMS) || { echo ".stage-mamba: parts missing or changed"; return 2; }
        cat .stage-mamba/mamba_sm90.tar.xz.* | xz -d | tar -x -C /tmp && echo "mamba-ssm unpacked from .stage-mamba"
        return
      fi
      src=$(ls .whl/src/mamba_ssm-*.tar.gz /tmp/stage/src/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
      [ -n "$src" ] || { echo "no mamba-ssm source archive (../shared/gpu/wheels.sh puts it in .whl/src)"; return 2; }
      bash scripts/build_mamba.sh "$src" /tmp/mamba 90 || return
      if [ -n "${MAMBA_PACK:-}" ]; then  # 15 MiB parts: what one call can bring back (put them in .stage-mamba/)
        tar -C /tmp -cf - mamba | xz -T0 -6 | split -b 15M -d - "$OUT/mamba_sm90.tar.xz."
        (cd "$OUT" && sha256sum mamba_sm90.tar.xz.* > SHA256SUMS && ls -la mamba_sm90.tar.xz.*)
      fi ;;
    verify) $py cli.py verify --jobs 8 --timeout 300 ;;  # FLA's fwbw autotunes > 150 s on a cold machine, 8 at once
    ncu)  # the warm-up pass's launches (compiled by then); peaks given, so no matmul of measure_peaks runs
      ncu --clock-control none -k 'regex:^(fw_chunk_states|bw_chunk_state_grads|bw_chunk_dk)_kernel$' -c 3 \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        $py cli.py profile --kernels tfla.mlstm_sig --mode fwbw --passes 1 --peak-tflops 790 --peak-gbs 3000 ;;
    ncu_sass)  # where each kernel's warps stall, per SASS line (reports and SASS CSVs stay in /tmp/ncu: 8 files come back)
      mkdir -p /tmp/ncu
      for k in ${NCU_KERNELS:-bw_chunk_state_grads fw_chunk_states}; do
        ncu --clock-control none -k "regex:^${k}_kernel$" -c 1 --section WarpStateStats --section SourceCounters \
          --section MemoryWorkloadAnalysis -f -o "/tmp/ncu/$k" \
          $py cli.py profile --kernels tfla.mlstm_sig --mode fwbw --passes 1 --peak-tflops 790 --peak-gbs 3000 >/dev/null
        ncu -i "/tmp/ncu/$k.ncu-rep" --page source --csv --print-source sass > "/tmp/ncu/${k}_sass.csv"
        ncu -i "/tmp/ncu/$k.ncu-rep" --page details > "$OUT/${k}_details.txt"
        $py scripts/ncu_stalls.py "/tmp/ncu/${k}_sass.csv" > "$OUT/${k}_stalls.txt"
      done ;;
    ncu_bytes)
      for chunk in ${CHUNKS:-128 256}; do
        ncu --clock-control none -c 8 --csv --metrics \
          gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,lts__t_sector_hit_rate.pct \
          -k 'regex:^(fw_chunk_states|fw_chunk_output|fw_output_ws|bw_chunk_state_grads|bw_chunk_dq|bw_chunk_dk|bw_chunk_dv|bw_dv)_kernel$' \
          $py cli.py profile --kernels tfla.mlstm_sig --mode fwbw --chunk-size "$chunk" --passes 1 --peak-tflops 790 \
          --peak-gbs 3000 | grep '^"' > "$OUT/ncu_bytes_$chunk.csv"
      done
      $py scripts/ncu_bytes.py "$OUT"/ncu_bytes_*.csv ;;
    states)
      base=${BASE:-ed6efba}
      git worktree add -f /tmp/base "$base" >/dev/null 2>&1 || echo "no worktree of $base (no .git here?): only this tree"
      for tree in /tmp/base "$PWD"; do
        [ -d "$tree/kernels" ] || continue
        for cfg in "sig 128" "sig 256" "exp 128"; do
          set -- $cfg
          echo "== $tree $(git -C "$tree" rev-parse --short HEAD 2>/dev/null) mlstm_$1 chunk $2"
          (cd "$tree" && COLUMNS=200 PYTHONPATH=$tree $py cli.py profile --kernels "tfla.mlstm_$1" --mode fwbw --chunk-size "$2" \
            --passes 5 --peak-tflops 790 --peak-gbs 3000 | grep -E '_kernel|total|CUDA kernel')
        done
      done ;;
    gluon_base)
      kernel=${GLUON_KERNEL:-bw_dk}
      git worktree add -f /tmp/gluon_base "${BASE:-HEAD~1}" >/dev/null 2>&1 || echo "no worktree of ${BASE:-HEAD~1}: only this tree"
      for chunk in ${CHUNKS:-256 1024}; do
        for tree in /tmp/gluon_base "$PWD"; do
          [ -d "$tree/kernels" ] || continue
          echo "== $(git -C "$tree" log --oneline -1 | cut -c1-60) $kernel chunk $chunk"
          (cd "$tree" && PYTHONPATH=$tree $py scripts/gluon_time.py --kernel "$kernel" --chunk "$chunk")
        done
      done
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gluon.py -k "${kernel#bw_} or ${kernel} or gluon_backend" ;;  # dv has no GPU test of its own
    states_verify)
      $py -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_tfla.py
      $py cli.py verify --kernels tfla.mlstm_sig,tfla.mlstm_exp --dtype float16 --jobs 4
      $py cli.py verify --kernels tfla.mlstm_sig,tfla.mlstm_exp --shape 2,2,2048,128,128 --chunk-size 64,128,256 --jobs 4 ;;
    premove) $py cli.py check --against 2e403e8 --run ci --out "$RESULTS/premove.parquet" ;;
    plant) bash scripts/gate_noise/run.sh "$OUT/gate" 0 ;;  # OUT/gate/: plant.parquet, plant.txt, exit_codes.txt
    consttoken7b|consttoken|headdim|chunksize)  # FLA's autotune candidates compiled by 6 processes first (a cold chunk_gla fwbw took >6.9 min)
      local seqs=${SEQ_LENS:-}
      [[ $1 == consttoken* ]] && seqs=${seqs:-2048,8192}  # the const-token presets' lengths run 512..65536: two unless told
      local fla; fla=$(tr , '\n' <<< "${SWEEP_KERNELS:-fla.*}" | grep '^fla\.' | paste -sd,)  # only the FLA kernels swept
      [[ -n $fla ]] && $py scripts/warm_autotune.py --preset "$1" --kernels "$fla" ${seqs:+--seq-len "$seqs"} --procs "${WARM_PROCS:-6}"
      $py cli.py sweep --preset "$1" ${seqs:+--seq-len "$seqs"} ${SWEEP_CHUNKS:+--chunk-size "$SWEEP_CHUNKS"} \
        ${SWEEP_KERNELS:+--kernels "$SWEEP_KERNELS"} --retry timeout --out "$RESULTS/$1.parquet" ;;
  esac
}

printf 'step\trc\tseconds\tend\n' > "$OUT/steps.tsv"
for arg in "$@"; do
  step=${arg%%:*}
  limit=${LIMIT[$step]}
  [[ $arg == *:* ]] && limit=${arg#*:}
  start=$(date +%s)
  export -f run_step both_backends; export OUT RESULTS py
  timeout -k 10 "$limit" bash -c "run_step $step" > "$OUT/$step.txt" 2>&1
  rc=$?
  [ -d /tmp/mamba ] && [[ ":${PYTHONPATH:-}:" != *:/tmp/mamba:* ]] && export PYTHONPATH=/tmp/mamba${PYTHONPATH:+:$PYTHONPATH}
  for rows in "$RESULTS/$step".parquet "$RESULTS/${step}"_*.parquet; do  # what the step wrote, compacted
    if [ -e "$rows" ] || [ -d "$rows.parts" ]; then
      $py -c 'import sys; from bench.store import compact; compact(sys.argv[1])' "$rows" && cp "$rows" "$OUT/"
    fi
  done
  printf '%s\t%s\t%s\t%s\n' "$step" "$rc" "$(($(date +%s) - start))" "$(date +%T)" >> "$OUT/steps.tsv"
  tail -3 "$OUT/$step.txt"
done
column -t "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"  # the device image has no column
