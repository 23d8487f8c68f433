"""Settings: frozen, validated dataclasses built by `load_settings` from
flags > environment (`JOBHARNESS_*`) > target YAML file > defaults.

Nothing else in the project reads `os.environ`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.jobs.backoff import BackoffPolicy

HOUR = 3600.0


@dataclass(frozen=True, kw_only=True)
class MemoryTtls:
    """Default TTL per kind of entry (the seed's: 24 h, 24 h, 1 h, 90 days)."""

    job_state_s: float = 24 * HOUR
    job_result_s: float = 24 * HOUR
    worker_state_s: float = 1 * HOUR
    failure_s: float = 90 * 24 * HOUR


BUILTIN_JOB_TYPES = frozenset({"noop", "sleep", "cpu", "flaky", "leak", "hang"})
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a process of the job system needs to know."""

    pg_dsn: str | None = None  # None: use (and start if needed) the embedded server
    redis_url: str | None = None
    schema: str = "gap006"
    prefix: str = "gap006"
    data_dir: Path = Path(".jobharness")
    lease_s: float = 30.0
    heartbeat_interval_s: float = 30.0
    heartbeat_ttl_s: float = 60.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    default_max_retries: int = 5
    max_payload_bytes: int = 256 * 1024
    job_types: frozenset[str] = BUILTIN_JOB_TYPES
    dlq_retention_days: float = 30.0
    redis_timeout_s: float = 1.0
    redis_retry_after_s: float = 2.0
    pg_max_connections: int = 400
    memory: bool = True  # emit write-behind state events for the memory owner
    api_url: str | None = None  # a running job API (staging targets); None: start one
    reconcile: bool = True  # the supervisor runs the reconciler (off only to drill a broken core)
    pg_fallback: bool = True  # acquire through PostgreSQL while Redis is down (idem)
    toxiproxy_url: str | None = None  # staging drills: the toxiproxy API in front of the stores
    control_url: str | None = None  # staging drills: the supervisor's control surface
    qdrant_url: str | None = None  # None: local mode in data_dir/qdrant
    memory_ttls: MemoryTtls = field(default_factory=MemoryTtls)

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    def __post_init__(self) -> None:
        if not _SCHEMA_RE.match(self.schema):
            raise ConfigError(f"invalid schema name {self.schema!r}: use [a-z_][a-z0-9_]*")
        if not re.match(r"^[A-Za-z0-9_.\-]{1,64}$", self.prefix):
            raise ConfigError(f"invalid Redis key prefix {self.prefix!r}")
        for name in ("lease_s", "heartbeat_interval_s", "heartbeat_ttl_s", "redis_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError("heartbeat_ttl_s must be greater than heartbeat_interval_s")
        if self.max_payload_bytes <= 0:
            raise ConfigError("max_payload_bytes must be > 0")
        if not 0 <= self.default_max_retries <= 100:
            raise ConfigError("default_max_retries must be between 0 and 100")

    @property
    def embedded(self) -> bool:
        return self.pg_dsn is None or self.redis_url is None


# name -> (environment variable, parser)
_ENV: dict[str, tuple[str, Any]] = {
    "pg_dsn": ("JOBHARNESS_PG_DSN", str),
    "redis_url": ("JOBHARNESS_REDIS_URL", str),
    "schema": ("JOBHARNESS_SCHEMA", str),
    "prefix": ("JOBHARNESS_PREFIX", str),
    "data_dir": ("JOBHARNESS_DATA_DIR", Path),
    "lease_s": ("JOBHARNESS_LEASE_S", float),
    "heartbeat_interval_s": ("JOBHARNESS_HEARTBEAT_INTERVAL_S", float),
    "heartbeat_ttl_s": ("JOBHARNESS_HEARTBEAT_TTL_S", float),
    "default_max_retries": ("JOBHARNESS_MAX_RETRIES", int),
    "max_payload_bytes": ("JOBHARNESS_MAX_PAYLOAD_BYTES", int),
    "job_types": ("JOBHARNESS_JOB_TYPES", lambda s: BUILTIN_JOB_TYPES | _split(s)),
    "dlq_retention_days": ("JOBHARNESS_DLQ_RETENTION_DAYS", float),
    "redis_timeout_s": ("JOBHARNESS_REDIS_TIMEOUT_S", float),
    "memory": ("JOBHARNESS_MEMORY", lambda s: str(s).lower() not in ("0", "false", "no", "off")),
    "qdrant_url": ("JOBHARNESS_QDRANT_URL", str),
    "api_url": ("JOBHARNESS_API_URL", str),
    "toxiproxy_url": ("JOBHARNESS_TOXIPROXY_URL", str),
    "control_url": ("JOBHARNESS_CONTROL_URL", str),
    "reconcile": ("JOBHARNESS_RECONCILE", lambda s: str(s).lower() not in ("0", "false", "no",
                                                                            "off")),
    "pg_fallback": ("JOBHARNESS_PG_FALLBACK", lambda s: str(s).lower() not in ("0", "false",
                                                                               "no", "off")),
}
_TTL_ENV = {"job_state_s": "JOBHARNESS_TTL_JOB_STATE_S",
            "job_result_s": "JOBHARNESS_TTL_JOB_RESULT_S",
            "worker_state_s": "JOBHARNESS_TTL_WORKER_STATE_S",
            "failure_s": "JOBHARNESS_TTL_FAILURE_S"}
ENV_HELP = {name: var for name, (var, _) in _ENV.items()}


def _split(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def _parse(name: str, raw: Any, parser: Any, origin: str) -> Any:
    try:
        return parser(raw) if not isinstance(raw, list) else parser(",".join(map(str, raw)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: cannot parse {name}={raw!r}: {exc}") from exc


def _from_target(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read target file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"target file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"target file {path} must hold a mapping")
    known = {f.name for f in fields(Settings)} | {"backoff"}
    known.discard("memory_ttls")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"target file {path}: unknown key(s) {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, raw in data.items():
        if name == "backoff":
            if not isinstance(raw, dict):
                raise ConfigError(f"target file {path}: backoff must be a mapping")
            out["backoff"] = _backoff(raw, str(path))
        elif name in _ENV:
            out[name] = _parse(name, raw, _ENV[name][1], str(path))
        else:
            out[name] = raw
    return out


def _backoff(raw: Mapping[str, Any], origin: str) -> BackoffPolicy:
    try:
        return BackoffPolicy(**{k: float(v) for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: invalid backoff {dict(raw)!r}: {exc}") from exc


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    target: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings: flags > environment > target file > defaults."""
    env = os.environ if environ is None else environ
    if target is None and env.get("JOBHARNESS_TARGET"):
        target = Path(env["JOBHARNESS_TARGET"])
    values: dict[str, Any] = _from_target(target) if target is not None else {}
    for name, (var, parser) in _ENV.items():
        if env.get(var):
            values[name] = _parse(name, env[var], parser, f"environment {var}")
    backoff_env = {
        k: env[v]
        for k, v in (
            ("base_s", "JOBHARNESS_BACKOFF_BASE_S"),
            ("max_s", "JOBHARNESS_BACKOFF_MAX_S"),
            ("jitter_s", "JOBHARNESS_BACKOFF_JITTER_S"),
        )
        if env.get(v)
    }
    if backoff_env:
        values["backoff"] = _backoff(backoff_env, "environment")
    ttl_env = {k: _parse(k, env[v], float, f"environment {v}") for k, v in _TTL_ENV.items()
               if env.get(v)}
    if ttl_env:
        if any(v <= 0 for v in ttl_env.values()):
            raise ConfigError("state-memory TTLs must be > 0")
        values["memory_ttls"] = MemoryTtls(**ttl_env)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
    try:
        return Settings(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load these same settings."""
    env = {}
    for name, (var, _) in _ENV.items():
        value = getattr(settings, name)
        if value is None:
            continue
        env[var] = ",".join(sorted(value)) if isinstance(value, frozenset) else str(value)
    env["JOBHARNESS_BACKOFF_BASE_S"] = str(settings.backoff.base_s)
    env["JOBHARNESS_BACKOFF_MAX_S"] = str(settings.backoff.max_s)
    env["JOBHARNESS_BACKOFF_JITTER_S"] = str(settings.backoff.jitter_s)
    env["JOBHARNESS_MEMORY"] = "1" if settings.memory else "0"
    env["JOBHARNESS_RECONCILE"] = "1" if settings.reconcile else "0"
    env["JOBHARNESS_PG_FALLBACK"] = "1" if settings.pg_fallback else "0"
    for name, var in _TTL_ENV.items():
        env[var] = str(getattr(settings.memory_ttls, name))
    return env


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of `settings` with some fields changed (validated again)."""
    return replace(settings, **changes)
