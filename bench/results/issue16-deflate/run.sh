#!/usr/bin/env bash
# Issue 16 item 3 (permessage-deflate): bytes on the wire and server CPU per
# delivery, Tidings against Centrifugo v6.9.1 with its compression on, same
# machine, same client. Needs the release build and the Centrifugo peer:
#   cargo build --release -p tidings-server -p tidings-bench
#   bench/peers/centrifugo/build.sh
#   bash bench/results/issue16-deflate/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=bench/results/issue16-deflate
git rev-parse HEAD >"$out/commit.txt"
date -u +"start %FT%TZ" >"$out/times.txt"
# 100 events/s (100,000 deliveries/s), then 20 events/s (20,000 deliveries/s,
# which Centrifugo compresses on one core without falling behind).
for run in "100 1000 " "20 400 -20"; do
  read -r rate events suffix <<<"$run"
  for payload in entity rows; do
    for target in tidings centrifugo; do
      target/release/tidings-deflate-bench --connections 1000 --events "$events" --rate "$rate" --runs 3 \
        --payload "$payload" --target "$target" 2>&1 | tee "$out/$payload$suffix-$target.txt"
      date -u +"$payload $rate/s $target done %FT%TZ" >>"$out/times.txt"
    done
  done
done
