#!/usr/bin/env bash
# Creates (once) target/test-venv with the packages of
# scripts/python-test-requirements.txt, and prints its python.
# Sourced-free: call it and read the path from stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/test-venv
requirements=scripts/python-test-requirements.txt
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! cmp -s "$requirements" "$stamp"; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$stamp"
fi
echo "$PWD/$venv/bin/python"
