#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, prepared to run on a lent, bare, offline
# GPU machine (the project's `device` tool: 15 min of device time per session, 10 min per
# command, 64 MiB carried). Every part writes its log and JSON under ${OUT:-gpu_out}.
#
# Here, once (needs ../shared and the package index):
#   bash benchmarks/gpu_session.sh stage        # fills .gpu/ (git-ignored, ~46 MiB)
# There, one command each (carry [".gpu"]):
#   bash benchmarks/gpu_session.sh bench        # the step table, both sides (~5 min, est.)
#   bash benchmarks/gpu_session.sh round        # the DFKD round table, images/s (~5 min, est.)
#   bash benchmarks/gpu_session.sh profile [N]  # jax.profiler on both hot steps, N steps
#     each: $OUT/kernels.md (top kernels by time per step), traces in profile_traces.tar.gz
#   bash benchmarks/gpu_session.sh budget stars 540     # CIFAR-10 budget run, STARS
#   bash benchmarks/gpu_session.sh budget baseline 540  # the same without STARS
#   bash benchmarks/gpu_session.sh dtype bfloat16 300   # fast path vs float32 accuracy:
#   bash benchmarks/gpu_session.sh dtype float32 300    #   the same budget in each dtype
#   bash benchmarks/gpu_session.sh synth 240 nayer fast  # per synthesizer, baseline and STARS
#     side by side on the card (two jobs at a time), then one table: $OUT/synth_table.md
#   bash benchmarks/gpu_session.sh sweep 240 0-1 [sweep args]  # STARS vs baseline, paired
#     over seeds 0-1 (stars_jax.sweep, 2 jobs at a time: ~9 min); --variant/--grid replace
#     the default pair; rerun on the warm machine with more seeds and finished runs are kept
#   bash benchmarks/gpu_session.sh confirm [200] [0-2]  # the pair in benchmarks/
#     confirm_pair.txt (the CPU study's confirmed STARS and its baseline) on the CIFAR-10 GPU
#     config (resnet34 -> spiking resnet18, T=4), paired over seeds 0-2, 3 jobs at a time:
#     2 waves of 200 s plus start-up, inside one 10-minute command
# bench, round and profile pass further arguments to bench_steps.py; TORCH_MODES,
# JAX_DTYPES and TORCH_TIMEOUT override their defaults. Extra --config.x=... flags after the
# seconds go to the job. A budget run's seconds count the whole job (teacher conversion
# excluded); a command may run 600 s, so 540 leaves room for set-up. The issue's 10-minute
# run does not fit one command: start it with `setsid nohup ... &` and collect $OUT/<name>/
# in a later command.
# Dry run, on a CPU (CI): DRY_RUN=1 bash benchmarks/gpu_session.sh MODE ... runs any mode
# above but stage at tiny scale (tiny models, batches and step counts; 3 rounds a job; work
# files under /tmp/gpu_dry), falling back to ../shared where .gpu/ is not staged.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
LOGS=$OUT  # where run_job writes; the synth mode packs its many files into one archive
G=.gpu
PY=${PYTHON:-python3}
DRY=${DRY_RUN:-0}
W=/tmp  # work files: wheels, data, teachers, runs, caches
BENCH_SCALE=()
JOB_SCALE=()
if [ "$DRY" = 1 ]; then
  W=/tmp/gpu_dry
  BENCH_SCALE=(--tiny --steps 2 --warmup 1 --rounds 1 --round_synth_steps 2 --round_kd_steps 2
    --profile_steps 2 --torch_timeout "${TORCH_TIMEOUT:-120}")
  JOB_SCALE=(--config.student.arch=resnet_tiny --config.synth.batch_size=8
    --config.synth.nayer.embed_dim=16 --config.synth.cmi.bank_size=64
    --config.synth.cmi.negatives=16 --config.synth.cmi.head_dim=16
    --config.distill.batch_size=8 --config.distill.kd_steps=2 --config.distill.bank_size=64
    --config.distill.rounds=3 --config.distill.eval_every=2 --config.ckpt.every=2
    --config.data.eval_limit=64 --config.data.eval_batch_size=32 --config.log.grid_images=8)
  for m in fast nayer cmi deepinversion; do  # every method's section: one step, one warm-up
    JOB_SCALE+=(--config.synth.$m.steps=1 --config.synth.$m.warmup_rounds=1)
  done
  for m in fast nayer cmi; do
    JOB_SCALE+=(--config.synth.$m.generator_width=8 --config.synth.$m.latent_dim=16)
  done
  TORCH_MODES=${TORCH_MODES:-eager-fp32,bf16-eager+cl}  # torch.compile takes minutes on a CPU
fi

staged() {  # a staged file, or (dry run) its source in ../shared
  if [ -e "$G/$1" ] || [ "$DRY" != 1 ]; then echo "$G/$1"; else echo "$2"; fi
}

