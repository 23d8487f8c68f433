"""Contract tests of the fault proxy, through the toxiproxy-python client and raw HTTP. They
run unchanged against a real toxiproxy when TOXIPROXY_URL is set; otherwise against
`jobharness chaos proxy` in its own process. The upstream is the real Valkey server."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import NotFound, ProxyExists

from core.infra.embedded import free_port
from tests.conftest import private_valkey


def fault_proxy_api(seed: int) -> Iterator[str]:
    """The API URL of the proxy under test: TOXIPROXY_URL's toxiproxy when set, else
    `jobharness chaos proxy` in its own process (stopped when the generator closes)."""
    if os.environ.get("TOXIPROXY_URL"):
        yield os.environ["TOXIPROXY_URL"].rstrip("/")
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.cli", "chaos", "proxy",
                             "--port", str(port), "--seed", str(seed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # readiness: the API answers
        try:
            httpx.get(f"{url}/version", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the fault proxy did not start") from None
            time.sleep(0.05)  # polled: another process's readiness
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    yield from fault_proxy_api(seed=7)


@pytest.fixture
def client(api_url: str) -> Iterator[Toxiproxy]:
    parts = urlsplit(api_url)
    APIConsumer.host, APIConsumer.port = parts.hostname, parts.port
    tp = Toxiproxy()
    tp.destroy_all()
    yield tp
    tp.destroy_all()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey server of this module's own, without a password (the tests speak raw RESP:
    PING, QUIT), so they read the same against our proxy or a real toxiproxy."""
    with private_valkey(tmp_path_factory.mktemp("valkey")) as address:
        yield address


def connect(listen: str, timeout_s: float = 5.0) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def timed_ping(listen: str) -> float:
    with connect(listen) as s:
        t0 = time.perf_counter()
        assert ping(s) == b"+PONG\r\n"
        return time.perf_counter() - t0


def test_version_and_proxy_lifecycle(client: Toxiproxy, upstream: str, api_url: str) -> None:
    assert client.version()
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    assert proxy.listen != "127.0.0.1:0"
    assert proxy.enabled
    assert set(client.proxies()) == {"redis"}
    with pytest.raises(ProxyExists):
        client.create(upstream=upstream, name="redis")
    with connect(proxy.listen) as s:
        assert ping(s) == b"+PONG\r\n"
    raw = httpx.get(f"{api_url}/proxies/redis").json()
    assert raw["upstream"] == upstream
    assert raw["toxics"] == []
    assert client.destroy(proxy)
    with pytest.raises(NotFound):
        httpx_get_or_raise(f"{api_url}/proxies/redis")


def httpx_get_or_raise(url: str) -> None:
    r = httpx.get(url)
    if r.status_code == 404:
        raise NotFound(r.content)


def test_disable_is_a_hard_partition(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    live = connect(proxy.listen)
    assert ping(live) == b"+PONG\r\n"
    proxy.disable()
    assert live.recv(64) == b""  # the live connection is closed
    live.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy.listen)
    proxy.enable()
    with connect(proxy.listen) as s:
        assert ping(s) == b"+PONG\r\n"


# A toxic that holds data for this long is told apart from one that does not by a window
# sized to the scheduler: no loaded machine stalls a loopback round trip for 10 s, and no
# assertion below has to wait the 60 s out.
HOLD_MS = 60_000
WINDOW_S = 10.0


def held(listen: str, wait_s: float = 1.0) -> bool:
    """Whether a PING through `listen` gets no answer within `wait_s`."""
    with connect(listen, timeout_s=wait_s) as s:
        s.sendall(b"PING\r\n")
        try:
            return s.recv(64) == b""
        except TimeoutError:
            return True


def answered_within(listen: str, window_s: float = WINDOW_S) -> bool:
    with connect(listen, timeout_s=window_s) as s:
        return ping(s) == b"+PONG\r\n"


def ping_all(listen: str, n: int, wait_s: float) -> list[float | None]:
    """PING over `n` connections at once; each one's answer time (s), None if none came."""
    conns = [connect(listen, timeout_s=wait_s) for _ in range(n)]
    t0 = time.perf_counter()
    for c in conns:
        c.sendall(b"PING\r\n")
    got: dict[socket.socket, float] = {}
    deadline = t0 + wait_s
    while len(got) < n and (left := deadline - time.perf_counter()) > 0:
        ready, _, _ = select.select([c for c in conns if c not in got], [], [], left)
        for c in ready:
            if c.recv(64):
                got[c] = time.perf_counter() - t0
    for c in conns:
        c.close()
    return [got.get(c) for c in conns]


