"""Locust users that drive the job service's HTTP API, as one would point Locust at staging:

    JOBHARNESS_SCENARIO=smoke locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Producers create single jobs, batches and DAGs from the scenario's mix until this process's
job budget is spent; observers poll job status; operators cancel jobs and requeue the
dead-letter queue. The open model (`model: open`) creates at a target rate whatever the
response times, and also reports each create's latency from its *intended* start, so a slow
server cannot hide its queueing (coordinated omission). Every request is also written raw to
`$JOBHARNESS_RAW_DIR/requests-<pid>.csv`: Locust's own percentiles are rounded.

With several API replicas (`JOBHARNESS_API_URLS`, comma-separated; `run --api-replicas N`)
users are dealt out over them in turn, and a user whose replica stops answering (connection
refused or reset: no HTTP status at all) moves on to the next one, as a load balancer takes a
dead backend out of rotation.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import threading
import time
from collections import deque
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, constant, events, task
from locust.exception import StopUser

from core.settings import load_run_env
from loadtests.jobmix import JobFactory
from loadtests.scenario import load_scenario

_ENV = load_run_env()
SCENARIO = load_scenario(_ENV.scenario)
BUDGET = SCENARIO.jobs if _ENV.job_budget is None else _ENV.job_budget
RAW_DIR = _ENV.raw_dir
RECENT: deque[str] = deque(maxlen=2000)
_lock = threading.Lock()
_spent = 0
_in_flight = 0
_rng = random.Random(f"{SCENARIO.seed}:{os.getpid()}")
# every user sends the API's bearer token when the system under test asks for one
_TOKEN = os.environ.get("JOBHARNESS_API_TOKEN")
HEADERS = {"Authorization": f"Bearer {_TOKEN}"} if _TOKEN else None
API_URLS = [u.strip() for u in os.environ.get("JOBHARNESS_API_URLS", "").split(",")
            if u.strip()]
_dealt = itertools.count()


def take(n: int) -> int:
    """Reserve up to `n` jobs of this process's budget (0 when it is spent); a granted
    reservation must be closed with `sent()` once its request has returned."""
    global _spent, _in_flight
    with _lock:
        granted = max(0, min(n, BUDGET - _spent))
        _spent += granted
        _in_flight += 1 if granted else 0
        return granted


def sent() -> None:
    """A create returned; once the budget is spent and nothing is in flight, say so to the
    orchestrator (it then stops Locust without cutting a request short)."""
    global _in_flight
    with _lock:
        _in_flight -= 1
        if _spent >= BUDGET and _in_flight == 0:
            (RAW_DIR / f"budget-spent-{os.getpid()}").touch()


def _remember(response: Any) -> None:
    """Keep acknowledged job ids: observers poll them, and the run checks every one exists."""
    try:
        body = response.json()
    except Exception:  # a failed request has no JSON body to learn ids from
        return
    for item in body if isinstance(body, list) else [body]:
        if isinstance(item, dict) and "job_id" in item:
            RECENT.append(item["job_id"])
            _accepted.write(item["job_id"] + "\n")


class _RawWriter:
    """Every request as one CSV row (response times unrounded)."""

    def __init__(self) -> None:
        RAW_DIR.mkdir(parents=True, exist_ok=True)
        self._fh = open(RAW_DIR / f"requests-{os.getpid()}.csv", "w", newline="")  # noqa: SIM115
        self._w = csv.writer(self._fh)
        self._w.writerow(["ts", "method", "name", "response_time_ms", "bytes", "ok", "error",
                          "replica"])

    def row(self, request_type: str, name: str, response_time: float, response_length: int,
            exception: Any, context: Any = None, **_: Any) -> None:
        user = (context or {}).get("replica_user")
        self._w.writerow([f"{time.time():.6f}", request_type, name, f"{response_time:.3f}",
                          response_length or 0, 0 if exception else 1,
                          str(exception)[:200] if exception else "",
                          user.replica if user is not None else ""])

    def close(self, **_: Any) -> None:
        self._fh.flush()
        self._fh.close()


class ReplicaUser(FastHttpUser):
    """A user bound to one API replica (the --host when there is only one)."""

    abstract = True
    default_headers = HEADERS

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.replica = next(_dealt) % len(API_URLS) if API_URLS else 0
        if API_URLS:
            self.client.base_url = API_URLS[self.replica]

    def context(self) -> dict[str, Any]:
        return {"replica_user": self}


def _fail_over(response: Any = None, context: Any = None, **_: Any) -> None:
    """A request that got no HTTP answer at all: its user moves to the next replica."""
    user = (context or {}).get("replica_user")
    if user is None or len(API_URLS) < 2 or getattr(response, "status_code", None) != 0:
        return
    user.replica = (user.replica + 1) % len(API_URLS)
    user.client.base_url = API_URLS[user.replica]


_raw = _RawWriter()
_accepted = open(RAW_DIR / f"accepted-{os.getpid()}.txt", "w")  # noqa: SIM115
events.request.add_listener(_raw.row)
events.request.add_listener(_fail_over)
events.quitting.add_listener(_raw.close)
events.quitting.add_listener(lambda **_: _accepted.close())


def _fit(factory: JobFactory, path: str, body: Any, n: int, granted: int) -> tuple[str, Any]:
    """Another user took part of the budget meanwhile: send exactly `granted` jobs."""
    if granted == n:
        return path, body
    if granted == 1:
        return "/jobs", factory.job()
    return "/jobs/batch", {"jobs": [factory.job() for _ in range(granted)]}


def _create(user: ReplicaUser, factory: JobFactory) -> None:
    path, body, n = factory.next_request(BUDGET - _spent)
    granted = take(n)
    if granted == 0:
        raise StopUser()
    path, body = _fit(factory, path, body, n, granted)
    name = "POST /jobs/batch" if path.endswith("batch") else "POST /jobs"
    try:
        with user.client.post(path, json=body, name=name, catch_response=True) as resp:
            if resp.status_code == 201:
                _remember(resp)
                resp.success()
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
    finally:
        sent()


class Producer(ReplicaUser):
    """Closed model: each user creates again as soon as its previous create returns."""

    abstract = SCENARIO.model != "closed"  # an abstract user class is never spawned
    weight = 10
    wait_time = constant(0)

    def on_start(self) -> None:
        self.factory = JobFactory(SCENARIO, random.Random(_rng.random()))

    @task
    def create(self) -> None:
        _create(self, self.factory)


class ArrivalProducer(ReplicaUser):
    """Open model: creates at `rate_per_s` on a fixed schedule, each in its own greenlet."""

    abstract = SCENARIO.model != "open"
    fixed_count = 1
    concurrency = SCENARIO.max_in_flight
    wait_time = constant(1)

    def on_start(self) -> None:
        self.factory = JobFactory(SCENARIO, random.Random(_rng.random()))
        self.in_flight = 0

    def _one(self, intended: float) -> None:
        self.in_flight += 1
        granted = 0
        try:
            path, body, n = self.factory.next_request(BUDGET - _spent)
            granted = take(n)
            if not granted:
                return
            path, body = _fit(self.factory, path, body, n, granted)
            start = time.perf_counter()
            name = "POST /jobs/batch" if path.endswith("batch") else "POST /jobs"
            with self.client.post(path, json=body, name=name, catch_response=True) as resp:
                ok = resp.status_code == 201
                resp.success() if ok else resp.failure(f"{resp.status_code}")
                if ok:
                    _remember(resp)
            events.request.fire(request_type="POST", name=f"{name} (from intended start)",
                                response_time=(time.perf_counter() - intended) * 1000,
                                response_length=0, exception=None if ok else "failed",
                                context={}, response=None, start_time=start, url=path)
        finally:
            if granted:
                sent()
            self.in_flight -= 1

    @task
    def arrive(self) -> None:
        interval = 1.0 / SCENARIO.rate_per_s
        next_at = time.perf_counter()
        while _spent < BUDGET:
            delay = next_at - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            if self.in_flight >= SCENARIO.max_in_flight:
                events.request.fire(request_type="POST", name="arrival missed (in flight cap)",
                                    response_time=0, response_length=0, exception="missed",
                                    context={}, response=None, start_time=time.time(),
                                    url="/jobs")
            else:
                gevent.spawn(self._one, next_at)
            next_at += interval
        raise StopUser()


class Observer(ReplicaUser):
    """Polls the status of recently created jobs."""

    abstract = SCENARIO.observers == 0
    fixed_count = max(1, SCENARIO.observers)
    wait_time = between(0.2, 0.5)

    @task
    def poll(self) -> None:
        if RECENT:
            self.client.get(f"/jobs/{random.choice(RECENT)}", name="GET /jobs/{id}")


class Operator(ReplicaUser):
    """Cancels a recent job now and then, and requeues the dead-letter queue."""

    abstract = SCENARIO.operators == 0
    fixed_count = max(1, SCENARIO.operators)
    wait_time = between(1.0, 2.0)

    @task(3)
    def cancel(self) -> None:
        if not RECENT:
            return
        job_id = random.choice(RECENT)
        with self.client.post(f"/jobs/{job_id}/cancel", json={"reason": "load-test operator"},
                              name="POST /jobs/{id}/cancel", catch_response=True) as resp:
            # 409: the job had already finished; that is an answer, not an error
            resp.success() if resp.status_code in (200, 409) else resp.failure(
                f"{resp.status_code}")

    @task(1)
    def requeue(self) -> None:
        resp = self.client.get("/dlq?limit=5", name="GET /dlq")
        if resp.status_code == 200 and resp.json():
            entry = resp.json()[0]
            with self.client.post(f"/dlq/{entry['job_id']}/requeue",
                                  name="POST /dlq/{id}/requeue", catch_response=True) as r:
                r.success() if r.status_code in (200, 409) else r.failure(f"{r.status_code}")


if SCENARIO.shape is not None:
    class ScenarioShape(LoadTestShape):
        """Users over time from the scenario's `shape`."""

        shape = SCENARIO.shape

        def tick(self) -> tuple[int, float] | None:
            t = self.get_run_time()
            s = self.shape
            if s["type"] == "spike":
                for users, until in ((s["base_users"], s["before_s"]),
                                     (s["spike_users"], s["before_s"] + s["spike_s"]),
                                     (s["base_users"], s["before_s"] + s["spike_s"]
                                      + s["after_s"])):
                    if t < until:
                        return int(users), float(max(users, 1))
                return None
            for stage in s["stages"]:
                if t < stage["until_s"]:
                    return int(stage["users"]), float(stage.get("spawn_rate", stage["users"]))
            return None
