"""The staging kit read as files (no Docker engine here): the compose stack is consistent with
the targets, the config defaults and the fault proxy; alert rules and dashboard queries parse
and carry the monitoring plan's thresholds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import promql_parser
import pytest
import yaml

from chaos.actions import Endpoints
from chaos.proxy_api import ProxyCollection
from core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
TARGET = load_settings(target=ROOT / "targets" / "staging.yaml", environ={})
# host ports that other common services own (databases, brokers, web, monitoring defaults)
COMMON_PORTS = {80, 443, 3000, 3306, 5432, 5672, 6333, 6379, 8000, 8080, 8089, 9090, 9200,
                11211, 15672, 27017}
LONG_RUNNING = {"postgres", "redis", "qdrant", "toxiproxy", "api", "supervisor",
                "locust-master", "prometheus", "grafana"}


def default(value: str) -> str:
    """`${VAR:-default}` -> default (what the stack uses when the environment is silent);
    `${VAR:?message}` (a secret with no default) -> a stand-in the caller must provide."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "given", value)


def host_ports(service: str) -> list[int]:
    out = []
    for mapping in SERVICES[service].get("ports", []):
        host = default(mapping).rsplit(":", 1)[0].rsplit(":", 1)[-1]  # 127.0.0.1:HOST:C
        lo, _, hi = host.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def env(service: str) -> dict[str, str]:
    return {k: default(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def test_every_service_is_there_with_health_checks() -> None:
    assert {"postgres", "redis", "qdrant", "toxiproxy", "migrate", "api", "supervisor",
            "memory-owner", "locust-master", "locust-worker", "prometheus",
            "grafana"} <= set(SERVICES)
    for name in LONG_RUNNING:
        assert "test" in SERVICES[name].get("healthcheck", {}), name
    assert default(SERVICES["api"]["deploy"]["replicas"]) == "2"


def test_images_are_pinned() -> None:
    for name, svc in SERVICES.items():
        image = svc.get("image", "")
        if image == "jobharness:local":
            continue  # built from the Dockerfile (by `migrate`)
        assert ":" in image, f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image} floats"
        assert re.search(r":v?\d+\.\d+", image), f"{name}: {image} is not a pinned version"
    assert SERVICES["migrate"]["build"] == "."
    assert (ROOT / "Dockerfile").read_text().startswith("#")


def test_one_network_and_named_volumes() -> None:
    assert list(COMPOSE["networks"]) == ["jobharness"]
    declared = set(COMPOSE["volumes"])
    for name, svc in SERVICES.items():
        assert svc["networks"] == ["jobharness"], name
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith("./"):
                assert source in declared, f"{name}: volume {source} is not declared"
            else:
                assert (ROOT / source).exists(), f"{name}: {source} is missing"


def test_host_ports_keep_off_common_services_and_do_not_clash() -> None:
    seen: dict[int, str] = {}
    for name in SERVICES:
        for port in host_ports(name):
            assert port not in COMMON_PORTS or (name == "toxiproxy" and port == 8474), \
                f"{name} publishes {port}, a port another common service owns"
            assert port not in seen, f"{name} and {seen.get(port)} both publish {port}"
            seen[port] = name
    assert host_ports("redis") == [6380]  # the seed's port discipline


def test_redis_never_evicts_and_persists() -> None:
    command = [default(c) for c in SERVICES["redis"]["command"]]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"


def test_environment_agrees_with_the_config_and_the_target() -> None:
    defaults = Settings()
    for service in ("migrate", "api", "supervisor", "memory-owner"):
        e = env(service)
        assert e["JOBHARNESS_SCHEMA"] == defaults.schema == TARGET.schema
        assert e["JOBHARNESS_PREFIX"] == defaults.prefix == TARGET.prefix
        assert float(e["JOBHARNESS_HEARTBEAT_INTERVAL_S"]) == TARGET.heartbeat_interval_s
        assert float(e["JOBHARNESS_HEARTBEAT_TTL_S"]) == TARGET.heartbeat_ttl_s
        assert float(e["JOBHARNESS_LEASE_S"]) == TARGET.lease_s
        # the job system reaches its stores through toxiproxy only
        for var in ("JOBHARNESS_PG_DSN", "JOBHARNESS_REDIS_URL", "JOBHARNESS_QDRANT_URL"):
            assert urlsplit(e[var]).hostname == "toxiproxy", (service, var)
        Settings(schema=e["JOBHARNESS_SCHEMA"], prefix=e["JOBHARNESS_PREFIX"])  # valid


def test_every_endpoint_of_the_target_is_a_service_of_the_stack() -> None:
    pg = env("postgres")
    dsn = urlsplit(TARGET.pg_dsn or "")
    assert (dsn.username, dsn.path.lstrip("/")) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    assert dsn.password is None  # secrets stay in the environment (PGPASSWORD)
    for url, service in ((TARGET.pg_dsn, "postgres"), (TARGET.redis_url, "redis"),
                         (TARGET.qdrant_url, "qdrant"), (TARGET.api_url, "api"),
                         (TARGET.toxiproxy_url, "toxiproxy"), (TARGET.control_url,
                                                               "supervisor")):
        parts = urlsplit(url or "")
        assert parts.hostname == "127.0.0.1", url
        assert parts.port in host_ports(service), f"{url} is not {service}'s published port"
    sup = [default(c) for c in SERVICES["supervisor"]["command"]]
    assert sup[sup.index("--control-port") + 1] == "8090"
    assert sup[sup.index("--model") + 1] == "default"


async def test_the_fault_proxy_loads_the_toxiproxy_config() -> None:
    specs = json.loads((ROOT / "staging" / "toxiproxy.json").read_text())
    names = {s["name"] for s in specs}
    ep = Endpoints()
    assert set(ep.proxies["all"].values()) <= names  # what drills address
    for spec in specs:
        host, port = spec["upstream"].rsplit(":", 1)
        assert host in SERVICES
        assert int(port) in {5432, 6379, 6333}
    from chaos.proxy import ProxyError

    with pytest.raises(ProxyError, match="--allow-remote"):  # 0.0.0.0: only when told
        await ProxyCollection(seed=1).create({**specs[0], "enabled": False})
    collection = ProxyCollection(seed=1, allow_remote=True)
    for spec in specs:  # loaded as toxiproxy would, without binding the container addresses
        proxy = await collection.create({**spec, "enabled": False})
        assert proxy.upstream == spec["upstream"]
    await collection.close()
    listen = {s["name"]: int(s["listen"].rsplit(":", 1)[1]) for s in specs}
    for var, name in (("JOBHARNESS_PG_DSN", "postgres"), ("JOBHARNESS_REDIS_URL", "redis"),
                      ("JOBHARNESS_QDRANT_URL", "qdrant")):
        assert urlsplit(env("api")[var]).port == listen[name]


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((ROOT / "staging" / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "staging" / "grafana" / "dashboards" / "jobharness.json")
                      .read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_alert_rules_parse_and_carry_the_thresholds() -> None:
    rules = alert_rules()
    expected = {  # alert: (severity, a number its expression must compare against)
        "DeadLetterQueueLarge": ("critical", "100"),
        "WorkerFailureRateHigh": ("critical", "0.10"),
        "QueueSaturationHigh": ("critical", "0.90"),
        "DatabasePoolExhausted": ("critical", "0.80"),
        "RetryRateHigh": ("warning", "0.05"),
        "JobDurationHigh": ("warning", "2 *"),
        "HeartbeatTimeoutsFrequent": ("warning", "> 3"),
        "RedisMemoryHigh": ("warning", "1.5e9"),
    }
    for name, (severity, threshold) in expected.items():
        rule = rules[name]
        assert rule["labels"]["severity"] == severity
        assert threshold in rule["expr"], name
        assert rule["annotations"]["runbook"].startswith("docs/operations.md#")
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name, rule in rules.items():
        assert metric_names(rule["expr"]), f"{name}: {rule['expr']} names no metric"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert f"\n### {name}\n" in guide, f"no runbook for {name}"


def test_dashboard_queries_parse() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        assert metric_names(expr), expr


def test_a_broken_expression_is_caught() -> None:
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        metric_names("max(rate(jobharness_retries_total[5m])")


def test_the_docs_name_the_images_the_compose_file_pins() -> None:
    """docs/operations.md's image table and the compose file cannot drift apart."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    named = dict(re.findall(r"^\| ([a-z-]+) \| `([^`]+)` \|$", doc, flags=re.MULTILINE))
    pinned = {name: s["image"] for name, s in SERVICES.items()
              if "image" in s and not s["image"].startswith("jobharness")}
    assert named == pinned
    assert all(re.search(r":v?\d+\.\d+", image) for image in pinned.values())  # versions
    base = next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
                if line.startswith("FROM "))
    assert f"`{base}`" in doc or base in doc
    assert "-c constraints.txt" in (ROOT / "Dockerfile").read_text()


def test_every_surface_of_ours_gets_the_token_and_it_has_no_default() -> None:
    """The API and the control surface listen on 0.0.0.0 inside the stack: they start only
    with a token, which must come from the environment (no default to forget)."""
    for name in ("api", "supervisor", "memory-owner", "migrate", "locust-master",
                 "locust-worker"):
        value = SERVICES[name]["environment"]["JOBHARNESS_API_TOKEN"]
        assert value.startswith("${JOBHARNESS_API_TOKEN:?"), (name, value)
    health = " ".join(SERVICES["supervisor"]["healthcheck"]["test"])
    assert "Authorization" in health  # /stats asks for the token too
    assert COMPOSE["secrets"]["api_token"] == {"environment": "JOBHARNESS_API_TOKEN"}
    assert "api_token" in SERVICES["prometheus"]["secrets"]
    prom = yaml.safe_load((ROOT / "staging" / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        if job["job_name"] in ("api", "supervisor"):
            assert job["authorization"] == {"type": "Bearer",
                                            "credentials_file": "/run/secrets/api_token"}


def test_ports_on_loopback_only_and_no_default_secret() -> None:
    """A published port without 127.0.0.1 exposes the service to the network; a secret with
    a default is a known password."""
    raw = (ROOT / "docker-compose.yml").read_text()
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (name, mapping)
    secret = re.compile(r"\$\{([A-Z_]*(?:PASSWORD|TOKEN|SECRET|API_KEY)[A-Z_]*)(:?[-?])")
    found = secret.findall(raw)
    assert {var for var, _ in found} >= {"POSTGRES_PASSWORD", "REDIS_PASSWORD",
                                         "GRAFANA_ADMIN_PASSWORD", "JOBHARNESS_API_TOKEN",
                                         "QDRANT_API_KEY"}
    assert env("qdrant")["QDRANT__SERVICE__API_KEY"] == "given"
    assert env("api")["JOBHARNESS_QDRANT_API_KEY"] == "given"
    assert all(op == ":?" for _, op in found), [v for v, op in found if op != ":?"]
    assert env("grafana")["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    redis = [default(c) for c in SERVICES["redis"]["command"]]
    assert "--requirepass" in redis


def test_the_memory_owner_is_reachable_from_the_api_in_the_stack() -> None:
    command = SERVICES["memory-owner"]["command"]
    url = command[command.index("--advertise-url") + 1]
    port = command[command.index("--port") + 1]
    assert url == f"http://memory-owner:{port}"  # a name the api container resolves
    for name in ("api", "supervisor"):  # where they send the token: configured, not Redis's
        assert env(name)["JOBHARNESS_MEMORY_OWNER_URL"] == url
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "jobharness" in SERVICES["memory-owner"]["networks"]
