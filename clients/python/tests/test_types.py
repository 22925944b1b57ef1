"""The public types as ``mypy --strict`` sees them in a user's code, and the
values they allow accepted by the real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import PACKAGE_ROOT, Server
from tidings import Tidings

ALLOWED = """
from typing import Optional
from tidings import EntityRef, HistoryResult, Tidings, mint_token

def use(tidings: Tidings) -> Optional[int]:
    entity: EntityRef = {"type": "t", "id": "1", "version": None}
    tidings.entity_event("acme", entity, "updated")
    tidings.entity_event("acme", {"type": "t", "id": "1", "version": 3}, "updated")
    history: HistoryResult = tidings.history("workspace:acme", order="newest")
    tidings.history("workspace:acme", order="oldest")
    mint_token(42, secret="s" * 32, workspaces="acme", roles=["admin", 7])
    return history["events"][0].get("meta", {}).get("entity", {}).get("version")
"""

REFUSED = """
from tidings import Tidings

def use(tidings: Tidings) -> None:
    tidings.history("workspace:acme", order="sideways")
"""


def mypy(tmp_path: Path, name: str, program: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / f"{name}.py").write_text(program)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), f"{name}.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(PACKAGE_ROOT / "src")},
        capture_output=True,
        text=True,
    )


def test_null_entity_version_and_history_order_types(tmp_path: Path) -> None:
    allowed = mypy(tmp_path, "allowed", ALLOWED)
    assert allowed.returncode == 0, allowed.stdout
    refused = mypy(tmp_path, "refused", REFUSED)
    assert refused.returncode == 1 and '"order"' in refused.stdout and "sideways" in refused.stdout, refused.stdout


def test_a_null_entity_version_is_accepted_by_the_server(server: Server) -> None:
    with Tidings(server.url, server.api_key) as tidings:
        entity_id = f"o{time.monotonic_ns()}"
        result = tidings.entity_event("acme", {"type": "orders", "id": entity_id, "version": None}, "updated")
        assert result["event"] == "orders.updated"
        event = tidings.history(f"workspace:acme:orders:{entity_id}")["events"][0]
        assert event["meta"]["entity"]["id"] == entity_id
