"""The FastAPI example (examples/fastapi_app.py) served by uvicorn against the
real server: a WebSocket subscriber receives the event it publishes after its
write."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from conftest import PACKAGE_ROOT, Server, Subscriber, free_port


def test_the_fastapi_example_publishes_after_the_write(server: Server) -> None:
    subscriber = Subscriber(server.ws_url, server.token("reviewer"), ["workspace:acme:applications:app123"])
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=PACKAGE_ROOT / "examples",
        env={
            **os.environ,
            "PYTHONPATH": str(PACKAGE_ROOT / "src"),
            "TIDINGS_URL": server.url,
            "TIDINGS_API_KEY": server.api_key,
        },
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = httpx.post(f"{base}/applications/app123/approve", headers={"X-User": "u9"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the example app did not start"
                time.sleep(0.1)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"id": "app123", "workspace": "acme", "status": "approved", "version": 2}
        event = subscriber.event(lambda e: e["event"] == "applications.approved")
        assert event["channel"] == "workspace:acme:applications:app123"
        assert event["data"] == {"status": "approved"}
        assert event["meta"] == {"actor": "u9", "entity": {"type": "applications", "id": "app123", "version": 2}}
    finally:
        subscriber.close()
        app.terminate()
        app.wait(10)
