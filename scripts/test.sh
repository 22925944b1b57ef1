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

step "Build the server binary used by the process, bench and SDK tests"
cargo build --locked -p tidings-server

step "Socket.IO peer for the benchmark smoke test"
npm ci --prefix bench/peers/socketio --no-audit --no-fund

step "Rust tests (unit, integration over real sockets, property, binary, bench smoke)"
cargo test --workspace --locked

step "System packages for the browser tests (Debian's chromium)"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
  "${apt_get[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq chromium >/dev/null
fi

step "TypeScript SDK and React bindings (Node, React, and Chromium tests against the real server)"
(cd clients/js && npm ci --no-audit --no-fund && npm test)

step "Demo app examples/live-board (Chromium end to end against the real server, over WebSocket and SSE)"
(cd examples/live-board && npm ci --no-audit --no-fund && npm test)
