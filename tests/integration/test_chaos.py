"""The chaos suite: real processes killed mid-work, and no accepted job lost or done twice.

Each round runs a real API (gunicorn, its own process), real Celery workers with the real
``heart`` voice, and a Redis of its own with append-only persistence (``appendfsync
always``). Eight client threads submit 120 jobs over HTTP; each client retries every 5xx,
every dropped connection and a 409 ``idempotency_key_in_use`` (after its ``Retry-After``)
with the same Idempotency-Key, as the docs tell clients to.
While the jobs run, one fault hits:

* Redis SIGKILLed mid-synthesis, restarted 5 s later on the same data;
* Redis SIGSTOPped for 10 s (longer than a lease), then SIGCONT;
* the worker's main process SIGKILLed (its children orphaned), a new worker started;
* one worker child SIGKILLed;
* the API SIGKILLed mid-submit and restarted.

Then every round asserts the contract of docs/reliability.md: every job that got a 2xx
ends ``succeeded`` with audio that decodes; exactly one success per job (one final
transition, one ``succeeded`` in its history, one job per text); every Idempotency-Key
still answers with its job; all of it within 60 s after the fault ends. Leases are 6 s
and the reconciler sweeps every second, so recovery does not wait on the broker's
visibility timeout (left at its default of an hour).

A summary line per round goes to the log (``-s`` or ``-rP`` shows it): submitted, 2xx,
succeeded, lost, duplicated, seconds to recover.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import requests
import soundfile
from conftest import ApiProcess

from scripts.embedded_redis import EmbeddedRedis
from tasks import keys

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
JOBS = 120
CLIENTS = 8
RECOVERY_SECONDS = 60.0
#: Lease and sweep for these rounds: short, so a lost worker costs seconds.
CHAOS_SETTINGS = {"TTS_LEASE_SECONDS": "6", "TTS_RECONCILE_INTERVAL": "1", "TTS_MAX_ATTEMPTS": "5"}
SENTENCES = ("The lighthouse keeper counted the ships as they passed the point.",
             "A cold wind came down from the hills before the evening bell.")


@dataclass
class Submitted:
    """One job a client got a 2xx for."""

    key: str
    body: dict[str, Any]
    job_id: str
    status_code: int
    tries: int


@dataclass
class Clients:
    """Client threads that submit ``JOBS`` jobs, each retried on 5xx with its Idempotency-Key."""

    base_url: Callable[[], str]
    round_name: str
    #: Seconds each client waits between two submits: about 4 s of submits, so they go on through the fault.
    pace: float = 0.25
    accepted: list[Submitted] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    five_xx: int = 0
    dropped: int = 0
    in_use: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def body(self, index: int) -> dict[str, Any]:
        """A unique two-sentence text (cache off, so every job is synthesized)."""
        text = f"{self.round_name} job {index}. {SENTENCES[index % 2]}"
        return {"text": text, "voice": "heart", "format": "wav", "cache": False}

    def submit(self, index: int) -> None:
        """Submit job ``index`` until the API answers 2xx (a 4xx is recorded as a refusal)."""
        key = f"chaos-{uuid.uuid4().hex}"
        body = self.body(index)
        deadline = time.monotonic() + 180
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            try:
                response = requests.post(f"{self.base_url()}/v1/jobs", json=body, timeout=10,
                                         headers={"Idempotency-Key": key})
            except requests.RequestException:
                with self.lock:
                    self.dropped += 1
                time.sleep(0.2)  # the client's retry backoff: the API is down or restarting
                continue
            if response.status_code >= 500:
                with self.lock:
                    self.five_xx += 1
                time.sleep(0.2)  # the client's retry backoff after a 5xx
                continue
            if response.status_code == 409 and response.json()["error"]["code"] == "idempotency_key_in_use":
                with self.lock:
                    self.in_use += 1
                time.sleep(float(response.headers["Retry-After"]))  # as the docs tell clients: wait, same key
                continue
            with self.lock:
                if response.status_code in (200, 202):
                    self.accepted.append(Submitted(key, body, response.json()["id"], response.status_code, tries))
                else:
                    self.refused.append(f"{response.status_code} {response.text[:200]}")
            return
        with self.lock:
            self.refused.append(f"job {index}: no 2xx within 180 s")

    def start(self) -> None:
        """Start the client threads (each takes every CLIENTS-th job)."""
        def run(first: int) -> None:
            for index in range(first, JOBS, CLIENTS):
                self.submit(index)
                if self.pace:
                    time.sleep(self.pace)  # pacing of the load, not synchronisation

        self.threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 240) -> None:
        """Wait for every client to finish submitting."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "clients still submitting"


