"""The k8s target: manifests (Deployment, Service, HPA, PDB, ConfigMap, Secret), applied when kubectl has a context.

The cluster plays the balancer's part: the Service routes to ready pods only, the Deployment's rolling update
adds a ready pod before it retires one (``maxUnavailable: 0``), and the PodDisruptionBudget keeps a drain from
evicting the last replica. Pods meet the Pod Security "restricted" profile.
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
from prodai_cli.deploy.plan import CONTAINER_PORT, CONTAINER_UID, K8S_KEYS_FILE, DeployPlan
from prodai_cli.deploy.templates import render
from prodai_cli.errors import DeployError

if TYPE_CHECKING:
    from prodai_cli.config import Settings


# Seconds the pod gets past drain delay and grace period before the kubelet kills it (the process's own exit).
TERMINATION_MARGIN_S = 5
STARTUP_PROBE_PERIOD_S = 5
# The /tmp emptyDir (HOME and Prometheus' multiprocess files live there): bounded so a runaway writer is evicted
# instead of filling the node's disk.
TMP_SIZE = "512Mi"


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
    return {
        "deployment.yaml": render(
            "k8s/deployment.yaml.j2",
            **common,
            replicas=deploy_config.replicas,
            image=image,
            config_hash=plan.config_hash,
            container_port=CONTAINER_PORT,
            uid=CONTAINER_UID,
            environment=plan.environment,
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
    written = write_files(directory, k8s_manifests(plan, image=plan.tag))
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
