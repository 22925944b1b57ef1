#!/usr/bin/env bash
# Issue 16 item 3 (permessage-deflate) measurements; run under the shared
# benchmark lock: flock /tmp/bench.lock bash bench/results/issue16-deflate/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=bench/results/issue16-deflate
git rev-parse HEAD >"$out/commit.txt"
date -u +"start %FT%TZ" >"$out/times.txt"
target/release/tidings-deflate-bench --connections 1000 --events 1000 --rate 100 --runs 3 --payload entity \
  2>&1 | tee "$out/entity.txt"
date -u +"entity done %FT%TZ" >>"$out/times.txt"
target/release/tidings-deflate-bench --connections 1000 --events 1000 --rate 100 --runs 3 --payload rows \
  2>&1 | tee "$out/rows.txt"
date -u +"rows done %FT%TZ" >>"$out/times.txt"
target/release/tidings-bench idle --target tidings --tidings-bin target/release/tidings \
  --connections 1000,5000,10000,18000 --hold-secs 35 --quiet-wait 10 --timeout 380 \
  --out "$out/idle" 2>&1 | tee "$out/idle.txt"
date -u +"idle done %FT%TZ" >>"$out/times.txt"