setup_env() {  # wheels the device image lacks
  if ! $PY -c "import ml_collections" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target $W/site $G/whl/*.whl
  fi
  export PYTHONPATH=$W/site:$PWD
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" \
    2> /dev/null || true
}

setup() {  # the wheels, the converted teacher, the test split
  setup_env
  mkdir -p $W/data
  if [ ! -d $W/data/cifar10-jpeg/test ]; then
    local data
    data=$(staged cifar10_test.tar.gz "")
    if [ -n "$data" ]; then tar -xzf "$data" -C $W/data
    else mkdir -p $W/data/cifar10-jpeg && ln -sfn "$PWD/../shared/data/cifar10-jpeg/test" \
      $W/data/cifar10-jpeg/test; fi
  fi
  [ -f $W/teachers/cifar10_resnet34/model.json ] ||
    $PY -m stars_jax.convert --arch resnet34 --num_classes 10 --out $W/teachers/cifar10_resnet34 \
      --checkpoint "$(staged cifar10_resnet34_fp16.pth ../shared/teachers/cifar10_resnet34_fp16.pth)"
}

run_job() {  # name, budget seconds, extra config flags... (CONFIG: the config file and arg)
  local name=$1 secs=$2
  shift 2
  $PY -m stars_jax.main --config "${CONFIG:-configs/cifar10.py}" --workdir "$W/work/$name" \
    --compilation_cache_dir=$W/xla --config.data.path=$W/data/cifar10-jpeg \
    --config.data.kind=image_folder \
    --config.teacher.dir=$W/teachers/cifar10_resnet34 \
    --config.distill.time_budget_s="$secs" "${JOB_SCALE[@]}" "$@" 2>&1 | tee "$LOGS/$name.log"
  cp "$W/work/$name/summary.json" "$LOGS/$name.summary.json"
  cp "$W/work/$name/metrics.jsonl" "$LOGS/$name.metrics.jsonl"
  cp "$(ls -d $W/work/$name/images/*.png | tail -n 1)" "$LOGS/$name.last_grid.png" || true
}

bench() {  # name, bench_steps.py arguments...
  local name=$1
  shift
  $PY benchmarks/bench_steps.py --out "$OUT/$name.json" \
    --torch_timeout "${TORCH_TIMEOUT:-150}" --jax_dtypes "${JAX_DTYPES:-float32,bfloat16}" \
    "${BENCH_SCALE[@]}" "$@" 2>&1 | tee "$OUT/$name.log"
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
    setup_env
    shift
    rm -rf $W/hlo
    bench bench --tables steps --dump_hlo $W/hlo \
      --torch_modes "${TORCH_MODES:-eager-fp32,bf16-eager,bf16-eager+cl,bf16-compile}" "$@"
    tar -czf "$OUT/hlo.tar.gz" -C $W hlo
    ;;
  round)
    setup_env
    shift
    bench round --tables round --torch_modes "${TORCH_MODES:-eager-fp32,bf16-eager,bf16-compile}" \
      "$@"
    ;;
  profile)
    setup_env
    steps=${2:-5}
    shift $(($# < 2 ? $# : 2))
    rm -rf $W/profile
    $PY benchmarks/bench_steps.py --jax_dtypes "${JAX_DTYPES:-bfloat16,float32}" \
      "${BENCH_SCALE[@]}" --profile $W/profile --profile_steps "$steps" "$@" 2>&1 |
      tee "$OUT/profile.log"
    cp $W/profile/kernels.md $W/profile/kernels.json "$OUT/"
    # The Chrome/Perfetto traces (ui.perfetto.dev); the .xplane.pb files stay (large).
    tar -czf "$OUT/profile_traces.tar.gz" -C $W/profile --exclude='*.xplane.pb' .
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
    LOGS=$W/synth_runs
    rm -rf "$LOGS" $W/work/synth_*
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
    export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.45} JAX_COMPILATION_CACHE_DIR=$W/xla
    pair=(--variant 'base:synth.l_rca=0,synth.l_tar=0,distill.b_rca=0' --variant 'stars:')
    [[ " $* " == *" --variant"* ]] && pair=()
    rc=0
    $PY -m stars_jax.sweep --config "${CONFIG:-configs/cifar10.py}" --workdir $W/sweep \
      --seeds "$seeds" --parallel "${PARALLEL:-2}" "${pair[@]}" \
      --config.data.path=$W/data/cifar10-jpeg --config.data.kind=image_folder \
      --config.teacher.dir=$W/teachers/cifar10_resnet34 \
      --config.distill.time_budget_s="$secs" "${JOB_SCALE[@]}" "$@" 2>&1 |
      tee "$OUT/sweep.log" || rc=$?
    cp $W/sweep/sweep.json $W/sweep/sweep.md "$OUT/" || true
    tar -czf "$OUT/sweep_runs.tar.gz" -C $W/sweep --exclude=checkpoints --exclude=student runs
    exit $rc
    ;;
  confirm)
    secs=${2:-200}
    seeds=${3:-0-2}
    shift $(($# < 3 ? $# : 3))
    variants=()
    while read -r v; do variants+=(--variant "$v"); done < <(grep -v '^#' benchmarks/confirm_pair.txt | grep .)
    [ ${#variants[@]} -eq 4 ] || { echo "confirm_pair.txt: need 2 variants" >&2; exit 2; }
    MEM_FRACTION=${MEM_FRACTION:-0.3} PARALLEL=${PARALLEL:-3} \
      bash "$0" sweep "$secs" "$seeds" "${variants[@]}" "$@"
    ;;
  *)
    sed -n "2,/^set -euo/p" "$0" | grep "^#" >&2
    exit 2
    ;;
esac
