#!/bin/bash
# usage (from the repository root): bench/results/issue16-memory/idle-3-runs.sh NAME BIN [extra bench args]; three idle runs, one after the other
NAME=$1; BIN=$2; shift 2
for i in 1 2 3; do
  date -u +%H:%M:%S
  timeout 400 target/release/tidings-bench idle --target tidings --tidings-bin $BIN --connections 1000,5000,10000,18000 --hold-secs 35 --quiet-wait 10 --timeout 380 --out bench/results/issue16-memory/$NAME-$i "$@" 2>&1 | grep -v ramp
done
