"""``Tidings`` and ``AsyncTidings`` (each test runs with both) against the real
server binary: every method, idempotent retries, no retry on 4xx, timeouts."""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import json
import math
import threading
import time
from typing import Any, Callable

import pytest

from conftest import FlakyFront, LossyProxy, Server, SilentListener, Subscriber, free_port, start_server
from tidings import (
    AsyncTidings,
    Tidings,
    TidingsApiError,
    TidingsConnectionError,
    TidingsError,
    TidingsTimeoutError,
    mint_token,
)

MakeClient = Callable[..., Any]
Subscribe = Callable[..., Subscriber]


def fast(make_client: MakeClient, server: Server, **options: Any) -> Any:
    options.setdefault("min_backoff", 0.05)
    options.setdefault("max_backoff", 0.2)
    return make_client(server.url, server.api_key, **options)


def test_publish_with_meta_audience_and_exclusion(make_client: MakeClient, server: Server, subscribe: Subscribe) -> None:
    channel = f"workspace:acme:pub-{time.monotonic_ns()}"
    admin = subscribe([channel], sub="u7", roles=("admin",))
    other = subscribe([channel], sub="u8")
    client = fast(make_client, server)
    published = client.publish(
        channel,
        "applications.updated",
        {"id": "app1"},
        meta={"actor": "u7", "correlation_id": "req-1", "entity": {"type": "applications", "id": "app1", "version": 2}},
        audience={"roles": ["admin"]},
        exclude_client="c_nobody",
    )
    assert published["channel"] == channel
    assert published["offset"] == 1
    assert published["id"].startswith("e_")
    event = admin.event()
    assert event["data"] == {"id": "app1"}
    assert event["meta"] == {
        "actor": "u7",
        "correlation_id": "req-1",
        "entity": {"type": "applications", "id": "app1", "version": 2},
    }
    assert other.events_within(0.3) == [], "the audience left u8 out"


def test_null_data_and_the_x_api_key_scheme(make_client: MakeClient, server: Server) -> None:
    client = make_client(server.url, server.api_key, api_key_header=True)
    channel = f"workspace:acme:null-{time.monotonic_ns()}"
    client.publish(channel, "x", None)
    assert client.history(channel)["events"][0]["data"] is None
    assert client.info()["engine"] == "memory"


def test_non_ascii_data_is_sent_as_utf8(make_client: MakeClient, server: Server) -> None:
    # 700 KB of UTF-8, under the 1 MiB api.max_body_size; as \uXXXX escapes
    # it would be 1.8 MB and refused with 413.
    text = "é" * 200_000 + "中" * 100_000
    assert len(text.encode()) < 1024 * 1024 < len(json.dumps(text))
    front = FlakyFront(server.url, [])
    try:
        client = make_client(front.url, server.api_key, retries=0)
        channel = f"workspace:acme:utf8-{time.monotonic_ns()}"
        client.publish(channel, "x", {"text": text}, meta={"actor": "Zoë"})
        client.broadcast([channel], "x", text)
        client.entity_event("acme", {"type": "t", "id": "1"}, "x", data=text, actor="Zoë")
        sent = [body for body in front.bodies if body]
        assert len(sent) == 3 and all(text.encode() in body and b"\\u" not in body for body in sent)
        events = client.history(channel)["events"]
        assert [e["data"] for e in events] == [{"text": text}, text]
        assert events[0]["meta"] == {"actor": "Zoë"}
    finally:
        front.close()


