"""The fault proxy's HTTP API, compatible with toxiproxy 2.12's (so its clients and the staging
toxiproxy are interchangeable): proxies list/create/get/update/delete/populate, toxics
list/create/get/update/delete, POST /reset, GET /version (`{"version": ...}`). Errors are
JSON {"error": ..., "status": ...} with that HTTP status and toxiproxy's texts. As toxiproxy
does, a request whose User-Agent starts with `Mozilla/` gets 403: a web page a browser
loads cannot drive the API."""

from __future__ import annotations

import json
import random
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chaos.proxy import Proxy, ProxyError, same_listen, split_address
from core.infra.auth import is_loopback

VERSION = "2.12.0-jobharness"


class ProxyCollection:
    def __init__(self, seed: int | None = None, *, allow_remote: bool = False) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.rng = random.Random(seed)
        # a proxy relays to a store (PostgreSQL with trust auth, say): listening beyond
        # loopback hands that store to the network, so only when the operator says so
        self.allow_remote = allow_remote

    def _check_listen(self, listen: str) -> None:
        host, _ = split_address(listen, "listen")
        if not self.allow_remote and not is_loopback(host):
            raise ProxyError(f"refusing to listen on {listen}: a proxy relays to a store; "
                             "start the fault proxy with --allow-remote to listen beyond "
                             "loopback", 400)

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise ProxyError("proxy not found", 404)
        return proxy

    @staticmethod
    def check(spec: Any, where: str = "") -> None:
        """A proxy's JSON is usable: a name, an upstream, a listen address if given."""
        if not isinstance(spec, dict):
            raise ProxyError(f"bad request body: a proxy must be a JSON object{where}", 400)
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ProxyError(f"missing required field: name{where}", 400)
        if not isinstance(spec.get("upstream"), str) or not spec["upstream"]:
            raise ProxyError(f"missing required field: upstream{where}", 400)
        split_address(spec["upstream"], "upstream")
        if spec.get("listen") is not None:
            split_address(str(spec["listen"]), "listen")

    async def create(self, spec: dict[str, Any]) -> Proxy:
        self.check(spec)
        self._check_listen(str(spec.get("listen") or "127.0.0.1:0"))
        if spec["name"] in self.proxies:
            raise ProxyError("proxy already exists", 409)
        proxy = Proxy(spec["name"], spec.get("listen") or "127.0.0.1:0", spec["upstream"],
                      rng=random.Random(self.rng.random()))
        if spec.get("enabled", True):
            await proxy.start()
        else:
            proxy.enabled = False
        self.proxies[proxy.name] = proxy
        return proxy

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def update(self, name: str, spec: dict[str, Any]) -> Proxy:
        proxy = self.get(name)
        if not isinstance(spec, dict):
            raise ProxyError("bad request body: a proxy must be a JSON object", 400)
        for key in ("listen", "upstream"):
            if key in spec:
                split_address(str(spec[key]), key)
        if "listen" in spec:
            self._check_listen(str(spec["listen"]))
        if "enabled" in spec and not isinstance(spec["enabled"], bool):
            raise ProxyError("bad request body: enabled must be true or false", 400)
        moved = any(k in spec and spec[k] != getattr(proxy, k) for k in ("listen", "upstream"))
        if moved:
            await proxy.stop()
            proxy.listen = spec.get("listen", proxy.listen)
            proxy.upstream = spec.get("upstream", proxy.upstream)
        enabled = spec.get("enabled", proxy.enabled if not moved else True)
        if enabled:
            await proxy.start()
        else:
            await proxy.stop()
        return proxy

    async def reset(self) -> None:
        for proxy in self.proxies.values():
            await proxy.reset()

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.stop()


