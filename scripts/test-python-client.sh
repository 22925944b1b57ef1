#!/usr/bin/env bash
# The Python publisher package (clients/python): mypy --strict, then pytest
# against the real server binary (target/debug/tidings must be built).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/python-test-venv.sh)
(cd clients/python && "$python" -m mypy src examples/fastapi_app.py)
(cd clients/python && "$python" -m pytest -q -p no:cacheprovider -p no:hypothesispytest)
