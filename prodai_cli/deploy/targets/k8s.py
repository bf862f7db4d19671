"""The k8s target: manifests (Deployment, Service, HPA, PDB, ConfigMap, Secret), applied when kubectl has a context.

The cluster plays the balancer's part: the Service routes to ready pods only, the Deployment's rolling update
adds a ready pod before it retires one (``maxUnavailable: 0``), and the PodDisruptionBudget keeps a drain from
evicting the last replica. Pods meet the Pod Security "restricted" profile.

With ``deploy.workers: N`` the server hands its jobs to ``prodai worker`` pods through Celery on the Redis the
config names (``jobs.redis_url`` or ``redis_url``; the cluster runs it, prodai does not): a worker Deployment,
a ReadWriteMany PersistentVolumeClaim both mount as the jobs directory, and an HPA that scales the workers
between ``deploy.workers`` and ``deploy.max_workers`` on the External metric :data:`BACKLOG_METRIC` (jobs
queued or running, from the servers' ``/metrics`` through prometheus-adapter; docs/jobs.md has its rule).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from prodai_cli.deploy import records
from prodai_cli.deploy.containers import BuiltImage
from prodai_cli.deploy.outcome import DeployResult, files_record, write_files
from prodai_cli.deploy.plan import (
    CONTAINER_JOBS_DIR,
    CONTAINER_PORT,
    CONTAINER_UID,
    K8S_KEYS_FILE,
    DeployPlan,
    worker_environment,
)
from prodai_cli.deploy.templates import render
from prodai_cli.errors import ConfigError, DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings


# Seconds the pod gets past drain delay and grace period before the kubelet kills it (the process's own exit).
TERMINATION_MARGIN_S = 5
STARTUP_PROBE_PERIOD_S = 5
# The /tmp emptyDir (HOME and Prometheus' multiprocess files live there): bounded so a runaway writer is evicted
# instead of filling the node's disk.
TMP_SIZE = "512Mi"
# The External metric the worker HPA reads: jobs queued or running (prometheus-adapter's rule in docs/jobs.md).
# Not queued jobs alone: when the queue empties, that would scale away workers that are still running jobs.
BACKLOG_METRIC = "prodai_jobs_backlog"
# Jobs per worker the HPA aims at: one (a worker runs one job at a time).
JOBS_PER_WORKER = 1
# A stopped worker's running job gets this long to finish (Celery's warm shutdown); past it the job resumes on
# another worker after jobs.visibility_timeout_s.
WORKER_TERMINATION_GRACE_S = 60
# The HPA removes at most one worker a minute, after five quiet minutes: a burst of short jobs does not churn pods.
SCALE_DOWN_WINDOW_S = 300
WORKER_FILES = frozenset({"jobs-pvc.yaml", "worker-deployment.yaml", "worker-hpa.yaml"})


def termination_grace_s(settings: Settings) -> int:
    """terminationGracePeriodSeconds: the server's drain delay plus its grace period, plus a margin."""
    serving = settings.config.serving
    return math.ceil(serving.drain_delay_s + serving.grace_period_s) + TERMINATION_MARGIN_S


def min_available(replicas: int) -> int:
    """The PodDisruptionBudget's minAvailable: one pod at a time may go, never the last one.

    With one replica this blocks voluntary evictions (a node drain waits) until a second pod runs: the price
    of never going dark; run ``deploy.replicas: 2`` or more to let drains proceed.
    """
    return max(1, replicas - 1)


def k8s_manifests(plan: DeployPlan, *, image: str) -> dict[str, str]:
    """The Kubernetes manifests by file name: Deployment, Service, HPA, PDB, ConfigMap, Secret."""
    deploy_config = plan.settings.config.deploy
    labels = {
        "app.kubernetes.io/name": "prodai",
        "app.kubernetes.io/instance": plan.name,
        "app.kubernetes.io/managed-by": "prodai",
        "prodai.dev/model": _label_value(plan.model),
        "prodai.dev/model-versions": _label_value("-".join(str(v) for v in plan.versions)),
    }
    common = {"name": plan.name, "namespace": deploy_config.namespace, "labels": labels}
    config_text = plan.config_text(keys_file=K8S_KEYS_FILE)
    workers = deploy_config.workers
    if workers:
        require_worker_redis(plan.settings)
    # Without workers the server runs jobs itself (the embedded backend): its jobs directory is a pod-local
    # emptyDir, since the root filesystem is read-only. With workers it is the claim they share.
    jobs_environment = worker_environment() if workers else {"PRODAI_JOBS__DIR": CONTAINER_JOBS_DIR}
    manifests = {
        "deployment.yaml": render(
            "k8s/deployment.yaml.j2",
            **common,
            replicas=deploy_config.replicas,
            image=image,
            config_hash=plan.config_hash,
            container_port=CONTAINER_PORT,
            uid=CONTAINER_UID,
            environment={**jobs_environment, **plan.environment},
            jobs_dir=CONTAINER_JOBS_DIR,
            jobs_shared=bool(workers),
            jobs_size=deploy_config.jobs_volume_size,
            cpu=deploy_config.cpu,
            memory=deploy_config.memory,
            gpu=plan.gpu,
            termination_grace_s=termination_grace_s(plan.settings),
            startup_period_s=STARTUP_PROBE_PERIOD_S,
            startup_failures=math.ceil(deploy_config.readiness_timeout_s / STARTUP_PROBE_PERIOD_S),
            tmp_size=TMP_SIZE,
        ),
        "service.yaml": render("k8s/service.yaml.j2", **common),
        "pdb.yaml": render("k8s/pdb.yaml.j2", **common, min_available=min_available(deploy_config.replicas)),
        "hpa.yaml": render(
            "k8s/hpa.yaml.j2",
            **common,
            replicas=deploy_config.replicas,
            max_replicas=max(deploy_config.max_replicas, deploy_config.replicas),
            cpu_target_percent=70,
        ),
        "configmap.yaml": render("k8s/configmap.yaml.j2", **common, config_text=config_text),
        "secret.yaml": render("k8s/secret.yaml.j2", **common, keys_text=plan.keys_text()),
    }
    if workers:
        manifests.update(_worker_manifests(plan, image=image, labels=labels, environment=jobs_environment))
    return manifests