def _finite(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


async def _json(request: Request) -> Any:
    """The body as JSON; NaN and Infinity (which Python's parser would take) refused."""
    try:
        return json.loads(await request.body() or b"{}", parse_constant=_finite)
    except ValueError as exc:
        raise ProxyError(f"bad request body: {exc}", 400) from exc


def _col(request: Request) -> ProxyCollection:
    return request.app.state.collection  # type: ignore[no-any-return]


async def list_proxies(request: Request) -> Response:
    return JSONResponse({n: p.as_dict() for n, p in _col(request).proxies.items()})


async def create_proxy(request: Request) -> Response:
    return JSONResponse((await _col(request).create(await _json(request))).as_dict(), 201)


async def populate(request: Request) -> Response:
    """As toxiproxy: the whole list is checked before anything changes; a proxy that exists
    with the same listen address (resolved: localhost:N is 127.0.0.1:N) and upstream is kept,
    toxics and connections included; one that differs is replaced."""
    specs = await _json(request)
    if not isinstance(specs, list):
        raise ProxyError("bad request body: populate takes a list of proxies", 400)
    col, out = _col(request), []
    for i, spec in enumerate(specs):
        col.check(spec, f" at proxy {i + 1}")
        col._check_listen(str(spec.get("listen") or "127.0.0.1:0"))
    for spec in specs:
        existing = col.proxies.get(spec["name"])
        if existing is not None and (existing.upstream != spec["upstream"] or not same_listen(
                existing.listen, spec.get("listen") or "127.0.0.1:0")):
            await col.delete(existing.name)
            existing = None
        proxy = existing or await col.create(spec)
        if existing is None and spec.get("enabled") is False:
            await proxy.stop()
        out.append(proxy)
    return JSONResponse({"proxies": [p.as_dict() for p in out]}, 201)


async def show_proxy(request: Request) -> Response:
    return JSONResponse(_col(request).get(request.path_params["proxy"]).as_dict())


async def update_proxy(request: Request) -> Response:
    proxy = await _col(request).update(request.path_params["proxy"], await _json(request))
    return JSONResponse(proxy.as_dict())


async def delete_proxy(request: Request) -> Response:
    await _col(request).delete(request.path_params["proxy"])
    return Response(status_code=204)


async def list_toxics(request: Request) -> Response:
    proxy = _col(request).get(request.path_params["proxy"])
    return JSONResponse([t.as_dict() for t in proxy.toxics.values()])


async def create_toxic(request: Request) -> Response:
    proxy = _col(request).get(request.path_params["proxy"])
    return JSONResponse((await proxy.add_toxic(await _json(request))).as_dict())


async def show_toxic(request: Request) -> Response:
    proxy = _col(request).get(request.path_params["proxy"])
    toxic = proxy.toxics.get(request.path_params["toxic"])
    if toxic is None:
        raise ProxyError("toxic not found", 404)
    return JSONResponse(toxic.as_dict())


async def update_toxic(request: Request) -> Response:
    proxy = _col(request).get(request.path_params["proxy"])
    toxic = await proxy.update_toxic(request.path_params["toxic"], await _json(request))
    return JSONResponse(toxic.as_dict())


async def delete_toxic(request: Request) -> Response:
    await _col(request).get(request.path_params["proxy"]).remove_toxic(
        request.path_params["toxic"])
    return Response(status_code=204)


async def reset(request: Request) -> Response:
    await _col(request).reset()
    return Response(status_code=204)


async def version(request: Request) -> Response:
    return JSONResponse({"version": VERSION})


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return JSONResponse({"error": str(exc), "status": exc.status}, exc.status)


class _NoBrowsers:
    """403 to a browser (toxiproxy's stopBrowsersMiddleware): a page cannot drive faults."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            agent = dict(scope.get("headers") or []).get(b"user-agent", b"")
            if agent.startswith(b"Mozilla/"):
                await Response("User agent not allowed\n", 403,
                               media_type="text/plain")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def proxy_app(collection: ProxyCollection) -> Starlette:
    p, t = "/proxies/{proxy}", "/proxies/{proxy}/toxics"
    app = Starlette(routes=[
        Route("/proxies", list_proxies, methods=["GET"]),
        Route("/proxies", create_proxy, methods=["POST"]),
        Route("/populate", populate, methods=["POST"]),
        Route(p, show_proxy, methods=["GET"]),
        Route(p, update_proxy, methods=["POST", "PATCH"]),
        Route(p, delete_proxy, methods=["DELETE"]),
        Route(t, list_toxics, methods=["GET"]),
        Route(t, create_toxic, methods=["POST"]),
        Route(t + "/{toxic}", show_toxic, methods=["GET"]),
        Route(t + "/{toxic}", update_toxic, methods=["POST", "PATCH"]),
        Route(t + "/{toxic}", delete_toxic, methods=["DELETE"]),
        Route("/reset", reset, methods=["POST"]),
        Route("/version", version, methods=["GET"]),
    ], exception_handlers={ProxyError: _error})
    app.add_middleware(_NoBrowsers)
    app.state.collection = collection
    return app
