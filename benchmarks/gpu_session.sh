#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, prepared to run on a lent, bare, offline
# GPU machine (the project's `device` tool: 15 min of device time per session, 10 min per
# command, 64 MiB carried). Every part writes its log and JSON under ${OUT:-gpu_out}.
#
# Here, once (needs ../shared and the package index):
#   bash benchmarks/gpu_session.sh stage        # fills .gpu/ (git-ignored, ~46 MiB)
# There, one command each (carry [".gpu"]):
#   bash benchmarks/gpu_session.sh bench        # the step table, both sides (~6-8 min)
#   bash benchmarks/gpu_session.sh budget stars 540     # CIFAR-10 budget run, STARS
#   bash benchmarks/gpu_session.sh budget baseline 540  # the same without STARS
#   bash benchmarks/gpu_session.sh dtype bfloat16 300   # fast path vs float32 accuracy:
#   bash benchmarks/gpu_session.sh dtype float32 300    #   the same budget in each dtype
#   bash benchmarks/gpu_session.sh synth 240 nayer fast  # per synthesizer, baseline and STARS
#     side by side on the card (two jobs at a time), then one table: $OUT/synth_table.md
#   bash benchmarks/gpu_session.sh sweep 240 0-1 [sweep args]  # STARS vs baseline, paired
#     over seeds 0-1 (stars_jax.sweep, 2 jobs at a time: ~9 min); --variant/--grid replace
#     the default pair; rerun on the warm machine with more seeds and finished runs are kept
# Extra --config.x=... flags after the seconds go to the job (a CPU smoke run of this script
# shrinks the models and batches with them). A budget run's seconds count the whole job
# (teacher conversion excluded); a command may run 600 s, so 540 leaves room for set-up. The issue's 10-minute run does not fit one
# command: start it with `setsid nohup ... &` and collect $OUT/<name>/ in a later command.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
LOGS=$OUT  # where run_job writes; the synth mode packs its many files into one archive
G=.gpu
PY=${PYTHON:-python3}

