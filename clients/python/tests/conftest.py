"""Real Tidings server processes (target/debug/tidings), real WebSocket
subscribers, and the sync or async client under test."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tidings import AsyncTidings, Tidings, mint_token

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_ROOT.parent.parent
SERVER_BIN = Path(os.environ.get("TEST_TIDINGS_BIN", REPO_ROOT / "target/debug/tidings"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    api_key: str
    secret: str
    process: subprocess.Popen[bytes]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def token(self, sub: str = "u1", workspaces: tuple[str, ...] = ("acme",), roles: tuple[str, ...] = ()) -> str:
        return mint_token(sub, secret=self.secret, workspaces=workspaces, roles=roles, ttl=600)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(port: int = 0, api_key: Optional[str] = None) -> Server:
    """Starts the real binary; returns once it listens."""
    if not SERVER_BIN.exists():
        raise RuntimeError(f"no server binary at {SERVER_BIN}: cargo build -p tidings-server")
    api_key = api_key or f"key-{secrets.token_hex(12)}"
    secret = secrets.token_hex(24)
    process = subprocess.Popen(
        [str(SERVER_BIN)],
        env={
            "PATH": os.environ.get("PATH", ""),
            "TIDINGS_JWT_SECRET": secret,
            "TIDINGS_API_KEY": api_key,
            "TIDINGS_LISTEN": f"127.0.0.1:{port}",
            "TIDINGS_CONSOLE": "false",
            "TIDINGS_LOG_LEVEL": "warn",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        match = re.search(r"listening on (\S+)", line)
        if match:
            address = match.group(1)
            return Server(f"http://{address}", int(address.rsplit(":", 1)[1]), api_key, secret, process)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the server did not start")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    running = start_server()
    yield running
    running.stop()


class Blocking:
    """Runs an ``AsyncTidings`` on one private event loop, so a test can call
    it like the sync client."""

    def __init__(self, client: AsyncTidings, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))

        return call


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Builds the client under test (``Tidings``, or ``AsyncTidings`` behind ``Blocking``)."""
    loop = asyncio.new_event_loop()
    made: List[Any] = []

    def make(url: str, api_key: str, **options: Any) -> Any:
        if request.param == "sync":
            client: Any = Tidings(url, api_key, **options)
            made.append(client)
            return client
        async_client = AsyncTidings(url, api_key, **options)
        made.append(async_client)
        return Blocking(async_client, loop)

    yield make
    for client in made:
        if isinstance(client, Tidings):
            client.close()
        else:
            loop.run_until_complete(client.aclose())
    loop.close()


class Subscriber:
    """A real WebSocket client of the server, subscribed to some channels."""

    def __init__(self, ws_url: str, token: str, channels: List[str]) -> None:
        self.ws: ClientConnection = connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}, legacy=True)
        self.seen: List[Dict[str, Any]] = []
        self.next(lambda m: m["type"] == "connected")
        for i, channel in enumerate(channels, start=1):
            self.ws.send(json.dumps({"type": "subscribe", "id": i, "channel": channel}))
            reply = self.next(lambda m, i=i: m.get("id") == i)
            assert reply["type"] == "subscribed", reply

    def next(self, matches: Callable[[Dict[str, Any]], bool], timeout: float = 10.0) -> Dict[str, Any]:
        for message in self.seen:
            if matches(message):
                self.seen.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout} s; saw {self.seen}")
            message = json.loads(self.ws.recv(timeout=remaining))
            if message["type"] == "ping":
                self.ws.send('{"type":"pong"}')
            elif matches(message):
                return message
            else:
                self.seen.append(message)

    def event(self, matches: Callable[[Dict[str, Any]], bool] = lambda e: True, timeout: float = 10.0) -> Dict[str, Any]:
        return self.next(lambda m: m["type"] == "event" and matches(m), timeout)

    def events_within(self, seconds: float) -> List[Dict[str, Any]]:
        """Every event that arrives within ``seconds``."""
        events = [m for m in self.seen if m["type"] == "event"]
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(self.ws.recv(timeout=remaining))
            except TimeoutError:
                break
            if message["type"] == "event":
                events.append(message)
        return events

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def subscribe(server: Server) -> Iterator[Callable[..., Subscriber]]:
    opened: List[Subscriber] = []

    def open_one(channels: List[str], sub: str = "u1", roles: tuple[str, ...] = ()) -> Subscriber:
        subscriber = Subscriber(server.ws_url, server.token(sub, roles=roles), channels)
        opened.append(subscriber)
        return subscriber

    yield open_one
    for subscriber in opened:
        subscriber.close()


# Misbehaving network pieces, each in a thread of its own.


class SilentListener:
    """Accepts TCP connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


class LossyProxy:
    """Forwards TCP to the real server, but cuts the first ``drop`` connections
    as soon as the server starts answering: the request is served, its answer lost."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port = target_port
        self.drop = drop
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            dropping = self.connections <= self.drop
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, dropping), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, cut: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if cut:
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


@dataclass
class FlakyFront:
    """An HTTP front for the real server: answers with ``failures`` first, then
    forwards; records every request body."""

    target: str
    failures: List[tuple[int, Any]]
    bodies: List[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                front.bodies.append(body)
                encoding = None
                if front.failures:
                    status, reply = front.failures.pop(0)
                    if isinstance(reply, bytes):
                        # A body that claims gzip and is not: an answer no client can decode.
                        raw, kind, encoding = reply, "application/json", "gzip"
                    else:
                        raw = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                        kind = "text/html" if isinstance(reply, str) else "application/json"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                    upstream = httpx.request(self.command, front.target + self.path, headers=headers, content=body or None)
                    status, raw, kind = upstream.status_code, upstream.content, "application/json"
                self.send_response(status)
                self.send_header("content-type", kind)
                if encoding:
                    self.send_header("content-encoding", encoding)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = _handle
            do_POST = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