def require_worker_redis(settings: Settings) -> None:
    """Job workers need a broker the pods reach; the k8s target does not run one (compose does).

    Raises:
        ConfigError: Neither ``jobs.redis_url`` nor ``redis_url`` is set.

    """
    config = settings.config
    if not (config.jobs.redis_url or config.redis_url):
        raise ConfigError(
            "deploy.workers needs a Redis the server and worker pods reach (the k8s target runs none)",
            hint="Set jobs.redis_url in prodai.yaml, e.g. redis://redis.default.svc.cluster.local:6379/1",
        )


def _worker_manifests(
    plan: DeployPlan, *, image: str, labels: dict[str, str], environment: dict[str, str]
) -> dict[str, str]:
    """The worker Deployment, its HPA on the jobs backlog, and the jobs volume it shares with the server."""
    deploy_config = plan.settings.config.deploy
    worker_name = f"{plan.name}-worker"
    # Their own instance label: the server's Service, PDB and Deployment select app.kubernetes.io/instance=NAME
    # (immutable on a running Deployment), and must never pick up a worker pod.
    worker_labels = {
        **labels,
        "app.kubernetes.io/instance": worker_name,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": plan.name,
    }
    common = {"namespace": deploy_config.namespace}
    return {
        "jobs-pvc.yaml": render(
            "k8s/jobs-pvc.yaml.j2",
            **common,
            name=f"{plan.name}-jobs",
            labels=labels,
            size=deploy_config.jobs_volume_size,
            storage_class=deploy_config.jobs_storage_class,
        ),
        "worker-deployment.yaml": render(
            "k8s/worker-deployment.yaml.j2",
            **common,
            name=worker_name,
            server_name=plan.name,
            labels=worker_labels,
            replicas=deploy_config.workers,
            image=image,
            config_hash=plan.config_hash,
            uid=CONTAINER_UID,
            environment={**environment, **plan.environment},
            jobs_dir=CONTAINER_JOBS_DIR,
            cpu=deploy_config.cpu,
            memory=deploy_config.memory,
            gpu=plan.gpu,
            termination_grace_s=WORKER_TERMINATION_GRACE_S,
            tmp_size=TMP_SIZE,
        ),
        "worker-hpa.yaml": render(
            "k8s/worker-hpa.yaml.j2",
            **common,
            name=worker_name,
            server_name=plan.name,
            labels=worker_labels,
            min_replicas=deploy_config.workers,
            max_replicas=max(deploy_config.max_workers, deploy_config.workers),
            metric=BACKLOG_METRIC,
            jobs_per_worker=JOBS_PER_WORKER,
            scale_down_window_s=SCALE_DOWN_WINDOW_S,
        ),
    }


def _label_value(text: str) -> str:
    import re

    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or "none"


def kubectl_context() -> str | None:
    """The current kubectl context, or None when kubectl or a context is missing."""
    if not shutil.which("kubectl"):
        return None
    result = subprocess.run(
        ["kubectl", "config", "current-context"], capture_output=True, text=True, check=False, timeout=30
    )
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def deploy_k8s(
    settings: Settings, plan: DeployPlan, image: BuiltImage | None, context_dir: Path | None
) -> DeployResult:
    """Write the manifests and ``kubectl apply`` them when kubectl has a context."""
    directory = settings.state_dir / "k8s" / plan.name
    manifests = k8s_manifests(plan, image=plan.tag)
    for stale in WORKER_FILES - set(manifests):
        # Workers switched off: `kubectl apply -f DIR` must not bring them back (nor does it remove them).
        (directory / stale).unlink(missing_ok=True)
    written = write_files(directory, manifests)
    context = kubectl_context()
    started = False
    steps = []
    if context is not None:
        result = subprocess.run(
            ["kubectl", "apply", "-f", str(directory)], capture_output=True, text=True, check=False, timeout=300
        )
        if result.returncode != 0:
            raise DeployError(f"kubectl apply (context {context}) failed:\n{result.stderr.strip()[-2000:]}")
        started = True
        steps.append(f"kubectl -n {settings.config.deploy.namespace} rollout status deployment/{plan.name}")
    else:
        steps.append(f"Push {plan.tag} to a registry your cluster pulls from, then: kubectl apply -f {directory}")
    if settings.config.deploy.workers:
        steps.append(
            f"Job workers scale on the External metric {BACKLOG_METRIC}: install prometheus-adapter with the "
            "rule in docs/jobs.md (without it the HPA keeps deploy.workers pods)"
        )
    if settings.config.deploy.replicas == 1:
        steps.append(
            "One replica: its PodDisruptionBudget makes a node drain wait until a second pod runs "
            "(set deploy.replicas: 2 to let drains proceed)"
        )
    namespace = settings.config.deploy.namespace
    url = f"http://{plan.name}.{namespace}.svc.cluster.local"
    record = files_record(plan, image, "k8s", url, directory)
    record.status = "applied" if started else "written"
    records.save(settings, record)
    return DeployResult(record, plan, context_dir, image, files=written, started=started, next_steps=steps)
