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
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from prodai_cli.errors import ConfigError, JobError, JobNotFoundError
from prodai_cli.jobs.runner import JobBusy, execute
from prodai_cli.jobs.store import JobStore
from prodai_cli.jobs.submit import jobs_dir

if TYPE_CHECKING:
    from celery import Celery

    from prodai_cli.config import Settings

TASK_NAME = "prodai.jobs.run"
QUEUE = "prodai-jobs"
BUSY_RETRY_S = 5


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
            execute(store, job_id, settings)
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

    def close(self) -> None:
        """Nothing to stop: workers are separate processes."""


def run_worker(settings: Settings, *, hostname: str | None = None, loglevel: str = "INFO") -> None:
    """Run a Celery worker for this project's jobs until it is stopped (``prodai worker``)."""
    app = make_celery(settings)
    name = hostname or f"prodai@{socket.gethostname()}"
    app.worker_main(["worker", "--pool=solo", f"--loglevel={loglevel}", "-Q", QUEUE, "-n", name, "--without-gossip"])
