#!/usr/bin/env bash
# Builds the Centrifugo peer for tidings-bench from the Go module proxy into
# bench/peers/centrifugo/bin/centrifugo (gitignored). Idempotent: a binary that
# already reports this version is kept. The version is pinned so every run
# compares the same server; it is stamped into the binary as the release
# builds do (without it Centrifugo calls itself 0.0.0 and warns at start).
set -euo pipefail
VERSION=6.9.1
DIR="$(cd "$(dirname "$0")" && pwd)"
BIN="$DIR/bin/centrifugo"
if [[ -x "$BIN" ]] && "$BIN" version 2>/dev/null | grep -q "v$VERSION\b\|$VERSION "; then
  echo "centrifugo $VERSION already built: $BIN"
  exit 0
fi
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
mkdir -p "$DIR/bin"
GOBIN="$DIR/bin" "$GO" install \
  -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=$VERSION" \
  "github.com/centrifugal/centrifugo/v6@v$VERSION"
"$BIN" version