setup() {  # wheels the device image lacks, the converted teacher, the test split
  if ! $PY -c "import ml_collections" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site $G/whl/*.whl
  fi
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p "$OUT" /tmp/data
  [ -d /tmp/data/cifar10-jpeg/test ] || tar -xzf $G/cifar10_test.tar.gz -C /tmp/data
  [ -f /tmp/teachers/cifar10_resnet34/model.json ] ||
    $PY -m stars_jax.convert --arch resnet34 --num_classes 10 \
      --checkpoint $G/cifar10_resnet34_fp16.pth --out /tmp/teachers/cifar10_resnet34
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true
}

run_job() {  # name, budget seconds, extra config flags... (CONFIG: the config file and arg)
  local name=$1 secs=$2
  shift 2
  $PY -m stars_jax.main --config "${CONFIG:-configs/cifar10.py}" --workdir "/tmp/work/$name" \
    --compilation_cache_dir=/tmp/xla --config.data.path=/tmp/data/cifar10-jpeg \
    --config.data.kind=image_folder \
    --config.teacher.dir=/tmp/teachers/cifar10_resnet34 \
    --config.distill.time_budget_s="$secs" "$@" 2>&1 | tee "$LOGS/$name.log"
  cp "/tmp/work/$name/summary.json" "$LOGS/$name.summary.json"
  cp "/tmp/work/$name/metrics.jsonl" "$LOGS/$name.metrics.jsonl"
  cp "$(ls -d /tmp/work/$name/images/*.png | tail -n 1)" "$LOGS/$name.last_grid.png" || true
}

case "${1:-}" in
  stage)
    mkdir -p $G/whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d $G/whl \
      ml_collections==1.1.0 spikingjelly==2.0.0 loguru==0.7.3
    cp ../shared/teachers/cifar10_resnet34_fp16.pth $G/
    tar -czf $G/cifar10_test.tar.gz -C ../shared/data cifar10-jpeg/test
    du -sh $G
    ;;
  bench)
    setup
    $PY benchmarks/bench_steps.py --out "$OUT/bench.json" --dump_hlo /tmp/hlo \
      --torch_timeout "${TORCH_TIMEOUT:-150}" 2>&1 | tee "$OUT/bench.log"
    tar -czf "$OUT/hlo.tar.gz" -C /tmp hlo
    ;;
  budget)
    setup
    mode=${2:?stars or baseline}
    secs=${3:-540}
    shift $(($# < 3 ? $# : 3))
    case "$mode" in
      stars) run_job budget_stars "$secs" "$@" ;;
      baseline) run_job budget_baseline "$secs" --config.synth.l_rca=0 \
        --config.synth.l_tar=0 --config.distill.b_rca=0 "$@" ;;
      *) echo "budget: stars or baseline" >&2; exit 2 ;;
    esac
    ;;
  dtype)
    setup
    dt=${2:?float32 or bfloat16}
    secs=${3:-300}
    shift $(($# < 3 ? $# : 3))
    run_job "dtype_$dt" "$secs" --config.student.dtype="$dt" --config.teacher.dtype="$dt" "$@"
    ;;
  synth)
    setup
    secs=${2:?seconds per run}
    shift 2
    methods=()
    while [ $# -gt 0 ] && [[ $1 != --* ]]; do methods+=("$1"); shift; done
    [ ${#methods[@]} -gt 0 ] || methods=(nayer fast)
    export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.45}  # two jobs share the card
    LOGS=/tmp/synth_runs
    rm -rf "$LOGS" /tmp/work/synth_*
    mkdir -p "$LOGS"
    for m in "${methods[@]}"; do
      CONFIG="configs/cifar10.py:$m" run_job "synth_${m}_base" "$secs" --config.synth.l_rca=0 \
        --config.synth.l_tar=0 --config.distill.b_rca=0 "$@" > /dev/null &
      CONFIG="configs/cifar10.py:$m" run_job "synth_${m}_stars" "$secs" "$@" > /dev/null &
      wait
      tail -n 1 "$LOGS/synth_${m}_base.log" "$LOGS/synth_${m}_stars.log"
      # After every pair, so that a command cut short still returns what finished.
      $PY benchmarks/synth_table.py "$LOGS"/synth_*.summary.json > "$OUT/synth_table.md" || true
      tar -czf "$OUT/synth_runs.tar.gz" -C "$LOGS" .  # logs, metrics, summaries, last grids
    done
    cat "$OUT/synth_table.md"
    ;;
  sweep)
    setup
    secs=${2:?seconds per run}
    seeds=${3:?seeds, e.g. 0-1}
    shift 3
    export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.45} JAX_COMPILATION_CACHE_DIR=/tmp/xla
    pair=(--variant 'base:synth.l_rca=0,synth.l_tar=0,distill.b_rca=0' --variant 'stars:')
    [[ " $* " == *" --variant"* ]] && pair=()
    rc=0
    $PY -m stars_jax.sweep --config "${CONFIG:-configs/cifar10.py}" --workdir /tmp/sweep \
      --seeds "$seeds" --parallel "${PARALLEL:-2}" "${pair[@]}" \
      --config.data.path=/tmp/data/cifar10-jpeg --config.data.kind=image_folder \
      --config.teacher.dir=/tmp/teachers/cifar10_resnet34 \
      --config.distill.time_budget_s="$secs" "$@" 2>&1 | tee "$OUT/sweep.log" || rc=$?
    cp /tmp/sweep/sweep.json /tmp/sweep/sweep.md "$OUT/" || true
    tar -czf "$OUT/sweep_runs.tar.gz" -C /tmp/sweep --exclude=checkpoints --exclude=student runs
    exit $rc
    ;;
  *)
    sed -n "2,/^set -euo/p" "$0" | grep "^#" >&2
    exit 2
    ;;
esac