def test_data_json_cannot_carry_is_invalid_request_and_not_sent(make_client: MakeClient, server: Server) -> None:
    front = FlakyFront(server.url, [])
    try:
        client = make_client(front.url, server.api_key)
        channel = f"workspace:acme:notjson-{time.monotonic_ns()}"
        cycle: dict[str, Any] = {}
        cycle["self"] = cycle
        calls: list[Callable[[], Any]] = [
            lambda: client.publish(channel, "x", {"at": datetime.datetime(2026, 1, 1)}),
            lambda: client.publish(channel, "x", {"amount": decimal.Decimal("1.5")}),
            lambda: client.publish(channel, "x", {"ratio": math.nan}),
            lambda: client.publish(channel, "x", [1, math.inf]),
            lambda: client.publish(channel, "x", cycle),
            lambda: client.publish(channel, "x", "\ud800"),
            lambda: client.broadcast([channel], "x", {"n": -math.inf}),
            lambda: client.entity_event("acme", {"type": "t", "id": "1"}, "x", data={"s": {1, 2}}),
        ]
        for call in calls:
            with pytest.raises(TidingsError) as caught:
                call()
            assert (type(caught.value), caught.value.code, caught.value.attempts) == (TidingsError, "invalid_request", 0)
            assert str(caught.value).startswith("POST /api/")
        assert front.bodies == [], "nothing was sent"
    finally:
        front.close()
    assert fast(make_client, server).history(channel)["events"] == []


def test_a_url_without_http_is_refused_at_construction_and_the_key_is_stripped(
    make_client: MakeClient, server: Server
) -> None:
    for url in ("127.0.0.1:8000", "localhost:8000", "tidings", "ftp://tidings", "http://"):
        began = time.monotonic()
        with pytest.raises(ValueError, match="http:// or https://"):
            make_client(url, server.api_key, retries=3, min_backoff=1.0)
        assert time.monotonic() - began < 0.5, "refused at once, not retried"
    # A key read from a file keeps its newline.
    client = make_client(server.url, f"  {server.api_key}\n", retries=0)
    assert client.info()["engine"] == "memory"
    with pytest.raises(ValueError, match="api_key"):
        make_client(server.url, " \n")


def test_broadcast_refuses_one_string_for_its_channels(make_client: MakeClient, server: Server) -> None:
    client = make_client(server.url, server.api_key)
    with pytest.raises(TypeError, match="not one string"):
        client.broadcast("workspace:acme", "x", 1)


def test_broadcast_keeps_one_id(make_client: MakeClient, server: Server) -> None:
    results = fast(make_client, server).broadcast(["workspace:acme:b1", "user:u42"], "notice", {"text": "hi"})
    assert [r["channel"] for r in results] == ["workspace:acme:b1", "user:u42"]
    assert results[0]["id"] == results[1]["id"]


def test_entity_event_takes_any_action(make_client: MakeClient, server: Server, subscribe: Subscribe) -> None:
    entity_id = f"o{time.monotonic_ns()}"
    sub = subscribe([f"workspace:acme:orders:{entity_id}"])
    client = fast(make_client, server)
    for action in ("approved", "status_changed"):
        result = client.entity_event(
            "acme",
            {"type": "orders", "id": entity_id, "version": 3},
            action,
            data={"status": action},
            actor="u7",
            correlation_id="req-9",
        )
        assert result["event"] == f"orders.{action}"
        assert [r["channel"] for r in result["results"]] == [
            "workspace:acme",
            "workspace:acme:orders",
            f"workspace:acme:orders:{entity_id}",
        ]
    event = sub.event(lambda e: e["event"] == "orders.status_changed")
    assert event["meta"] == {
        "actor": "u7",
        "correlation_id": "req-9",
        "entity": {"type": "orders", "id": entity_id, "version": 3},
    }
    assert event["data"] == {"status": "status_changed"}


def test_presence_unsubscribe_and_disconnect(make_client: MakeClient, server: Server, subscribe: Subscribe) -> None:
    user = f"user{time.monotonic_ns()}"
    channel = f"workspace:acme:room-{user}"
    sub = subscribe([channel], sub=user)
    client = fast(make_client, server)
    presence = client.presence(channel)
    assert presence["channel"] == channel
    assert [(m["user"], m["status"], len(m["clients"])) for m in presence["members"]] == [(user, "online", 1)]
    assert client.unsubscribe(user, channel, reason="moved") == 1
    assert sub.next(lambda m: m["type"] == "unsubscribed")["channel"] == channel
    assert client.disconnect(user, code=4000, reason="bye") == 1
    assert sub.next(lambda m: m["type"] == "disconnect")["code"] == 4000
    assert client.disconnect("nobody") == 0


