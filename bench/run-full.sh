#!/usr/bin/env bash
# The side-by-side benchmark behind docs/benchmarks.md ("Round 2"): Tidings,
# Centrifugo and Socket.IO, plus the kernel floor (floor-write, floor-batched)
# in the fan-out scenarios, RUNS times each, in the same invocations.
#
# Each server runs alone, pinned to core 0 with taskset (the floor server too);
# the generator pins itself to core 1. Every invocation is bounded (--timeout)
# and holds /tmp/bench.lock (flock), so benchmarks of other worktrees on the
# same machine never overlap with these; builds may still run meanwhile, and
# each result records the CPU other processes used during its measurement.
#
# Results: $OUT/<scenario>-<k>/results.{json,md} for run k, and
# $OUT/summary.md (min / median / max, from bench/summarize.py).
#
#   RUNS=3 MAX_RUNS=1 OUT=bench/results/issue16-peers bench/run-full.sh [idle fanout channels max]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
MAX_RUNS=${MAX_RUNS:-1}
OUT=${OUT:-bench/results/issue16-peers}
SCENARIOS=("${@:-idle fanout channels max}")
read -r -a SCENARIOS <<< "${SCENARIOS[*]}"

cargo build --release -p tidings-server -p tidings-bench
npm ci --prefix bench/peers/socketio --no-audit --no-fund
bench/peers/centrifugo/build.sh
# Run copies, so a rebuild in this tree during the runs cannot change (or be
# blocked by) the binaries being measured.
BIN=$(mktemp -d /tmp/tidings-bench-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
cp target/release/tidings target/release/tidings-bench "$BIN/"
B=$BIN/tidings-bench
COMMIT=$(git rev-parse --short HEAD)
COMMON=(--quiet-wait 20 --timeout 900 --tidings-bin "$BIN/tidings")
SERVERS=tidings,centrifugo,socketio
ALL=$SERVERS,floor-write,floor-batched

# Wait (up to QUIET_MAX s) until the machine is at least 90% idle for 5 s in a
# row; on a shared machine this may not happen, and the run goes on (the
# "others' CPU" column then tells how busy it was).
wait_quiet() {
  local calm=0 tries=0
  while (( calm < 5 && tries < ${QUIET_MAX:-60} )); do
    read -r _ u1 n1 s1 i1 w1 q1 sq1 _ < /proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < /proc/stat
    local busy=$(( (u2+n2+s2+q2+sq2) - (u1+n1+s1+q1+sq1) )) idle=$(( (i2+w2) - (i1+w1) ))
    if (( idle * 100 >= (busy + idle) * 90 )); then calm=$((calm + 1)); else calm=0; fi
    tries=$((tries + 1))
  done
  uptime
}

bench() { # bench <scenario> <run> args...
  local scenario=$1 k=$2; shift 2
  local dir="$OUT/$scenario-$k"
  mkdir -p "$dir"
  wait_quiet
  echo "== $scenario run $k at $(date -u +%H:%M:%S) UTC, commit $COMMIT =="
  # A failed target is in the log and the results; go on with the next run.
  flock /tmp/bench.lock "$B" "$scenario" "$@" --out "$dir" "${COMMON[@]}" 2>&1 | tee "$dir/log.txt" || true
}

for scenario in "${SCENARIOS[@]}"; do
  case $scenario in
    # 18,000 idle connections, each on user:u{i} and workspace:bench, held
    # longer than one 25 s heartbeat; RSS read at every step.
    idle) for k in $(seq "$RUNS"); do
        bench idle "$k" --target $SERVERS --connections 1000,5000,10000,18000 --hold-secs 35
      done ;;
    # One channel, 10,000 subscribers, 100k deliveries/s (10 publishes/s).
    fanout) for k in $(seq "$RUNS"); do
        bench fanout "$k" --target $ALL --connections 10000 --rate 100000 --duration 10
      done ;;
    # 10,000 connections, each on its own channel, 50,000 events/s spread over
    # them, published 50 channels per request through each server's broadcast
    # API: one HTTP request per event would take most of the core by itself.
    channels) for k in $(seq "$RUNS"); do
        bench channels "$k" --target $ALL --connections 10000 --rate 50000 --duration 10 --publish-batch 50
      done ;;
    # 10,000 subscribers of one channel, the rate raised until a step is not
    # sustained (p99 > 500 ms, a loss, a drop, or < 95% delivered); the floor
    # shows where the generator itself stops.
    max) for k in $(seq "$MAX_RUNS"); do
        bench max "$k" --target tidings,centrifugo,socketio,floor-batched --connections 10000 \
          --p99-bound-ms 500 --step-secs 5 \
          --max-rates 50000,100000,200000,300000,400000,500000,600000,700000,800000,1000000
      done ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
python3 bench/summarize.py "$OUT"/*-[0-9]*/ > "$OUT/summary.md"
cat "$OUT/summary.md"
