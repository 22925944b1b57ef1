#!/usr/bin/env bash
# Schemathesis against a live server with docs/openapi.json: every operation,
# generated valid and invalid inputs (examples, coverage and fuzzing phases).
# Fails on any 5xx, any response that violates the document, any undocumented
# status or content type, any schema-invalid request the server accepts, and
# on fewer than 1,000 generated cases. Needs target/debug/tidings.
#
# Not checked: `positive_data_acceptance` (every schema-valid request gets a
# 2xx). The document cannot say everything the server enforces: names are
# limited in UTF-8 bytes (JSON Schema counts characters), `epoch` needs
# `since`, an entity channel must fit in 255 bytes. Those requests get 400,
# which the document lists for them.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/python-test-venv.sh)
work=$(mktemp -d)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api_key="schemathesis-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TIDINGS_JWT_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
TIDINGS_API_KEY="$api_key" TIDINGS_LISTEN="127.0.0.1:$port" TIDINGS_LOG_LEVEL=warn \
  target/debug/tidings >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$work/server.log" && break
  sleep 0.1
done
base="http://127.0.0.1:$port"

# The server serves the document kept in the repository, without the API key.
"$python" - "$base" <<'PY'
import json, sys, httpx
served = httpx.get(sys.argv[1] + "/api/openapi.json")
assert served.status_code == 200, served.status_code
assert served.json() == json.load(open("docs/openapi.json")), "GET /api/openapi.json differs from docs/openapi.json"
PY

# Loaded from the file (Schemathesis skips the operation it loaded the schema
# from), and run in the temporary folder, where it keeps its caches.
set +e
(cd "$work" && "$python" -m schemathesis.cli run "$OLDPWD/docs/openapi.json" --url "$base" \
  -H "Authorization: Bearer $api_key" \
  --checks all --exclude-checks positive_data_acceptance \
  --mode all --max-examples 300 \
  --report junit --report-junit-path "$work/junit.xml" \
  --no-color 2>&1) | tee "$work/schemathesis.log"
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { echo "schemathesis failed (exit $status)"; exit 1; }
"$python" - "$work/schemathesis.log" "$work/junit.xml" <<'PY'
import re, sys
import xml.etree.ElementTree as ET
log = open(sys.argv[1]).read()
generated = int(re.search(r"(\d+) generated", log).group(1))
operations = {case.get("name") for case in ET.parse(sys.argv[2]).iter("testcase")}
print(f"Schemathesis: {generated} generated cases over {len(operations)} operations")
assert generated >= 1000, f"only {generated} cases generated"
assert len(operations) == 9, sorted(operations)
PY
