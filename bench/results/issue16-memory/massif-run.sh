#!/bin/bash
# usage: bench/results/issue16-memory/massif-run.sh BIN OUTDIR (absolute paths) [extra TIDINGS_ env assignments...]
set -u
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=$1; OUT=$2; shift 2
mkdir -p $OUT; cd $OUT
env TIDINGS_JWT_SECRET=tidings-bench-secret-0123456789abcdef TIDINGS_API_KEY=tidings-bench-api-key-0123456789 \
  TIDINGS_LOG_LEVEL=warn TIDINGS_CONNECTION_MAX_CONNECTIONS_PER_USER=1000000 TIDINGS_CONNECTION_MAX_CONNECTIONS=0 "$@" \
  taskset -c 0 valgrind --tool=massif --threshold=0.2 --massif-out-file=$OUT/massif.out $BIN --listen 127.0.0.1:0 > $OUT/server.out 2> $OUT/server.err &
VPID=$!
for i in $(seq 1 120); do grep -q "listening on" $OUT/server.out 2>/dev/null && break; sleep 1; done
ADDR=$(grep -o "listening on [^ ]*" $OUT/server.out | head -1 | awk '{print $3}' | sed 's#http://##')
PID=$(pgrep -P $VPID | head -1); [ -z "$PID" ] && PID=$VPID
echo "addr $ADDR vpid $VPID pid $PID"
timeout 600 $ROOT/target/release/tidings-bench idle --target tidings --tidings-addr $ADDR --tidings-pid $VPID --connections 2000 --hold-secs 5 --connect-rate 300 --out $OUT/bench --timeout 500 2>&1 | grep -v ramp | tail -5
kill -INT $VPID; wait $VPID
cp $ROOT/bench/results/latest/massif-attribute.py $OUT/ && cd $OUT && python3 massif-attribute.py > attribution.txt; head -40 attribution.txt
