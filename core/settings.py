"""Settings: one frozen, validated dataclass built by `load_settings` from
flags > environment (`JOBHARNESS_*`) > target YAML file > defaults.

Every field is declared once in `FIELDS` with its environment variable and its parser, so a
value is parsed the same way wherever it comes from (flags, environment, a target file, a
drill's `settings:`), and `to_env` hands every field to a child process (proven field by field
in tests/unit/test_settings_keys.py). Fields are grouped by area in `AREAS`.

Nothing else in the project reads `os.environ`: the harness's own variables for Locust's
processes are read here too (`load_run_env`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from core.errors import ConfigError
from core.jobs.backoff import BackoffPolicy

HOUR = 3600.0


@dataclass(frozen=True, kw_only=True)
class MemoryTtls:
    """Default TTL per kind of state-memory entry (the seed's: 24 h, 24 h, 1 h, 90 days)."""

    job_state_s: float = 24 * HOUR
    job_result_s: float = 24 * HOUR
    worker_state_s: float = 1 * HOUR
    failure_s: float = 90 * 24 * HOUR

    def __post_init__(self) -> None:
        if any(getattr(self, f.name) <= 0 for f in fields(self)):
            raise ConfigError("state-memory TTLs must be > 0")


MAX_NICE = 19  # the most a process can lower its own priority (workers' `nice`)


def check_nice(value: int, name: str = "nice") -> int:
    """A niceness a worker may be given (0..19); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NICE:
        raise ValueError(f"{name} must be between 0 and {MAX_NICE}, got {value!r}")
    return value


BUILTIN_JOB_TYPES = frozenset({"noop", "sleep", "cpu", "flaky", "leak", "hang"})
# the built-ins that spend a worker's time, CPU or memory on a caller's say: on for embedded
# runs, off against a target unless it turns them on (JOBHARNESS_SYNTHETIC_HANDLERS)
SYNTHETIC_JOB_TYPES = BUILTIN_JOB_TYPES - {"noop"}
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a process of the job system needs to know."""

    # -- stores
    pg_dsn: str | None = None  # None: use (and start if needed) the embedded server
    redis_url: str | None = None
    schema: str = "gap006"
    prefix: str = "gap006"
    data_dir: Path = Path(".jobharness")
    pg_max_connections: int = 400  # the embedded server's max_connections
    # -- dispatch
    redis_timeout_s: float = 1.0
    redis_retry_after_s: float = 2.0  # the Redis breaker stays open this long after a failure
    pg_fallback: bool = True  # acquire through PostgreSQL while Redis is down (off: drills)
    reconcile: bool = True  # the supervisor runs the reconciler (off only to drill a broken core)
    # -- jobs and workers
    lease_s: float = 30.0
    heartbeat_interval_s: float = 30.0
    heartbeat_ttl_s: float = 60.0
    health_sample_s: float = 1.0  # workers' health samples (the predictor's), any heartbeat
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    max_payload_bytes: int = 256 * 1024
    job_types: frozenset[str] = BUILTIN_JOB_TYPES
    # None: on while the stores are the embedded servers (resolve_endpoints says so to the
    # processes it configures), off against stores given by DSN/URL
    synthetic_handlers: bool | None = None
    dlq_retention_days: float = 30.0
    # -- API and staging targets
    api_url: str | None = None  # a running job API (staging targets); None: start one
    toxiproxy_url: str | None = None  # staging drills: the toxiproxy API in front of the stores
    control_url: str | None = None  # staging drills: the supervisor's control surface
    # the bearer token every HTTP surface asks for (API, control surface, memory owner, fault
    # proxy) and every client of ours sends; never printed (repr=False)
    api_token: str | None = field(default=None, repr=False)
    # -- state memory
    memory: bool = True  # emit write-behind state events for the memory owner
    qdrant_url: str | None = None  # None: local mode in data_dir/qdrant
    qdrant_api_key: str | None = field(default=None, repr=False)  # a Qdrant server's key
    # where the memory owner is, when not on this machine (compose); None: the address it
    # advertises in Redis, followed only on loopback
    memory_owner_url: str | None = None
    memory_ttls: MemoryTtls = field(default_factory=MemoryTtls)

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    def __post_init__(self) -> None:
        if not _SCHEMA_RE.match(self.schema):
            raise ConfigError(f"invalid schema name {self.schema!r}: use [a-z_][a-z0-9_]*")
        if not re.match(r"^[A-Za-z0-9_.\-]{1,64}$", self.prefix):
            raise ConfigError(f"invalid Redis key prefix {self.prefix!r}")
        for name in ("lease_s", "heartbeat_interval_s", "heartbeat_ttl_s", "redis_timeout_s",
                     "redis_retry_after_s", "dlq_retention_days", "health_sample_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError("heartbeat_ttl_s must be greater than heartbeat_interval_s")
        if self.max_payload_bytes <= 0:
            raise ConfigError("max_payload_bytes must be > 0")
        if not 10 <= self.pg_max_connections <= 10_000:
            raise ConfigError("pg_max_connections must be between 10 and 10000")

    @property
    def embedded(self) -> bool:
        return self.pg_dsn is None or self.redis_url is None

    @property
    def synthetic_on(self) -> bool:
        """Whether the synthetic handlers run and their job types are accepted."""
        return self.embedded if self.synthetic_handlers is None else self.synthetic_handlers

    @property
    def accepted_job_types(self) -> frozenset[str]:
        """The job types the API takes and workers run: the synthetic ones only when on."""
        return self.job_types if self.synthetic_on else self.job_types - SYNTHETIC_JOB_TYPES


AREAS: dict[str, tuple[str, ...]] = {
    "stores": ("pg_dsn", "redis_url", "schema", "prefix", "data_dir", "pg_max_connections"),
    "dispatch": ("redis_timeout_s", "redis_retry_after_s", "pg_fallback", "reconcile"),
    "workers": ("lease_s", "heartbeat_interval_s", "heartbeat_ttl_s", "health_sample_s",
                "backoff", "max_payload_bytes", "job_types", "synthetic_handlers",
                "dlq_retention_days"),
    "api": ("api_url", "toxiproxy_url", "control_url", "api_token"),
    "memory": ("memory", "qdrant_url", "qdrant_api_key", "memory_owner_url", "memory_ttls"),
}


# -- parsing: one table, one parser per field -------------------------------------------------
def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _int(raw: Any) -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError("expected an integer")
    return int(raw)


def _text(raw: Any) -> str:
    if not isinstance(raw, str | Path) or not str(raw):
        raise ValueError("expected a non-empty string")
    return str(raw)


def _url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    """A store's DSN or URL: its scheme one of `schemes`, every port a number (several
    comma-separated hosts allowed, as libpq and asyncpg take them). Checked here so a typo is
    one line naming the field, not a traceback from a driver."""
    def parse(raw: Any) -> str:
        text = _text(raw)
        parts = urlsplit(text)
        if parts.scheme not in schemes:
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        hosts = parts.netloc.rpartition("@")[2]
        for host in filter(None, hosts.split(",")):
            port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host.rpartition(
                "]")[2] else ""
            if port and not port.isdigit():
                raise ValueError(f"port {port!r} is not a number")
        return text
    return parse


def split_password(url: str) -> tuple[str, str | None]:
    """A store URL without its password, and the password (None when it had none)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    return (urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}")),
            unquote(parts.password))


def _job_types(raw: Any) -> frozenset[str]:
    items = raw if isinstance(raw, list | tuple | set | frozenset) else str(raw).split(",")
    return BUILTIN_JOB_TYPES | frozenset(str(p).strip() for p in items if str(p).strip())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    return str(value)


# name -> (environment variable, parser) for every plain field
FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "pg_dsn": ("JOBHARNESS_PG_DSN", _url(("postgresql", "postgres"))),
    "redis_url": ("JOBHARNESS_REDIS_URL", _url(("redis", "rediss", "unix"))),
    "schema": ("JOBHARNESS_SCHEMA", _text),
    "prefix": ("JOBHARNESS_PREFIX", _text),
    "data_dir": ("JOBHARNESS_DATA_DIR", lambda raw: Path(_text(raw))),
    "pg_max_connections": ("JOBHARNESS_PG_MAX_CONNECTIONS", _int),
    "redis_timeout_s": ("JOBHARNESS_REDIS_TIMEOUT_S", float),
    "redis_retry_after_s": ("JOBHARNESS_REDIS_RETRY_AFTER_S", float),
    "pg_fallback": ("JOBHARNESS_PG_FALLBACK", _bool),
    "reconcile": ("JOBHARNESS_RECONCILE", _bool),
    "lease_s": ("JOBHARNESS_LEASE_S", float),
    "heartbeat_interval_s": ("JOBHARNESS_HEARTBEAT_INTERVAL_S", float),
    "heartbeat_ttl_s": ("JOBHARNESS_HEARTBEAT_TTL_S", float),
    "health_sample_s": ("JOBHARNESS_HEALTH_SAMPLE_S", float),
    "max_payload_bytes": ("JOBHARNESS_MAX_PAYLOAD_BYTES", _int),
    "job_types": ("JOBHARNESS_JOB_TYPES", _job_types),
    "synthetic_handlers": ("JOBHARNESS_SYNTHETIC_HANDLERS", _bool),
    "dlq_retention_days": ("JOBHARNESS_DLQ_RETENTION_DAYS", float),
    "api_url": ("JOBHARNESS_API_URL", _text),
    "toxiproxy_url": ("JOBHARNESS_TOXIPROXY_URL", _text),
    "control_url": ("JOBHARNESS_CONTROL_URL", _text),
    "api_token": ("JOBHARNESS_API_TOKEN", _text),
    "memory": ("JOBHARNESS_MEMORY", _bool),
    "qdrant_url": ("JOBHARNESS_QDRANT_URL", _text),
    "qdrant_api_key": ("JOBHARNESS_QDRANT_API_KEY", _text),
    "memory_owner_url": ("JOBHARNESS_MEMORY_OWNER_URL", _text),
}
# fields made of parts: name -> (class, {part: environment variable}); every part a float
COMPOSITES: dict[str, tuple[type, dict[str, str]]] = {
    "backoff": (BackoffPolicy, {"base_s": "JOBHARNESS_BACKOFF_BASE_S",
                                "factor": "JOBHARNESS_BACKOFF_FACTOR",
                                "max_s": "JOBHARNESS_BACKOFF_MAX_S",
                                "jitter_s": "JOBHARNESS_BACKOFF_JITTER_S"}),
    "memory_ttls": (MemoryTtls, {"job_state_s": "JOBHARNESS_TTL_JOB_STATE_S",
                                 "job_result_s": "JOBHARNESS_TTL_JOB_RESULT_S",
                                 "worker_state_s": "JOBHARNESS_TTL_WORKER_STATE_S",
                                 "failure_s": "JOBHARNESS_TTL_FAILURE_S"}),
}
ENV_HELP = {name: var for name, (var, _) in FIELDS.items()}


# values never repeated in a message: they may hold a password or are one
SECRET_FIELDS = frozenset({"pg_dsn", "redis_url", "api_token", "qdrant_api_key"})


def _parse(name: str, raw: Any, origin: str) -> Any:
    try:
        return FIELDS[name][1](raw)
    except (TypeError, ValueError) as exc:
        shown = "" if name in SECRET_FIELDS else f"={raw!r}"
        raise ConfigError(f"{origin}: cannot parse {name}{shown}: {exc}") from None


def _composite(name: str, raw: Any, base: Any, origin: str) -> Any:
    cls, parts = COMPOSITES[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: {name} must be a mapping of {', '.join(parts)}")
    unknown = sorted(set(raw) - set(parts))
    if unknown:
        raise ConfigError(f"{origin}: unknown {name} key(s) {', '.join(map(str, unknown))}")
    try:
        values = {k: float(v) for k, v in raw.items()}
        return replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: invalid {name} {dict(raw)!r}: {exc}") from exc


def parse_values(raw: Mapping[str, Any], origin: str,
                 base: Settings | None = None) -> dict[str, Any]:
    """Typed field values from raw ones (a target file, a drill's `settings:`, flags): unknown
    names and unparsable values are refused naming the field and where it came from. A
    composite (backoff, memory_ttls) may give some of its parts; the rest come from `base`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: settings must be a mapping")
    unknown = sorted(set(raw) - set(FIELDS) - set(COMPOSITES))
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s) {', '.join(map(str, unknown))}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if name in COMPOSITES:
            out[name] = _composite(name, value, getattr(base, name, None), origin)
        else:
            out[name] = _parse(name, value, origin)
    return out


def with_values(settings: Settings, raw: Mapping[str, Any], origin: str) -> Settings:
    """`settings` with the raw values of `raw` parsed and applied (validated again)."""
    values = parse_values(raw, origin, base=settings)
    return _checked(lambda: replace(settings, **values), origin)


def _checked(make: Callable[[], Settings], origin: str) -> Settings:
    try:
        return make()
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: invalid settings: {exc}") from exc


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
    return parse_values(data, f"target file {path}")


def _from_env(env: Mapping[str, str], base: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (var, _) in FIELDS.items():
        if env.get(var):
            values[name] = _parse(name, env[var], f"environment {var}")
    for name, (_, parts) in COMPOSITES.items():
        given = {part: env[var] for part, var in parts.items() if env.get(var)}
        if given:
            values[name] = _composite(name, given, base.get(name), "environment")
    return values


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
    values |= _from_env(env, values)
    values |= parse_values({k: v for k, v in (flags or {}).items() if v is not None}, "flags")
    return _checked(lambda: Settings(**values), "settings")


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load these same settings."""
    env = {}
    for name, (var, _) in FIELDS.items():
        value = getattr(settings, name)
        if value is not None:
            env[var] = _show(value)
    for name, (_, parts) in COMPOSITES.items():
        for part, var in parts.items():
            env[var] = repr(float(getattr(getattr(settings, name), part)))
    return env


@dataclass(frozen=True, kw_only=True)
class RunEnv:
    """What `jobharness run` tells each Locust process it starts."""

    scenario: str  # a scenario name or YAML file
    raw_dir: Path  # where the requests and accepted ids go
    job_budget: int | None  # jobs this process may create (None: the scenario's)


def load_run_env(environ: Mapping[str, str] | None = None) -> RunEnv:
    env = os.environ if environ is None else environ
    budget = env.get("JOBHARNESS_JOB_BUDGET")
    try:
        job_budget = int(budget) if budget else None
    except ValueError as exc:
        raise ConfigError(f"environment JOBHARNESS_JOB_BUDGET: not an integer: {budget!r}"
                          ) from exc
    return RunEnv(scenario=env.get("JOBHARNESS_SCENARIO", "smoke"),
                  raw_dir=Path(env.get("JOBHARNESS_RAW_DIR", ".")), job_budget=job_budget)


def run_env(scenario: Path, raw_dir: Path, job_budget: int) -> dict[str, str]:
    """The environment `load_run_env` reads back (what the run gives Locust)."""
    return {"JOBHARNESS_SCENARIO": str(scenario), "JOBHARNESS_RAW_DIR": str(raw_dir),
            "JOBHARNESS_JOB_BUDGET": str(job_budget)}
