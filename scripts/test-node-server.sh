#!/usr/bin/env bash
# The Node publisher package (clients/node-server): build, then its tests
# against the real server binary (target/debug/tidings must be built).
set -euo pipefail
cd "$(dirname "$0")/../clients/node-server"
npm ci --no-audit --no-fund
npm test