def test_latency_is_applied_and_removed(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="latency", stream="downstream", attributes={"latency": 200})
    # a lower bound (a loaded machine only adds), less the event loop's timer resolution: the
    # proxy's 200 ms sleep may end a millisecond early (seen: 199.8 ms under load)
    assert timed_ping(proxy.listen) >= 0.19
    assert set(proxy.toxics()) == {"latency_downstream"}
    proxy.destroy_toxic("latency_downstream")
    proxy.add_toxic(type="latency", name="hold", attributes={"latency": HOLD_MS})
    assert held(proxy.listen)
    proxy.destroy_toxic("hold")
    assert answered_within(proxy.listen)  # removed: no 60 s hold any more


def test_toxicity_decides_per_connection(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="latency", name="never", toxicity=0.0,
                    attributes={"latency": HOLD_MS})
    assert answered_within(proxy.listen)
    proxy.destroy_toxic("never")
    proxy.add_toxic(type="latency", name="half", toxicity=0.5,
                    attributes={"latency": HOLD_MS})
    times = ping_all(proxy.listen, 24, wait_s=3.0)
    held_n = sum(t is None for t in times)
    assert 0 < held_n < 24, times  # some connections got the toxic, others not (p=1e-7)


def test_latency_jitter_spreads_the_delays(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="latency", attributes={"latency": 1000, "jitter": 900})
    times = ping_all(proxy.listen, 12, wait_s=WINDOW_S)
    assert all(t is not None and t >= 0.09 for t in times), times  # never below 1000 - 900
    # without jitter every answer takes >= 1 s; with it about half come in under 1 s
    assert min(t for t in times if t is not None) < 0.9, times


def test_timeout_closes_after_the_delay(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="timeout", stream="downstream", attributes={"timeout": 300})
    with connect(proxy.listen) as s:
        t0 = time.perf_counter()
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b""
        assert time.perf_counter() - t0 >= 0.25


def test_reset_peer(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="reset_peer", stream="upstream", attributes={"timeout": 0})
    def exchange() -> bytes:
        with connect(proxy.listen) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64)

    # the reset may land before the request is even written, or while reading the reply
    with pytest.raises(ConnectionResetError):
        exchange()


def test_limit_data(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="limit_data", stream="downstream", attributes={"bytes": 3})
    with connect(proxy.listen) as s:
        s.sendall(b"PING\r\n")
        got = b""
        while chunk := s.recv(64):
            got += chunk
        assert got == b"+PO"


