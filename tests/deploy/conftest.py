"""Fixtures of the deploy tests: a real Docker engine (skipped locally without one, a failure in CI), the
offline base image, one wheelhouse per session, and project copies configured for containers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

BASE_IMAGE = "prodai-base:bookworm"
REQUIRE_DOCKER = "PRODAI_REQUIRE_DOCKER"


def _unavailable(reason: str) -> None:
    # CI sets PRODAI_REQUIRE_DOCKER=1: there a missing engine is a failure, never a silent skip.
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{reason} (PRODAI_REQUIRE_DOCKER=1: docker tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A Docker SDK client on a live engine that holds the offline base image."""
    from prodai_cli.deploy import containers as engine
    from prodai_cli.errors import DeployError

    try:
        client = engine.docker_client()
    except DeployError as exc:
        _unavailable(f"no Docker engine: {exc.message}")
    if engine.image_info(client, BASE_IMAGE) is None:
        _unavailable(f"the base image {BASE_IMAGE} is missing (scripts/setup-system builds it)")
    return client


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheelhouse cache for the whole session (the first deploy downloads, the rest reuse it)."""
    return tmp_path_factory.mktemp("prodai-cache")


@pytest.fixture
def deploy_env(wheel_cache: Path) -> dict[str, str]:
    """Environment for `prodai deploy` in tests: loopback only, the offline base image, the session cache."""
    return {
        "PRODAI_CACHE_DIR": str(wheel_cache),
        "PRODAI_DEPLOY__HOST": "127.0.0.1",
        "PRODAI_DEPLOY__BASE_IMAGE": BASE_IMAGE,
        "PRODAI_DEPLOY__READINESS_TIMEOUT_S": "120",
    }


@pytest.fixture
def container_project(registered_copy: Path) -> Path:
    """`registered_copy`, readable by the image's non-root user (pytest's temp dirs are 0700)."""
    open_for_container(registered_copy)
    return registered_copy


def open_for_container(project: Path) -> None:
    """Make a project directory and its config readable by others (the container's user)."""
    project.chmod(0o755)
    for path in project.glob("*.yaml"):
        path.chmod(0o644)
