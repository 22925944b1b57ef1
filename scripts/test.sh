#!/usr/bin/env bash
# Runs every test of the repository from a fresh clone: installs what the tests
# need, then formatting, lints, and the Rust, TypeScript and browser test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Rust formatting"
cargo fmt --all -- --check

step "Clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rustdoc of the library (broken or private links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked -p tidings -p tidings-auth --no-deps

step "Build the server binary used by the process, bench and SDK tests"
cargo build --locked -p tidings-server

step "Socket.IO peer for the benchmark smoke test"
npm ci --prefix bench/peers/socketio --no-audit --no-fund

step "System packages for the Redis engine tests (Debian's redis-server)"
install_packages() {
  if [ "$(id -u)" -eq 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "$@" >/dev/null
}
command -v redis-server >/dev/null 2>&1 || install_packages redis-server

step "System packages for the outbox consumer tests (Debian's postgresql; the tests run initdb/postgres themselves)"
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || install_packages postgresql

step "Rust tests (unit, integration over real sockets, property, binary, bench smoke)"
cargo test --workspace --locked

step "The engine-independent server suites again, on the Redis engine"
redis_dir=$(mktemp -d)
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" >/dev/null 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
# `|| true`: under `set -e` a failing command in the EXIT trap (killing the
# redis-server already stopped below) turns a green run into exit status 1.
trap 'kill "$redis_pid" 2>/dev/null || true; rm -rf "$redis_dir"' EXIT
# The slow-consumer test measures the process's RSS, so it runs alone, after
# the others (which share the process and, on Redis, buffer more in flight).
TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0" cargo test --locked -p tidings --test server -- --skip cluster:: --skip liveness::slow_consumer
TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0" cargo test --locked -p tidings --test server -- liveness::slow_consumer
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
step "Autobahn|Testsuite: RFC 6455 conformance of the WebSocket code (cases 1-7, 10; 22 permessage-deflate cases of 12 and 13)"
bash scripts/autobahn.sh

step "System packages for the browser tests (Debian's chromium)"
command -v chromium >/dev/null 2>&1 || install_packages chromium

step "TypeScript SDK and React bindings (Node, React, and Chromium tests against the real server)"
(cd clients/js && npm ci --no-audit --no-fund && npm test)

step "Socket.IO: socket.io-client 4.8 (Node and Chromium) against the real server; Engine.IO and Socket.IO protocol cases against examples/socketio-conformance.rs; failover on Redis"
cargo build --locked -p tidings --example socketio-conformance
(cd tests/socketio && npm ci --no-audit --no-fund && npm test && npm run test:protocol && npm run test:chromium)
# Two nodes on a real redis-server: the client's node is killed, it recovers on the other.
sio_redis_dir=$(mktemp -d)
sio_redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$sio_redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$sio_redis_dir" >/dev/null 2>&1 &
sio_redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$sio_redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
trap 'kill "$sio_redis_pid" 2>/dev/null || true; rm -rf "$redis_dir" "$sio_redis_dir"' EXIT
(cd tests/socketio && TEST_REDIS_URL="redis://127.0.0.1:$sio_redis_port/0" npm run test:failover)
kill "$sio_redis_pid"; wait "$sio_redis_pid" 2>/dev/null || true

step "Publisher packages against the real server: @tidings/server (Node), tidings (Python: venv in target/test-venv, pip)"
bash scripts/test-node-server.sh
bash scripts/test-python-client.sh

step "Schemathesis: the OpenAPI document against a live server (at least 1,000 generated cases)"
bash scripts/test-openapi.sh
step "Demo app examples/live-board (Chromium end to end against the real server, over WebSocket and SSE)"
(cd examples/live-board && npm ci --no-audit --no-fund && npm test)