def test_bandwidth_keeps_the_bytes(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    key, value = f"bw-{uuid.uuid4().hex}", b"x" * 5000
    with connect(proxy.listen) as s:
        s.sendall(b"SET %s %s\r\n" % (key.encode(), value))
        assert s.recv(64) == b"+OK\r\n"
    proxy.add_toxic(type="bandwidth", stream="downstream", attributes={"rate": 10})
    with connect(proxy.listen) as s:
        t0 = time.perf_counter()
        s.sendall(b"GET %s\r\n" % key.encode())
        want = b"$5000\r\n" + value + b"\r\n"
        got = b""
        while len(got) < len(want):
            got += s.recv(65536)
        assert got == want
        assert time.perf_counter() - t0 >= 0.4  # 5 KB at 10 KB/s
        s.sendall(b"DEL %s\r\n" % key.encode())


def test_slicer_cuts_the_stream_into_delayed_slices(client: Toxiproxy, upstream: str) -> None:
    """The slicer alone (no bandwidth toxic to explain a delay): 2,000 bytes in slices of 100
    to 200 bytes, 50 ms apart, arrive whole but no sooner than the slices' delays allow, and
    the first of them well before the rest."""
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    key, value = f"sl-{uuid.uuid4().hex}", b"y" * 2000
    with connect(proxy.listen) as s:
        s.sendall(b"SET %s %s\r\n" % (key.encode(), value))
        assert s.recv(64) == b"+OK\r\n"
    proxy.add_toxic(type="slicer", stream="downstream",
                    attributes={"average_size": 150, "size_variation": 50, "delay": 50_000})
    want = b"$2000\r\n" + value + b"\r\n"
    with connect(proxy.listen, timeout_s=WINDOW_S) as s:
        t0 = time.perf_counter()
        s.sendall(b"GET %s\r\n" % key.encode())
        first = s.recv(65536)
        t_first = time.perf_counter() - t0
        got = first
        while len(got) < len(want):
            got += s.recv(65536)
        elapsed = time.perf_counter() - t0
        s.sendall(b"DEL %s\r\n" % key.encode())
    assert got == want
    assert len(first) <= 200  # one slice, not the whole reply
    # at least 2,007 / 200 = 11 slices (from one or two upstream chunks), 50 ms apart: >= 0.4 s
    # (a lower bound, safe on a loaded machine), and the first slice came before most of them
    assert elapsed >= 0.4
    assert t_first < elapsed - 0.2


def test_slow_close(client: Toxiproxy, upstream: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="slow_close", stream="downstream", attributes={"delay": 300})
    with connect(proxy.listen) as s:
        t0 = time.perf_counter()
        s.sendall(b"QUIT\r\n")
        got = b""
        while chunk := s.recv(64):
            got += chunk
        assert got == b"+OK\r\n"
        assert time.perf_counter() - t0 >= 0.25


def test_reset_heals_everything(client: Toxiproxy, upstream: str, api_url: str) -> None:
    proxy = client.create(upstream=upstream, name="redis", listen="127.0.0.1:0")
    proxy.add_toxic(type="latency", attributes={"latency": HOLD_MS})
    proxy.disable()
    assert client.reset()
    raw = httpx.get(f"{api_url}/proxies/redis").json()
    assert raw["enabled"] is True
    assert raw["toxics"] == []
    assert answered_within(proxy.listen)  # the 60 s latency is gone


def test_update_populate_and_errors(client: Toxiproxy, upstream: str, api_url: str) -> None:
    r = httpx.post(f"{api_url}/populate", json=[
        {"name": "a", "listen": "127.0.0.1:0", "upstream": upstream},
        {"name": "b", "listen": "127.0.0.1:0", "upstream": upstream}])
    assert r.status_code == 201
    assert [p["name"] for p in r.json()["proxies"]] == ["a", "b"]
    r = httpx.post(f"{api_url}/proxies/a/toxics",
                   json={"type": "latency", "attributes": {"latency": 10}})
    assert r.status_code == 200
    assert r.json()["attributes"]["latency"] == 10
    r = httpx.post(f"{api_url}/proxies/a/toxics/latency_downstream",
                   json={"attributes": {"latency": 20}})
    assert r.json()["attributes"] == {"latency": 20, "jitter": 0}
    assert httpx.post(f"{api_url}/proxies/a/toxics",
                      json={"type": "earthquake"}).status_code == 400
    assert httpx.post(f"{api_url}/proxies/a/toxics",
                      json={"type": "latency"}).status_code == 409
    assert httpx.get(f"{api_url}/proxies/nope").status_code == 404
    assert httpx.delete(f"{api_url}/proxies/a/toxics/nope").status_code == 404
    assert httpx.post(f"{api_url}/proxies", content=b"{not json").status_code == 400
    assert httpx.post(f"{api_url}/proxies/b", json={"enabled": False}).json()["enabled"] is False


async def test_a_fault_by_hand_finds_the_client_groups_and_hits_only_those(
        client: Toxiproxy, upstream: str, api_url: str) -> None:
    """`chaos fault partition --clients workers-a` during a run: the groups are read from
    the proxy API's names, and only that group's proxy is cut."""
    from chaos.actions import Endpoints, discover_proxies, heal, partition

    for group in ("api", "workers-a"):
        for store in ("redis", "postgres"):
            client.create(upstream=upstream, name=f"{store}-{group}", listen="127.0.0.1:0")
    ep = Endpoints(proxy_api=api_url)
    await discover_proxies(ep)
    assert ep.proxies == {g: {"redis": f"redis-{g}", "postgres": f"postgres-{g}"}
                          for g in ("api", "workers-a")}
    done = await partition(ep, "redis", "hard", clients=["workers-a"])
    assert done["proxies"] == ["redis-workers-a"]
    enabled = {name: p.enabled for name, p in client.proxies().items()}
    assert enabled == {"redis-workers-a": False, "postgres-workers-a": True,
                       "redis-api": True, "postgres-api": True}
    await heal(ep, "redis", ["workers-a"])
    assert all(p.enabled for p in client.proxies().values())