def test_history_since_epoch_limit_order(make_client: MakeClient, server: Server) -> None:
    client = fast(make_client, server)
    channel = f"workspace:acme:h-{time.monotonic_ns()}"
    for n in (1, 2, 3):
        client.publish(channel, "n", n)
    everything = client.history(channel)
    assert everything["type"] == "history"
    assert (everything["offset"], everything["complete"]) == (3, True)
    assert [e["data"] for e in everything["events"]] == [1, 2, 3]
    assert [e["offset"] for e in client.history(channel, order="newest", limit=2)["events"]] == [3, 2]
    assert [e["offset"] for e in client.history(channel, since=2, epoch=everything["epoch"])["events"]] == [3]
    other = client.history(channel, since=0, epoch="not-the-epoch")
    assert (other["events"], other["complete"]) == ([], False)


def test_info_lists_this_node(make_client: MakeClient, server: Server) -> None:
    info = fast(make_client, server).info()
    assert (info["version"], info["engine"]) == ("0.1.0", "memory")
    assert [n["name"] for n in info["nodes"]] == [info["node"]]


def test_mint_token_is_accepted_with_its_claims(server: Server) -> None:
    token = mint_token("minted", secret=server.secret, workspaces=["acme"], roles=["admin"], ttl=60)
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert (claims["sub"], claims["workspaces"], claims["roles"]) == ("minted", ["acme"], ["admin"])
    assert claims["exp"] - claims["iat"] == 60
    Subscriber(server.ws_url, token, ["workspace:acme"]).close()
    forged = mint_token("x", secret="another-secret-of-at-least-32-bytes!!", workspaces=["acme"])
    with pytest.raises(Exception, match="401"):
        Subscriber(server.ws_url, forged, [])


def test_mint_token_takes_one_string_and_integer_ids(make_client: MakeClient, server: Server) -> None:
    # One string is one workspace or role (not its letters); integer ids are
    # their decimal strings, which channel names and audience.users match.
    token = mint_token(42, secret=server.secret, workspaces="acme", roles="admin", ttl=60)
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert (claims["sub"], claims["workspaces"], claims["roles"]) == ("42", ["acme"], ["admin"])
    channel = f"workspace:acme:ids-{time.monotonic_ns()}"
    subscriber = Subscriber(server.ws_url, token, [channel])
    numeric = Subscriber(server.ws_url, mint_token("u9", secret=server.secret, workspaces=[7, "acme"]), ["workspace:7"])
    try:
        subscriber.ws.send(json.dumps({"type": "subscribe", "id": 99, "channel": "workspace:a"}))
        assert subscriber.next(lambda m: m.get("id") == 99)["code"] == "permission_denied"
        client = fast(make_client, server)
        client.publish(channel, "to.user", 1, audience={"users": ["42"]})
        client.publish(channel, "to.role", 2, audience={"roles": ["admin"]})
        assert [subscriber.event()["event"] for _ in range(2)] == ["to.user", "to.role"]
        assert client.presence(channel)["members"][0]["user"] == "42"
        client.publish("workspace:7", "x", 3)
        assert numeric.event()["data"] == 3
    finally:
        subscriber.close()
        numeric.close()
    for bad in ({"sub": True}, {"sub": 1.5}, {"sub": None}, {"workspaces": [None]}, {"roles": [1.0]}, {"workspaces": b"acme"}):
        options: dict[str, Any] = {"sub": "u1", **bad}
        with pytest.raises(TypeError, match="mint_token"):
            mint_token(options.pop("sub"), secret=server.secret, **options)


def test_a_call_after_close_is_client_closed(make_client: MakeClient, server: Server) -> None:
    client = make_client(server.url, server.api_key)
    assert client.info()["engine"] == "memory"
    if isinstance(client, Tidings):
        client.close()
    else:
        client.aclose()
    for call in (client.info, lambda: client.publish("workspace:acme", "x", 1)):
        with pytest.raises(TidingsError) as caught:
            call()
        assert (caught.value.code, caught.value.attempts) == ("client_closed", 0)
        assert "closed" in str(caught.value)


# Retries and idempotency.