@dataclass
class Round:
    """One chaos round: its Redis, stack, API and clients."""

    server: EmbeddedRedis
    stack: Any
    api: ApiProcess
    clients: Clients

    @property
    def redis(self) -> redis.Redis:
        """A client of the round's database (short timeouts: Redis may be down)."""
        return redis.Redis.from_url(self.stack.redis_url, socket_timeout=2, socket_connect_timeout=1)

    def statuses(self) -> dict[str, str]:
        """The status of every accepted job (``?`` while Redis does not answer)."""
        with self.clients.lock:
            ids = [s.job_id for s in self.clients.accepted]
        client = self.redis
        try:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            return {job_id: (raw.decode() if raw else "missing") for job_id, raw in zip(ids, pipe.execute())}
        except redis.RedisError:
            return dict.fromkeys(ids, "?")
        finally:
            client.close()

    def count(self, status: str) -> int:
        """Accepted jobs in ``status``."""
        return sum(1 for s in self.statuses().values() if s == status)

    def wait_until(self, probe: Callable[[], Any], timeout: float, what: str) -> None:
        """Poll ``probe`` until true, or fail with the logs."""
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                logs = "\n".join(w.log_tail(30) for w in self.stack.workers)
                raise AssertionError(f"{what}: not within {timeout:.0f} s; statuses "
                                     f"{_tally(self.statuses())}\n{self.api.log_tail(20)}\n{logs}")
            time.sleep(0.2)  # poll interval

    def mid_work(self) -> None:
        """Wait until jobs are being synthesized while clients still submit: some done, some running."""
        self.wait_until(lambda: self.count("succeeded") >= 8 and self.count("running") >= 1, 120,
                        "jobs running mid-work")
        assert len(self.clients.accepted) < JOBS, "every submit was answered before the fault: nothing to test"


