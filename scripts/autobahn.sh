#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzing client (cases 1-7
# and 10, and the permessage-deflate cases 12 and 13) against the ws-echo
# example, which serves WebSocket through the same code as the server's /ws
# (limits, close handling, compression), and fails unless every case is OK,
# NON-STRICT or INFORMATIONAL. Called by scripts/test.sh.
# Cases 12 and 13 send messages of up to 128 KiB, over the default
# max_message_size (64 KiB): they run against a second ws-echo with 256 KiB.
# All 306 of them take over 25 minutes on a 2-core machine, so by default a
# subset of 22 runs (a minute or two): every kind of payload at 1 KiB, 256 B to
# 4 KiB and fragmented 8 KiB messages with the default offer, and each of the
# seven offers of case 13 at 256 B and 1 KiB. AUTOBAHN_DEFLATE=all runs all 306.
set -euo pipefail
cd "$(dirname "$0")/.."

# The suite is Python 2.7 only; pyenv's 2.7.18 unless AUTOBAHN_PYTHON says otherwise.
python2="${AUTOBAHN_PYTHON:-$HOME/.pyenv/versions/2.7.18/bin/python2.7}"
site_dir=target/autobahn/site
reports=reports/servers

if [ ! -f "$site_dir/autobahntestsuite/__init__.py" ]; then
  echo "installing autobahntestsuite 25.10.1 into $site_dir"
  "$python2" -m pip install --quiet --disable-pip-version-check \
    --target "$site_dir" autobahntestsuite==25.10.1
fi

cargo build --locked -p tidings --example ws-echo
free_port() {
  "$python2" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
echo_pids=()
trap 'for pid in "${echo_pids[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
# start_echo PORT LOG [FLAGS...]
start_echo() {
  local port=$1 log=$2
  shift 2
  target/debug/examples/ws-echo --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  echo_pids+=($!)
  for _ in $(seq 1 100); do
    grep -q "listening" "$log" && return 0
    sleep 0.1
  done
  cat "$log"
  echo "ws-echo did not start"
  exit 1
}
port=$(free_port)
start_echo "$port" target/autobahn/ws-echo.log
deflate_port=$(free_port)
start_echo "$deflate_port" target/autobahn/ws-echo-deflate.log --max-message-size 262144

if [ "${AUTOBAHN_DEFLATE:-subset}" = all ]; then
  deflate_cases='"12.*", "13.*"'
else
  deflate_cases='"12.1.3", "12.1.4", "12.1.5", "12.1.11", "12.2.4", "12.3.4", "12.4.4", "12.5.4"'
  for offer in 1 2 3 4 5 6 7; do deflate_cases="$deflate_cases, \"13.$offer.3\", \"13.$offer.4\""; done
fi

rm -rf "$reports"
spec=target/autobahn/fuzzingclient.json
cat >"$spec" <<JSON
{
  "outdir": "$reports",
  "servers": [
    {"agent": "tidings-ws-echo", "url": "ws://127.0.0.1:$port"},
    {"agent": "tidings-ws-echo-256k", "url": "ws://127.0.0.1:$deflate_port"}
  ],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*", $deflate_cases],
  "exclude-cases": [],
  "exclude-agent-cases": {
    "tidings-ws-echo": ["12.*", "13.*"],
    "tidings-ws-echo-256k": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
  }
}
JSON
"$python2" scripts/autobahn-wstest.py "$site_dir" --mode fuzzingclient --spec "$spec" \
  >target/autobahn/wstest.log 2>&1 || { tail -n 30 target/autobahn/wstest.log; exit 1; }
python3 scripts/autobahn-results.py "$reports"