def test_a_repeated_key_publishes_once(make_client: MakeClient, server: Server) -> None:
    client = fast(make_client, server)
    channel = f"workspace:acme:idem-{time.monotonic_ns()}"
    first = client.publish(channel, "x", 1, idempotency_key="k-1")
    assert client.publish(channel, "x", 1, idempotency_key="k-1") == first
    assert len(client.history(channel)["events"]) == 1


def test_server_down_for_a_moment_delivers_once(make_client: MakeClient) -> None:
    port = free_port()
    api_key = "retry-test-api-key-0123456789"
    started: list[Server] = []
    # The first attempt hits a closed port; the server starts a moment later.
    starter = threading.Timer(0.7, lambda: started.append(start_server(port, api_key)))
    starter.start()
    try:
        client = make_client(f"http://127.0.0.1:{port}", api_key, retries=10, min_backoff=0.2, max_backoff=0.4)
        began = time.monotonic()
        published = client.publish("workspace:acme:down", "x", {"n": 1})
        assert time.monotonic() - began >= 0.6, "the first attempt failed and a later one succeeded"
        assert published["offset"] == 1
        assert len(client.history("workspace:acme:down")["events"]) == 1
    finally:
        starter.join()
        for s in started:
            s.stop()


def test_a_lost_answer_is_retried_with_the_same_key(make_client: MakeClient, server: Server) -> None:
    proxy = LossyProxy(server.port, drop=1)
    try:
        client = make_client(f"http://127.0.0.1:{proxy.port}", server.api_key, min_backoff=0.05)
        channel = f"workspace:acme:lost-{time.monotonic_ns()}"
        published = client.publish(channel, "x", 1)
        assert proxy.connections == 2, "the first answer was dropped, a second attempt went through"
        assert published["offset"] == 1, "the retry got the first publish's result"
        assert len(fast(make_client, server).history(channel)["events"]) == 1
    finally:
        proxy.close()


def test_5xx_and_engine_unavailable_are_retried_with_one_key(make_client: MakeClient, server: Server) -> None:
    front = FlakyFront(
        server.url,
        [(503, {"error": {"code": "engine_unavailable", "message": "engine down"}}), (502, "<html>bad gateway</html>")],
    )
    try:
        client = make_client(front.url, server.api_key, min_backoff=0.02)
        channel = f"workspace:acme:flaky-{time.monotonic_ns()}"
        assert client.publish(channel, "x", 1)["offset"] == 1
        keys = [json.loads(b)["idempotency_key"] for b in front.bodies]
        assert len(keys) == 3 and keys[0] and keys == [keys[0]] * 3
        client.publish(channel, "x", 1)
        assert json.loads(front.bodies[3])["idempotency_key"] != keys[0], "a new call, a new key"
        assert len(client.history(channel)["events"]) == 2
    finally:
        front.close()


def test_an_answer_that_cannot_be_decoded_is_a_connection_failure(make_client: MakeClient, server: Server) -> None:
    front = FlakyFront(server.url, [(200, b"not gzip at all")] * 10)
    try:
        client = make_client(front.url, server.api_key, retries=1, min_backoff=0.01)
        with pytest.raises(TidingsConnectionError) as caught:
            client.info()
        assert (caught.value.code, caught.value.attempts) == ("connection_failed", 2)
        assert len(front.bodies) == 2, "retried like a dropped connection"
    finally:
        front.close()


def test_a_2xx_that_is_not_the_api_answer_is_unexpected_response(make_client: MakeClient, server: Server) -> None:
    answers: list[tuple[int, Any]] = [(200, "<html>portal</html>"), (200, {"foo": 1}), (200, [1, 2]), (200, {"results": 3})]
    front = FlakyFront(
        server.url, answers + [(200, {"foo": 1})] * 6 + [(200, {"results": [1]}), (200, {"disconnected": 1.5})]
    )
    try:
        client = make_client(front.url, server.api_key, retries=5, min_backoff=0.01)
        calls: list[Callable[[], Any]] = [
            client.info,
            lambda: client.disconnect("u1"),
            lambda: client.publish("workspace:acme", "x", 1),
            lambda: client.broadcast(["workspace:acme"], "x", 1),
            lambda: client.publish("workspace:acme", "x", 1),
            lambda: client.entity_event("acme", {"type": "t", "id": "1"}, "x"),
            lambda: client.presence("workspace:acme"),
            lambda: client.history("workspace:acme"),
            client.info,
            lambda: client.unsubscribe("u1", "workspace:acme"),
            lambda: client.broadcast(["workspace:acme"], "x", 1),
            lambda: client.disconnect("u1"),
        ]
        for call in calls:
            with pytest.raises(TidingsApiError) as caught:
                call()
            assert (caught.value.code, caught.value.status, caught.value.attempts) == ("unexpected_response", 200, 1)
        assert len(front.bodies) == len(calls), "not retried"
    finally:
        front.close()


