"""``python -m build`` makes installable artifacts: the wheel, installed into a
clean virtual environment, imports, carries ``py.typed`` and talks to the real
server."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import PACKAGE_ROOT, Server


def test_the_built_wheel_installs_into_a_clean_venv(server: Server, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(PACKAGE_ROOT)], check=True, capture_output=True)
    wheels = list(dist.glob("tidings-0.1.0-*.whl"))
    sdists = list(dist.glob("tidings-0.1.0.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "tidings/py.typed" in names
    assert "tidings/__init__.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheels[0])], check=True)
    program = """
import json, sys
from tidings import Tidings, TidingsApiError, mint_token
with Tidings(sys.argv[1], sys.argv[2]) as tidings:
    info = tidings.info()
    published = tidings.publish("workspace:acme", "built", 1)
    try:
        tidings.publish("nowhere:x", "x", 1)
        code = None
    except TidingsApiError as error:
        code = error.code
print(json.dumps({"engine": info["engine"], "offset": published["offset"] > 0, "code": code,
                  "token": len(mint_token("a", secret="s" * 32).split("."))}))
"""
    out = subprocess.run(
        [str(python), "-c", program, server.url, server.api_key], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == {"engine": "memory", "offset": True, "code": "unknown_channel", "token": 3}
