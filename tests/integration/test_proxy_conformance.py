"""Conformance with toxiproxy 2.12: the behaviours its README documents and its own tests
(`toxics/*_test.go`, `api_test.go`) check, over real sockets and raw HTTP. It runs against
`jobharness chaos proxy` by default and against any toxiproxy when TOXIPROXY_URL is set, so
the two can be shown to agree:

    TOXIPROXY_URL=http://127.0.0.1:8474 pytest tests/integration/test_proxy_conformance.py

The upstream is an echo server of the test's own, which also records what reached it.
Timings have generous margins (a shared 2-core machine); each asserts an order of magnitude
the wrong behaviour would miss (a delay that accumulates, data that arrives late instead of
never)."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.infra.embedded import free_port
from tests.integration.test_fault_proxy import fault_proxy_api

pytestmark = pytest.mark.timeout(60)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with server.lock:
                server.received += data
            try:
                sock.sendall(data)
            except OSError:
                return


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.received = b""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    yield from fault_proxy_api(seed=11)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def http(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, headers={"User-Agent": "conformance"}) as c:
        c.post("/reset")
        for name in c.get("/proxies").json():
            c.delete(f"/proxies/{name}")
        yield c


@pytest.fixture
def proxy(http: httpx.Client, echo: EchoServer) -> dict[str, Any]:
    name = f"p{uuid.uuid4().hex[:6]}"
    r = http.post("/proxies", json={"name": name, "listen": f"127.0.0.1:{free_port()}",
                                    "upstream": echo.address})
    assert r.status_code == 201, r.text
    return dict(r.json())


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    _OPEN.append(sock)
    return sock


def toxic(http: httpx.Client, proxy: dict[str, Any], **spec: Any) -> dict[str, Any]:
    r = http.post(f"/proxies/{proxy['name']}/toxics", json=spec)
    assert r.status_code == 200, r.text
    return dict(r.json())


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        part = sock.recv(n - len(out))
        if not part:
            break
        out += part
    return out


def closed(sock: socket.socket, within_s: float) -> str | None:
    """How the proxy ended the connection within `within_s` (eof, reset), or None."""
    sock.settimeout(within_s)
    try:
        while True:
            if not sock.recv(65536):
                return "eof"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return None


# -- the API ---------------------------------------------------------------------------------
def test_version_is_json(http: httpx.Client) -> None:
    r = http.get("/version")
    assert r.status_code == 200
    assert isinstance(r.json()["version"], str)


def test_a_browser_is_refused(api: str) -> None:
    r = httpx.get(f"{api}/proxies", headers={"User-Agent": "Mozilla/5.0 (X11; Linux)"})
    assert r.status_code == 403


def test_proxy_shapes_and_errors(http: httpx.Client, proxy: dict[str, Any],
                                 echo: EchoServer) -> None:
    assert set(proxy) >= {"name", "listen", "upstream", "enabled", "toxics"}
    assert proxy["enabled"] is True
    assert proxy["toxics"] == []
    dup = http.post("/proxies", json={"name": proxy["name"], "upstream": echo.address})
    assert (dup.status_code, dup.json()) == (409, {"error": "proxy already exists",
                                                   "status": 409})
    missing = http.get("/proxies/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "proxy not found",
                                                           "status": 404})
    assert http.post("/proxies", json={"name": "x"}).status_code == 400  # no upstream
    assert http.delete(f"/proxies/{proxy['name']}").status_code == 204


def test_toxic_fields_as_toxiproxy_reads_them(http: httpx.Client,
                                             proxy: dict[str, Any]) -> None:
    base = f"/proxies/{proxy['name']}/toxics"
    t = toxic(http, proxy, type="latency", attributes={"latency": 5})
    assert t == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                 "toxicity": 1.0, "attributes": {"latency": 5, "jitter": 0}}
    up = toxic(http, proxy, type="latency", stream="UpStream", name="up")
    assert up["stream"].lower() == "upstream"
    assert toxic(http, proxy, type="noop", name="n")["type"] == "noop"
    extra = toxic(http, proxy, type="timeout", name="extra",
                  attributes={"timeout": 10, "no_such_key": 1})
    assert extra["attributes"] == {"timeout": 10}  # unknown keys ignored
    empty = http.post(base, json={"type": "latency", "stream": "", "name": "e"})
    assert empty.status_code == 400
    assert "stream was invalid" in empty.json()["error"]
    assert http.post(base, json={"type": "nope"}).status_code == 400
    again = http.post(base, json={"type": "latency", "attributes": {"latency": 5}})
    assert (again.status_code, again.json()) == (409, {"error": "toxic already exists",
                                                       "status": 409})
    # an update changes attributes and toxicity only; a different type is ignored
    upd = http.post(f"{base}/latency_downstream",
                    json={"type": "timeout", "toxicity": 0.5, "attributes": {"latency": 9}})
    assert upd.status_code == 200, upd.text
    assert (upd.json()["type"], upd.json()["toxicity"], upd.json()["attributes"]) == (
        "latency", 0.5, {"latency": 9, "jitter": 0})
    gone = http.get(f"{base}/nope")
    assert (gone.status_code, gone.json()) == (404, {"error": "toxic not found",
                                                     "status": 404})
    assert http.delete(f"{base}/up").status_code == 204
    assert {x["name"] for x in http.get(base).json()} == {"latency_downstream", "n", "extra"}


def test_populate_keeps_an_identical_proxy_and_checks_the_whole_list_first(
        http: httpx.Client, proxy: dict[str, Any], echo: EchoServer) -> None:
    port = proxy["listen"].rsplit(":", 1)[1]
    toxic(http, proxy, type="latency", attributes={"latency": 1})
    with connect(proxy["listen"]) as live:
        same = [{"name": proxy["name"], "listen": f"localhost:{port}",
                 "upstream": echo.address}]
        r = http.post("/populate", json=same)
        assert r.status_code == 201, r.text
        (kept,) = r.json()["proxies"]
        assert [t["name"] for t in kept["toxics"]] == ["latency_downstream"]  # kept whole
        live.sendall(b"still here")
        assert recv_exactly(live, 10) == b"still here"  # its connection too
    bad = [{"name": "fresh", "upstream": echo.address}, {"name": "broken"}]
    r = http.post("/populate", json=bad)
    assert r.status_code == 400
    assert "fresh" not in http.get("/proxies").json()  # nothing created


def test_bad_bodies_are_refused_and_the_list_stays_readable(
        http: httpx.Client, proxy: dict[str, Any]) -> None:
    """Every bad body is a 400 (NaN is not JSON) and never reaches the stored state."""
    base = f"/proxies/{proxy['name']}"
    nan = b'{"type": "latency", "attributes": {"latency": NaN}}'
    assert http.post(f"{base}/toxics", content=nan).status_code == 400
    for body in (b"[1, 2]", b'"text"', b"{not json"):
        assert http.post(base, content=body).status_code == 400
        assert http.post(f"{base}/toxics", content=body).status_code == 400
    assert http.get("/proxies").status_code == 200
    assert http.get(f"{base}/toxics").json() == []


def test_reset_removes_toxics_and_enables(http: httpx.Client, proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="latency", attributes={"latency": 1000})
    http.post(f"/proxies/{proxy['name']}", json={"enabled": False})
    assert http.post("/reset").status_code == 204
    after = http.get(f"/proxies/{proxy['name']}").json()
    assert after["enabled"] is True
    assert after["toxics"] == []


# -- connections -----------------------------------------------------------------------------
def test_disable_closes_live_connections_and_refuses_new_ones(
        http: httpx.Client, proxy: dict[str, Any]) -> None:
    live = connect(proxy["listen"])
    http.post(f"/proxies/{proxy['name']}", json={"enabled": False})
    assert closed(live, 3) in ("eof", "reset")
    with pytest.raises(ConnectionRefusedError):
        connect(proxy["listen"])
    http.post(f"/proxies/{proxy['name']}", json={"enabled": True})
    with connect(proxy["listen"]) as s:
        s.sendall(b"back")
        assert recv_exactly(s, 4) == b"back"


def test_delete_closes_live_connections(http: httpx.Client, proxy: dict[str, Any]) -> None:
    live = connect(proxy["listen"])
    live.sendall(b"hi")
    assert recv_exactly(live, 2) == b"hi"
    http.delete(f"/proxies/{proxy['name']}")
    assert closed(live, 3) in ("eof", "reset")


# -- toxics over real sockets ----------------------------------------------------------------
@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_latency_delays_each_chunk_from_its_own_arrival(
        http: httpx.Client, proxy: dict[str, Any], stream: str) -> None:
    toxic(http, proxy, type="latency", stream=stream, attributes={"latency": 300})
    with connect(proxy["listen"]) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = []
        for i in range(5):  # pipelined: 60 ms apart, each answered 300 ms after it left
            sent.append(time.monotonic())
            s.sendall(f"m{i}|".encode())
            time.sleep(0.06)  # the schedule of the sender, not a synchronisation
        got, delays = b"", []
        while len(got) < 15:
            got += s.recv(64)
            delays.append(time.monotonic() - sent[got.count(b"|") - 1])
        assert got == b"m0|m1|m2|m3|m4|"
        # accumulating delays would reach 5 x 300 ms for the last one
        assert max(delays) < 0.6, delays
        assert min(delays) >= 0.28, delays


def test_latency_does_not_cap_throughput(http: httpx.Client, proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="latency", attributes={"latency": 100})
    payload = os.urandom(512 * 1024)
    with connect(proxy["listen"]) as s:
        t0 = time.monotonic()
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        assert recv_exactly(s, len(payload)) == payload
        took = time.monotonic() - t0
    assert 0.09 <= took < 0.5, took  # one delay, not one per chunk


def test_bandwidth_paces_and_keeps_every_byte(http: httpx.Client,
                                              proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="bandwidth", attributes={"rate": 100})  # 100 KB/s
    payload = os.urandom(50_000)
    with connect(proxy["listen"]) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
        took = time.monotonic() - t0
    assert 0.35 <= took < 1.5, took  # 50 KB at 100 KB/s: ~0.5 s


def test_black_hole_drops_data_and_closes_on_removal(
        http: httpx.Client, proxy: dict[str, Any], echo: EchoServer) -> None:
    toxic(http, proxy, type="timeout", name="hole", stream="upstream",
          attributes={"timeout": 0})
    s = connect(proxy["listen"])
    s.sendall(b"into the hole")
    assert closed(s, 0.5) is None  # open and silent
    http.delete(f"/proxies/{proxy['name']}/toxics/hole")
    assert closed(s, 3) in ("eof", "reset")  # removal closes the held connection
    assert b"into the hole" not in echo.received  # dropped: never delivered late
    with connect(proxy["listen"]) as fresh:
        fresh.sendall(b"after")
        assert recv_exactly(fresh, 5) == b"after"


def test_timeout_closes_an_idle_connection_and_restarts_on_data(
        http: httpx.Client, proxy: dict[str, Any], echo: EchoServer) -> None:
    toxic(http, proxy, type="timeout", stream="upstream", attributes={"timeout": 400})
    idle = connect(proxy["listen"])
    t0 = time.monotonic()
    assert closed(idle, 3) in ("eof", "reset")
    assert 0.3 <= time.monotonic() - t0 < 1.5
    busy = connect(proxy["listen"])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:  # a chunk every 150 ms keeps the timer from firing
        busy.sendall(b"tick")
        time.sleep(0.15)  # the sender's schedule
    assert closed(busy, 0.05) is None  # still open after 2.5 timeouts
    assert closed(busy, 3) in ("eof", "reset")  # and closed once the data stops
    assert b"tick" not in echo.received


def test_reset_peer_waits_for_data_and_drops_it(http: httpx.Client, proxy: dict[str, Any],
                                                echo: EchoServer) -> None:
    toxic(http, proxy, type="reset_peer", stream="upstream", attributes={"timeout": 0})
    s = connect(proxy["listen"])
    assert closed(s, 0.5) is None  # idle: nothing to reset on
    s.sendall(b"boom")
    assert closed(s, 3) == "reset"
    assert b"boom" not in echo.received


def test_reset_peer_with_a_timeout_resets_after_it(http: httpx.Client, proxy: dict[str, Any],
                                                   echo: EchoServer) -> None:
    toxic(http, proxy, type="reset_peer", stream="upstream", attributes={"timeout": 300})
    s = connect(proxy["listen"])
    t0 = time.monotonic()
    s.sendall(b"first")
    assert closed(s, 3) == "reset"
    assert 0.25 <= time.monotonic() - t0 < 1.5
    assert b"first" not in echo.received


def test_limit_data_passes_exactly_the_limit_then_closes(http: httpx.Client,
                                                         proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="limit_data", attributes={"bytes": 7})
    with connect(proxy["listen"]) as s:
        s.sendall(b"0123456789")
        got = recv_exactly(s, 10)
        assert got == b"0123456"
        assert closed(s, 3) in ("eof", "reset")


def test_slicer_keeps_the_bytes_in_slices(http: httpx.Client, proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="slicer", attributes={"average_size": 10, "size_variation": 0,
                                                   "delay": 20_000})  # 20 ms apart
    payload = bytes(range(100))
    with connect(proxy["listen"]) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        s.sendall(payload)
        parts = []
        while sum(map(len, parts)) < len(payload):
            parts.append(s.recv(1000))
        took = time.monotonic() - t0
    assert b"".join(parts) == payload
    assert len(parts) >= 4  # delivered in pieces, not at once
    assert took >= 0.1  # ~10 slices 20 ms apart


def test_slow_close_delays_the_close(http: httpx.Client, proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="slow_close", stream="upstream", attributes={"delay": 500})
    s = connect(proxy["listen"])
    s.sendall(b"bye")
    assert recv_exactly(s, 3) == b"bye"
    t0 = time.monotonic()
    s.shutdown(socket.SHUT_WR)  # our side closes; the proxy waits before closing the server
    assert closed(s, 3) == "eof"
    assert time.monotonic() - t0 >= 0.4


def test_toxicity_zero_never_applies(http: httpx.Client, proxy: dict[str, Any]) -> None:
    toxic(http, proxy, type="timeout", toxicity=0.0, attributes={"timeout": 0})
    with connect(proxy["listen"]) as s:
        s.sendall(b"free")
        assert recv_exactly(s, 4) == b"free"


def test_a_toxic_added_to_a_live_connection_applies_and_its_removal_delivers(
        http: httpx.Client, proxy: dict[str, Any]) -> None:
    with connect(proxy["listen"]) as s:
        s.sendall(b"a")
        assert recv_exactly(s, 1) == b"a"
        toxic(http, proxy, type="latency", name="slow", attributes={"latency": 1500})
        t0 = time.monotonic()
        s.sendall(b"b")
        time.sleep(0.2)  # the chunk is inside the latency toxic now
        http.delete(f"/proxies/{proxy['name']}/toxics/slow")
        assert recv_exactly(s, 1) == b"b"  # handed on at removal, not dropped
        assert time.monotonic() - t0 < 1.2
