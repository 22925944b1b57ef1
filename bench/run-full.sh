#!/usr/bin/env bash
# The full side-by-side benchmark behind docs/benchmarks.md.
# Each run starts its own server (Tidings, then the Socket.IO peer) pinned to
# core 0 with taskset; the generator pins itself to core 1. Every run is bounded
# (--timeout) and waits for the machine to be quiet first (--quiet-wait).
# Results merge into bench/results/latest/ (results.json, results.md, *.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tidings-server -p tidings-bench
npm ci --prefix bench/peers/socketio --no-audit --no-fund
BENCH=target/release/tidings-bench
OUT=${OUT:-bench/results/latest}
COMMON=(--out "$OUT" --quiet-wait 60 --timeout 600)

# Idle connections and memory. 19k is the most this sandbox allows (hard
# RLIMIT_NOFILE = 20000 per process, no CAP_SYS_RESOURCE); on a machine with a
# higher limit use e.g. --connections 10000,25000,50000,100000 (source addresses
# 127.0.0.1..4 are used automatically past 25k).
"$BENCH" idle --connections 1000,5000,10000,19000 --hold-secs 35 "${COMMON[@]}"
# One channel, 10k subscribers, 100k deliveries/s (10 publishes/s).
"$BENCH" fanout --connections 10000 --rate 100000 --duration 10 "${COMMON[@]}"
# 10k connections, each on its own channel, 5k publishes/s spread over them.
"$BENCH" channels --connections 10000 --rate 5000 --duration 10 "${COMMON[@]}"
# 1000 subscribers on one channel, rate raised until p99 > 50 ms.
"$BENCH" max --connections 1000 --p99-bound-ms 50 --step-secs 5 \
  --max-rates 2000,5000,10000,20000,40000,60000,80000,100000,125000,150000,200000,250000,300000,400000,500000 \
  "${COMMON[@]}"
