"""Batch jobs over HTTP: records and results in files, run by the server or by Celery workers (``prodai worker``).

- :mod:`.store`: one directory per job (record, input, results, errors, manifest), atomic and locked updates;
- :mod:`.runner`: runs a job with the batch engine and resumable writer of ``prodai batch``;
- :mod:`.submit`: pins the model version, checks the per-key quota, creates and enqueues a job;
- :mod:`.embedded`: the default backend, a low-priority child process of the server per job;
- :mod:`.celery_app`: the Celery backend (Redis broker, late acks, visibility timeout) and ``prodai worker``.

The HTTP routes live in :mod:`prodai_cli.serving.jobs_routes` (the server imports this package, not the
other way round).
"""

from __future__ import annotations
