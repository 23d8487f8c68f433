"""One round of the peer workload on dramatiq (Redis broker), run by compare.py in the peers'
own environment (never imported by the project). Under a key namespace of its own: a client
loop of N single sends (latency per call), then one worker with 100 threads drains them (time
from the first job's start to the last one's end). Prints JSON; deletes its keys."""

from __future__ import annotations

import json
import os
import threading
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from peer_result import handshake, result

PAYLOAD = {"blob": "x" * 180}  # ~200 bytes, as the others


def main() -> None:
    url, jobs, slots = os.environ["PEER_REDIS_URL"], int(os.environ["PEER_JOBS"]), int(
        os.environ["PEER_SLOTS"])
    namespace = f"peer-dramatiq-{os.getpid()}"
    broker = RedisBroker(url=url, namespace=namespace)
    dramatiq.set_broker(broker)
    lock = threading.Lock()
    first, last, done = [0.0], [0.0], [0]
    finished = threading.Event()

    @dramatiq.actor(max_retries=0, queue_name="noop")
    def noop(payload: dict[str, str]) -> None:
        with lock:
            now = time.perf_counter()
            if not first[0]:
                first[0] = now
            done[0] += 1
            last[0] = now
            if done[0] == jobs:
                finished.set()

    took = []
    t0 = time.perf_counter()
    for _ in range(jobs):
        s = time.perf_counter()
        noop.send(PAYLOAD)
        took.append(time.perf_counter() - s)
    enqueue_s = time.perf_counter() - t0

    worker = dramatiq.Worker(broker, worker_threads=slots)
    handshake("drain")
    worker.start()
    try:
        if not finished.wait(timeout=600):
            raise SystemExit(f"dramatiq drained {done[0]} of {jobs} in 600 s")
        handshake("drained")
    finally:
        worker.stop()
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{namespace}*", count=1000):
            client.delete(key)
        client.close()
    print(json.dumps(result("dramatiq", jobs, drained=done[0], drain_s=last[0] - first[0],
                            enqueue_s=enqueue_s, enqueue_latencies_s=took)))


if __name__ == "__main__":
    main()