def _tally(statuses: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in statuses.values():
        out[status] = out.get(status, 0) + 1
    return out


@pytest.fixture
def chaos(make_stack, tmp_path: Path) -> Iterator[Callable[[str], Round]]:
    """A factory of rounds, each on its own Redis (fsync always), with a worker and a gunicorn API."""
    made: list[Round] = []
    servers: list[EmbeddedRedis] = []

    def factory(name: str) -> Round:
        server = EmbeddedRedis(port=0, data_dir=tmp_path / f"redis-{name}", appendonly=True, appendfsync="always",
                               extra_args=("--databases", "64"))
        server.start()
        servers.append(server)
        stack = make_stack(server=server, **CHAOS_SETTINGS)
        api = ApiProcess(stack.env, tmp_path / f"api-{name}.log").start()  # killed below, whatever happens
        round_ = Round(server=server, stack=stack, api=api, clients=Clients(lambda: api.url, name))
        made.append(round_)
        return round_

    try:
        yield factory
    finally:
        for round_ in made:
            round_.api.kill()
            for worker in round_.stack.workers:
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
                if worker.proc is not None:  # children orphaned by a killed main process
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(worker.proc.pid, signal.SIGKILL)
        for server in servers:
            server.stop()


def _finish_and_check(round_: Round, fault_ended: float) -> dict[str, Any]:
    """Wait for every accepted job, then assert the contract; returns the round's figures."""
    clients = round_.clients
    clients.join()
    assert clients.refused == [], f"submits refused with a 4xx: {clients.refused[:5]}"
    round_.wait_until(lambda: all(s in ("succeeded", "failed", "cancelled") for s in round_.statuses().values()),
                      RECOVERY_SECONDS, "every accepted job final")
    recovered = time.monotonic() - fault_ended
    statuses = round_.statuses()
    client = round_.redis
    try:
        # exactly one success per job: one final state, one "succeeded" in its history
        histories = {job_id: [json.loads(e) for e in client.lrange(keys.job_history(job_id), 0, -1)]
                     for job_id in statuses}
        doubled = [job_id for job_id, h in histories.items()
                   if sum(1 for e in h if e.get("outcome") == "succeeded") != 1]
        # one job per text: no retry of the clients made a second job
        texts: dict[str, list[str]] = {}
        for job_id in (m.decode() for m in client.zrange(keys.JOBS_INDEX, 0, -1)):
            raw = client.hget(keys.job(job_id), "text")
            if raw is not None:
                texts.setdefault(raw.decode(), []).append(job_id)
    finally:
        client.close()
    duplicated = sum(len(ids) - 1 for ids in texts.values())
    lost = [job_id for job_id, s in statuses.items() if s != "succeeded"]
    figures = {"submitted": JOBS, "accepted_2xx": len(clients.accepted), "succeeded": len(statuses) - len(lost),
               "lost": len(lost), "duplicated": duplicated, "recovered_seconds": round(recovered, 1),
               "5xx_answers": clients.five_xx, "dropped_connections": clients.dropped,
               "409_in_use": clients.in_use,
               "attempts_lost": sum(1 for h in histories.values() for e in h if e.get("outcome") == "worker_lost"),
               "attempts": sum(1 for h in histories.values() for e in h
                               if e.get("outcome") in ("succeeded", "failed", "worker_lost"))}
    log.warning("chaos round %s: %s", clients.round_name, json.dumps(figures))
    print(f"chaos round {clients.round_name}: {json.dumps(figures)}")  # shown with -s / -rP
    assert len(clients.accepted) == JOBS
    assert lost == [], f"accepted jobs not succeeded: {_tally({j: statuses[j] for j in lost})}"
    assert doubled == [], f"{len(doubled)} jobs without exactly one success, e.g. {histories[doubled[0]]}"
    assert duplicated == 0, [ids for ids in texts.values() if len(ids) > 1][:3]
    assert recovered <= RECOVERY_SECONDS
    # every key still answers with its own job, and each audio decodes
    for sub in clients.accepted:
        again = requests.post(f"{round_.api.url}/v1/jobs", json=sub.body, headers={"Idempotency-Key": sub.key},
                              timeout=10)
        assert again.status_code == 200 and again.json()["id"] == sub.job_id, again.text
        audio = requests.get(f"{round_.api.url}/v1/jobs/{sub.job_id}/audio", timeout=10)
        assert audio.status_code == 200
        samples, rate = soundfile.read(io.BytesIO(audio.content))
        assert rate == 24000 and len(samples) > rate  # two sentences: over a second of speech
    return figures


@pytest.mark.both_brokers  # on RabbitMQ: workers give messages back while Redis is away (tasks.dead_letters)
def test_redis_sigkilled_mid_synthesis_and_restarted(chaos):
    round_ = chaos("redis-kill")
    round_.clients.start()
    round_.mid_work()
    round_.server.kill()
    time.sleep(5)  # the fault itself: Redis stays dead for 5 s
    round_.server.restart()
    _finish_and_check(round_, time.monotonic())


def test_redis_sigstopped_for_ten_seconds(chaos):
    round_ = chaos("redis-stop")
    round_.clients.start()
    round_.mid_work()
    pid = round_.server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(10)  # the fault itself: Redis frozen, longer than a lease
    finally:
        os.kill(pid, signal.SIGCONT)
    _finish_and_check(round_, time.monotonic())


@pytest.mark.both_brokers
def test_worker_main_process_sigkilled_and_a_new_worker_started(chaos):
    round_ = chaos("worker-main-kill")
    round_.clients.start()
    round_.mid_work()
    worker = round_.stack.workers[0]
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)  # the main process only: its children are orphaned
    worker.proc.wait(10)
    round_.stack.start_worker()
    _finish_and_check(round_, time.monotonic())


@pytest.mark.both_brokers
def test_one_worker_child_sigkilled(chaos):
    round_ = chaos("worker-child-kill")
    round_.clients.start()
    round_.mid_work()
    worker = round_.stack.workers[0]
    assert worker.proc is not None
    children = psutil.Process(worker.proc.pid).children()
    assert children, "the worker has no pool children"
    busiest = max(children, key=lambda c: c.cpu_times().user)
    busiest.send_signal(signal.SIGKILL)
    _finish_and_check(round_, time.monotonic())


def test_api_sigkilled_mid_submit_and_restarted(chaos):
    round_ = chaos("api-kill")
    round_.clients.start()
    round_.wait_until(lambda: 10 <= len(round_.clients.accepted) < JOBS - 20, 120, "submits under way")
    round_.api.kill()
    round_.api.start()  # same port: the clients' retries reach the new process
    _finish_and_check(round_, time.monotonic())
