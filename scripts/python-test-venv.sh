#!/usr/bin/env bash
# Creates (once) target/test-venv with the packages of
# scripts/python-test-requirements.txt, and prints its python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/test-venv
requirements=scripts/python-test-requirements.txt
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >&2; then
    # Debian's python3 needs its venv module as a package of its own.
    if [ "$(id -u)" -eq 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
    "${apt_get[@]}" update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq python3-venv >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
  fi
fi
if ! cmp -s "$requirements" "$stamp"; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$stamp"
fi
echo "$PWD/$venv/bin/python"