def test_503_for_good_carries_engine_unavailable(make_client: MakeClient, server: Server) -> None:
    front = FlakyFront(server.url, [(503, {"error": {"code": "engine_unavailable", "message": "down"}})] * 10)
    try:
        client = make_client(front.url, server.api_key, retries=2, min_backoff=0.01)
        with pytest.raises(TidingsApiError) as caught:
            client.info()
        assert (caught.value.code, caught.value.status, caught.value.attempts) == ("engine_unavailable", 503, 3)
        assert caught.value.retryable
        assert len(front.bodies) == 3
    finally:
        front.close()


def test_4xx_is_not_retried_and_surfaces_its_code(make_client: MakeClient, server: Server) -> None:
    front = FlakyFront(server.url, [])
    try:
        client = make_client(front.url, server.api_key, retries=5, min_backoff=1.0)
        wrong_key = make_client(front.url, "wrong-key-0123456789", retries=5, min_backoff=1.0)
        cases: list[tuple[Callable[[], Any], str, int]] = [
            (lambda: client.publish("nowhere:x", "x", 1), "unknown_channel", 404),
            (lambda: client.publish("workspace:acme", "", 1), "bad_request", 400),
            (lambda: client.entity_event("a:b", {"type": "t", "id": "1"}, "x"), "bad_request", 400),
            (lambda: client.disconnect("u1", code=1000), "bad_request", 400),
            (lambda: wrong_key.info(), "unauthorized", 401),
        ]
        for call, code, status in cases:
            before = len(front.bodies)
            began = time.monotonic()
            with pytest.raises(TidingsApiError) as caught:
                call()
            assert (caught.value.code, caught.value.status, caught.value.attempts) == (code, status, 1)
            assert not caught.value.retryable
            assert len(front.bodies) - before == 1, f"{code}: one request"
            assert time.monotonic() - began < 1.0, "no backoff wait"
    finally:
        front.close()


# Timeouts.


def test_a_silent_server_times_out_per_attempt(make_client: MakeClient) -> None:
    silent = SilentListener()
    try:
        client = make_client(f"http://127.0.0.1:{silent.port}", "k", timeout=0.3, min_backoff=0.01, max_backoff=0.02)
        began = time.monotonic()
        with pytest.raises(TidingsTimeoutError) as caught:
            client.publish("workspace:acme", "x", 1, retries=0)
        took = time.monotonic() - began
        assert (caught.value.code, caught.value.attempts) == ("timeout", 1)
        assert 0.28 <= took < 3, f"one attempt took {took:.2f} s"
        began = time.monotonic()
        with pytest.raises(TidingsTimeoutError) as caught:
            client.history("workspace:acme", retries=2)
        took = time.monotonic() - began
        assert caught.value.attempts == 3
        assert 0.85 <= took < 6, f"three attempts took {took:.2f} s"
    finally:
        silent.close()


def test_a_closed_port_is_a_connection_error(make_client: MakeClient) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}", "k", retries=2, min_backoff=0.01)
    with pytest.raises(TidingsConnectionError) as caught:
        client.info()
    assert (caught.value.code, caught.value.attempts) == ("connection_failed", 3)


def test_cancelling_an_async_call_stops_it_at_once() -> None:
    silent = SilentListener()

    async def scenario() -> float:
        async with AsyncTidings(f"http://127.0.0.1:{silent.port}", "k", timeout=10) as client:
            task = asyncio.create_task(client.info())
            await asyncio.sleep(0.2)
            began = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - began

    try:
        assert asyncio.run(scenario()) < 2
    finally:
        silent.close()
