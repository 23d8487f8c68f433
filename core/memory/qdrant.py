"""QdrantStateMemory: state memory in Qdrant, local mode (an on-disk folder, one process at a
time) or a Qdrant server by URL. One collection per namespace, `{prefix}-{namespace}`, points
without vectors whose payload holds the entry. Only the memory owner imports this module:
`qdrant_client` costs ~0.8 s and ~90 MB to import.

Compare-and-set is read-then-write under this object's lock: atomic because one owner
process writes (the owner is the serialisation point), not because Qdrant has transactions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from core.errors import InvalidInput
from core.memory.port import (
    NAMESPACES,
    Clock,
    Entry,
    MemoryUnavailable,
    VersionClock,
    VersionConflict,
    WallClock,
    check_key,
    check_namespace,
    check_put,
    group_of,
)

SCROLL_PAGE = 1000


def point_id(namespace: str, key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"jobharness/{namespace}/{key}"))


def _entry(namespace: str, payload: dict[str, Any]) -> Entry:
    return Entry(namespace=namespace, key=payload["key"], value=payload["value"],
                 version=int(payload["version"]), written_at=float(payload["written_at"]),
                 expires_at=float(payload["expires_at"]), group=payload.get("group", ""))


class QdrantStateMemory:
    def __init__(self, *, path: Path | None = None, url: str | None = None,
                 prefix: str = "gap006", clock: Clock | None = None,
                 timeout_s: float = 2.0, api_key: str | None = None) -> None:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (local mode) or url (server)")
        self.path, self.url, self.prefix = path, url, prefix
        self._api_key = api_key  # a Qdrant server's API key (never in a repr or a log)
        self.clock = clock or WallClock()
        self.timeout_s = timeout_s
        self._client: AsyncQdrantClient | None = None
        self._lock = asyncio.Lock()
        self._versions = VersionClock()

    @property
    def where(self) -> str:
        return self.url or f"local:{self.path}"

    def collection(self, namespace: str) -> str:
        return f"{self.prefix}-{check_namespace(namespace)}"

    async def open(self) -> QdrantStateMemory:
        try:
            if self.path is not None:
                self.path.mkdir(parents=True, exist_ok=True)
                self._client = AsyncQdrantClient(path=str(self.path))
            else:
                self._client = AsyncQdrantClient(url=self.url, timeout=int(max(1, self.timeout_s)),
                                                 check_compatibility=False,
                                                 api_key=self._api_key)
            for ns in NAMESPACES:
                await self._ensure(self.collection(ns))
        except RuntimeError as exc:  # local mode: folder locked by another process
            raise MemoryUnavailable(f"Qdrant at {self.where}: {exc}") from exc
        except Exception as exc:
            raise MemoryUnavailable(f"Qdrant at {self.where} unreachable: {exc}") from exc
        return self

    async def _ensure(self, name: str) -> None:
        client = self._c
        if await client.collection_exists(name):
            return
        await client.create_collection(name, vectors_config={})
        if self.url is not None:  # payload indexes matter on a server; local mode scans
            for fld, schema in (("key", models.PayloadSchemaType.KEYWORD),
                                ("group", models.PayloadSchemaType.KEYWORD),
                                ("expires_at", models.PayloadSchemaType.FLOAT)):
                await client.create_payload_index(name, fld, field_schema=schema)

    @property
    def _c(self) -> AsyncQdrantClient:
        if self._client is None:
            raise MemoryUnavailable("state memory not opened")
        return self._client

    async def _call(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout=self.timeout_s * 5)
        except (MemoryUnavailable, InvalidInput, VersionConflict):
            raise
        except Exception as exc:  # any client failure is an unavailable backend
            raise MemoryUnavailable(f"Qdrant at {self.where}: {type(exc).__name__}: {exc}"
                                    ) from exc

    def _live_filter(self, group: str | None = None) -> models.Filter:
        must: list[Any] = [models.FieldCondition(
            key="expires_at", range=models.Range(gt=self.clock.now()))]
        if group is not None:
            must.append(models.FieldCondition(key="group", match=models.MatchValue(value=group)))
        return models.Filter(must=must)

    async def _current(self, namespace: str, keys: Sequence[str]) -> dict[str, Entry]:
        records = await self._call(self._c.retrieve(
            self.collection(namespace), ids=[point_id(namespace, k) for k in keys],
            with_payload=True, with_vectors=False))
        now = self.clock.now()
        out = {}
        for rec in records:
            entry = _entry(namespace, rec.payload or {})
            if entry.expires_at > now:
                out[entry.key] = entry
        return out

    def _point(self, namespace: str, key: str, value: dict[str, Any], ttl_s: float,
               version: int) -> models.PointStruct:
        now = self.clock.now()
        return models.PointStruct(id=point_id(namespace, key), vector={}, payload={
            "key": key, "group": group_of(key), "value": value, "version": version,
            "written_at": now, "expires_at": now + ttl_s})

    async def put(self, namespace: str, key: str, value: dict[str, Any], *, ttl_s: float,
                  expected_version: int | None = None) -> Entry:
        check_put(namespace, key, ttl_s)
        async with self._lock:
            current = (await self._current(namespace, [key])).get(key)
            found = current.version if current else 0
            if expected_version is not None and found != expected_version:
                raise VersionConflict(namespace, key, expected_version, current)
            point = self._point(namespace, key, value, ttl_s, self._versions.next())
            await self._call(self._c.upsert(self.collection(namespace), points=[point]))
        return _entry(namespace, point.payload or {})

    async def put_many(self, items: Sequence[tuple[str, str, dict[str, Any], float]]) -> int:
        """Blind writes in one upsert per namespace (the owner's batches); no read first."""
        by_ns: dict[str, list[models.PointStruct]] = {}
        for ns, key, value, ttl in items:
            by_ns.setdefault(check_namespace(ns), []).append(
                self._point(ns, key, value, ttl, self._versions.next()))
        async with self._lock:
            for ns, points in by_ns.items():
                await self._call(self._c.upsert(self.collection(ns), points=points))
        return len(items)

    async def get(self, namespace: str, key: str) -> Entry | None:
        check_key(key)
        return (await self._current(check_namespace(namespace), [key])).get(key)

    async def delete(self, namespace: str, key: str) -> bool:
        existed = await self.get(namespace, key) is not None
        await self.delete_many([(namespace, key)])
        return existed

    async def delete_many(self, items: Sequence[tuple[str, str]]) -> int:
        by_ns: dict[str, list[int | str | uuid.UUID]] = {}
        for ns, key in items:
            by_ns.setdefault(check_namespace(ns), []).append(point_id(ns, key))
        async with self._lock:
            for ns, ids in by_ns.items():
                await self._call(self._c.delete(self.collection(ns),
                                                points_selector=models.PointIdsList(points=ids)))
        return len(items)

    async def list(self, namespace: str, *, group: str | None = None, limit: int = 100
                   ) -> list[Entry]:
        if not 1 <= limit <= 100_000:
            raise InvalidInput("limit", "must be between 1 and 100000")
        out: list[Entry] = []
        offset = None
        while len(out) < limit:
            records, offset = await self._call(self._c.scroll(
                self.collection(namespace), scroll_filter=self._live_filter(group),
                limit=min(SCROLL_PAGE, limit - len(out)), offset=offset, with_payload=True,
                with_vectors=False))
            out += [_entry(namespace, r.payload or {}) for r in records]
            if offset is None:
                break
        return sorted(out, key=lambda e: e.key)

    async def purge_expired(self) -> int:
        total = 0
        expired = models.Filter(must=[models.FieldCondition(
            key="expires_at", range=models.Range(lte=self.clock.now()))])
        async with self._lock:
            for ns in NAMESPACES:
                name = self.collection(ns)
                n = (await self._call(self._c.count(name, count_filter=expired, exact=True))).count
                if n:
                    await self._call(self._c.delete(
                        name, points_selector=models.FilterSelector(filter=expired)))
                total += n
        return total

    async def count(self, namespace: str) -> int:
        res = await self._call(self._c.count(self.collection(namespace),
                                             count_filter=self._live_filter(), exact=True))
        return int(res.count)

    async def wipe(self) -> None:
        async with self._lock:
            for ns in NAMESPACES:
                await self._call(self._c.delete_collection(self.collection(ns)))
                await self._ensure(self.collection(ns))

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:  # closing a client whose server is gone must not raise
                return
