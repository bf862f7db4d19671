"""The Celery backend: the server queues job ids in Redis, ``prodai worker`` processes run them.

Only the job id travels through Redis; inputs, results and progress live in the jobs directory (which the
server and every worker must share), never in the result backend.

Exactly once, even when a worker is SIGKILLed mid-job:

- ``task_acks_late``: a job's message is acknowledged only after its run ends, so a worker that dies holding
  it leaves it unacknowledged; Redis's ``visibility_timeout`` (``jobs.visibility_timeout_s``) then hands
  it to another worker, whose runner resumes after the last line the dead one committed (the batch
  writer's manifest);
- a second delivery while the first runner is alive (a job longer than the visibility timeout) finds the
  job's ``run.lock`` held and is retried later, so the message exists until the job has ended;
- a delivery of a job that has already ended does nothing.

Workers use Celery's ``solo`` pool: one job per worker process, each process with its own model and torch
threads; run more workers (on this machine or others) for more throughput.

Worker count (``prodai_jobs_workers``): each worker keeps a key ``prodai:jobs:worker:<name>:<pid>`` alive in Redis
from a thread of its own (:class:`Heartbeat`, every :data:`HEARTBEAT_S`, expiring after :data:`ALIVE_S`), and
the server counts those keys in the background (:class:`WorkerCounter`). Not Celery's ping or its heartbeat
events: the solo pool runs a job in the thread that would answer them, so a busy worker would look gone.
A stopped worker deletes its key at once; a killed one drops out after :data:`ALIVE_S`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ConfigError, JobError, JobNotFoundError
from prodai_cli.jobs.runner import JobBusy, execute
from prodai_cli.jobs.store import JobStore
from prodai_cli.jobs.submit import jobs_dir

if TYPE_CHECKING:
    from celery import Celery

    from prodai_cli.config import Settings

logger = logging.getLogger("prodai.jobs")

TASK_NAME = "prodai.jobs.run"
QUEUE = "prodai-jobs"
BUSY_RETRY_S = 5
WORKER_KEY_PREFIX = "prodai:jobs:worker:"
HEARTBEAT_S = 5.0
ALIVE_S = 3 * HEARTBEAT_S  # a worker missing three beats in a row is gone
MAX_COUNTED = 10_000  # keys one count looks at (a bound, far above any real fleet)


def redis_url(settings: Settings) -> str:
    """``jobs.redis_url``, else the top-level ``redis_url``.

    Raises:
        ConfigError: Neither is set.

    """
    url = settings.config.jobs.redis_url or settings.config.redis_url
    if not url:
        raise ConfigError(
            "jobs.backend is celery but no Redis is configured",
            hint="Set jobs.redis_url (or redis_url) in prodai.yaml, e.g. redis://127.0.0.1:6379/1",
        )
    return url


def make_celery(settings: Settings) -> Celery:
    """The Celery app of this project: Redis broker and result backend, late acks, the run task."""
    from celery import Celery

    url = redis_url(settings)
    app = Celery("prodai", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the jobs directory, never in the result backend
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.config.jobs.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # `celery inspect` and Flower see the workers
    )
    store = JobStore(jobs_dir(settings))

    @app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True)  # type: ignore[untyped-decorator]
    def run_job(task: Any, job_id: str) -> None:
        try:
            execute(store, job_id, settings, worker=task.request.hostname)
        except JobBusy:
            # Another worker runs it: keep a message alive until the job ends (the retry is queued before
            # this delivery is acknowledged).
            raise task.retry(countdown=BUSY_RETRY_S) from None
        except JobNotFoundError:
            return  # removed after jobs.keep_days, or a stray id: nothing to do

    return app


class CeleryQueue:
    """Enqueue jobs for ``prodai worker`` processes through Redis."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.counter = WorkerCounter(redis_url(settings))

    def enqueue(self, job_id: str) -> None:
        """Send the job's id to the queue.

        Raises:
            JobError: Redis cannot be reached.

        """
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=QUEUE)
        except Exception as exc:  # kombu's OperationalError and friends: Redis down
            raise JobError(f"Cannot queue the job: Redis is unreachable ({type(exc).__name__})") from None

    def queue_length(self) -> int | None:
        """Messages waiting in Redis (None when Redis cannot be asked)."""
        try:
            with self.app.connection_for_write() as connection:
                client = connection.default_channel.client
                return int(client.llen(QUEUE))
        except Exception:
            return None

    def cancelled(self, job_id: str) -> None:
        """Nothing to send: the worker running the job reads the cancel from the job's record."""

    def worker_count(self) -> int | None:
        """Live workers, as last counted in the background (None until Redis answered once)."""
        return self.counter.count

    def close(self) -> None:
        """Stop counting workers (the workers themselves are separate processes)."""
        self.counter.stop()


def _redis_client(url: str) -> Any:
    import redis

    # Short timeouts: a beat or a count that cannot reach Redis is skipped, never stuck.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)


class Heartbeat:
    """Keeps ``prodai:jobs:worker:<name>`` alive in Redis while this worker process runs (a thread of its own).

    Args:
        url: The jobs Redis.
        name: The worker's Celery node name.
        interval_s: Seconds between beats; the key lives three of them.

    """

    def __init__(self, url: str, name: str, *, interval_s: float = HEARTBEAT_S) -> None:
        # The pid too: two workers started with one name on one machine are still two workers.
        self.key = f"{WORKER_KEY_PREFIX}{name}:{os.getpid()}"
        self.interval_s = interval_s
        self._client = _redis_client(url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prodai-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat now and then every ``interval_s`` until :meth:`stop`."""
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and delete the key: the worker stops counting at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)
        with contextlib.suppress(Exception):
            self._client.delete(self.key)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def _beat(self) -> None:
        try:
            self._client.set(self.key, "1", px=int(3 * self.interval_s * 1000))
        except Exception as exc:  # Redis away for a moment: the next beat tries again
            logger.warning("worker heartbeat failed: %s", type(exc).__name__)


def count_workers(client: Any) -> int:
    """Live workers: the heartbeat keys Redis still holds (at most :data:`MAX_COUNTED` are looked at)."""
    count = 0
    for _key in client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500):
        count += 1
        if count >= MAX_COUNTED:
            break
    return count


class WorkerCounter:
    """Counts live workers every :data:`HEARTBEAT_S` in a thread, so ``/metrics`` reads a number, not Redis.

    Args:
        url: The jobs Redis.
        interval_s: Seconds between counts.

    """

    def __init__(self, url: str, *, interval_s: float = HEARTBEAT_S) -> None:
        self.count: int | None = None
        self.interval_s = interval_s
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prodai-worker-count", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        client = _redis_client(self._url)
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # Redis away: keep the last count
                self.count = count_workers(client)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """End the counting thread."""
        self._stop.set()
        self._thread.join(timeout=10)


def run_worker(settings: Settings, *, hostname: str | None = None, loglevel: str = "INFO") -> None:
    """Run a Celery worker for this project's jobs until it is stopped (``prodai worker``)."""
    app = make_celery(settings)
    name = hostname or f"prodai@{socket.gethostname()}"
    heartbeat = Heartbeat(redis_url(settings), name)
    heartbeat.start()
    try:
        app.worker_main(
            ["worker", "--pool=solo", f"--loglevel={loglevel}", "-Q", QUEUE, "-n", name, "--without-gossip"]
        )
    finally:
        heartbeat.stop()
