"""The wheelhouse: every Python package the image installs, downloaded on the host, so the build needs no network.

Versions are pinned to what this machine runs (the image serves with the code that was tested here), wheels
are chosen for the image's platform and Python (``pip download --platform ... --only-binary=:all:``), and
the result is cached per requirement set under ``$PRODAI_CACHE_DIR`` (default ``~/.cache/prodai``).
prodai itself goes in as a wheel built from the installed package, installed with ``--no-deps``: the server
needs none of the registry's heavy dependencies (mlflow).

The ``onnx`` variant (every baked version an ONNX export) installs onnxruntime and no torch: transformers
runs without it (tokenizer and config), and nothing on the server's path of an ONNX version imports it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from prodai_cli.errors import DeployError

# What the server imports at run time, and nothing else (no mlflow, jinja2, docker, locust); torch and
# onnxruntime are added per variant (runtime_requirements).
SERVER_PACKAGES = (
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "ruamel.yaml",
    "pyyaml",
    "typer",
    "rich",
    "prometheus-client",
    "hiredis",
    "httpx",
    # /docs serves Swagger UI's assets from this package (prodai_cli/serving/docs.py): no CDN, works offline.
    "swagger-ui-bundle",
)
# Added when the deployment runs job workers (`prodai worker`, and the server's Celery producer): Celery with
# its Redis transport. Its own dependencies (kombu, billiard, click...) come through the constraints.
JOBS_PACKAGES = ("celery", "redis")
# The server of a torch image (the default and the names a prodai wheel of the cpu/cuda variants requires).
RUNTIME_PACKAGES = ("torch", *SERVER_PACKAGES)
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
ENV_CACHE_DIR = "PRODAI_CACHE_DIR"
WHEELHOUSE_FORMAT = "2"  # bump when what a wheelhouse holds changes, so old caches are not reused
_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same code gives the same wheel, so Docker reuses its layer

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Wheelhouse:
    """A downloaded set of wheels and the requirements file that installs them."""

    directory: Path
    requirements: str
    key: str
    cached: bool

    @property
    def size_bytes(self) -> int:
        """Total size of the wheels."""
        return sum(p.stat().st_size for p in self.directory.glob("*.whl"))


def cache_dir() -> Path:
    """The per-user cache: ``$PRODAI_CACHE_DIR``, else ``$XDG_CACHE_HOME/prodai``, else ``~/.cache/prodai``."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prodai"


def image_platforms(glibc_minor: int = 36) -> list[str]:
    """The wheel platform tags the image accepts: manylinux up to Debian bookworm's glibc (2.36), this architecture.

    pip does not expand ``manylinux_2_36`` to the older tags a glibc 2.36 system also runs, so every one is named.
    """
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    tags += [f"{alias}_{arch}" for alias, minor in legacy.items() if minor <= glibc_minor]
    return tags


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_requirement(variant: str) -> tuple[str, list[str]]:
    """The torch pin for the image and any extra index it needs.

    The CPU variant must get the CPU build (the default Linux wheel on PyPI bundles CUDA: gigabytes); the
    CUDA variant gets PyPI's default build. The version is this machine's.
    """
    version = _installed("torch")
    if version is None:
        return ("torch", [CPU_TORCH_INDEX] if variant == "cpu" else [])
    base, _, local = version.partition("+")
    if variant == "cpu":
        if local == "cpu":
            return (f"torch=={version}", [])
        return (f"torch=={base}+cpu", [CPU_TORCH_INDEX])
    return (f"torch=={base}", [])


def image_packages(variant: str, *, onnx: bool = False, jobs: bool = False) -> tuple[str, ...]:
    """The distributions the image needs: :data:`SERVER_PACKAGES`, torch, onnxruntime, Celery as needed.

    torch unless the variant is ``onnx``; onnxruntime for that variant and when ``onnx`` (an ONNX version is
    baked into a torch image); :data:`JOBS_PACKAGES` when ``jobs`` (the image runs job workers).
    """
    packages = SERVER_PACKAGES if variant == "onnx" else RUNTIME_PACKAGES
    if onnx or variant == "onnx":
        packages = (*packages, "onnxruntime")
    return (*packages, *JOBS_PACKAGES) if jobs else packages


def runtime_requirements(variant: str, *, onnx: bool = False, jobs: bool = False) -> tuple[str, list[str]]:
    """The requirements file of the image (pinned to this machine's versions) and extra indexes.

    Args:
        variant: ``cpu`` or ``cuda`` (torch's build), or ``onnx`` (no torch).
        onnx: Add onnxruntime (an ONNX version is baked into a torch image).
        jobs: Add Celery and redis-py (the image runs job workers).

    """
    lines: list[str] = []
    indexes: list[str] = []
    for name in image_packages(variant, onnx=onnx, jobs=jobs):
        if name == "torch":
            torch_line, indexes = torch_requirement(variant)
            lines.append(torch_line)
            continue
        version = _installed(name)
        lines.append(f"{name}=={version}" if version else name)
    return "\n".join(lines) + "\n", indexes


def _constraints(exclude: set[str]) -> str:
    """Pins of every distribution installed here, so transitive dependencies match this machine too."""
    lines = set()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        key = name.lower().replace("_", "-")
        if not name or key in exclude or "+" in dist.version:
            continue
        lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def build_wheelhouse(
    variant: str,
    *,
    onnx: bool = False,
    progress: Progress | None = None,
    python_version: str = "3.11",
    jobs: bool = False,
) -> Wheelhouse:
    """Download the runtime wheels for the image (cached: a second call with the same pins is free).

    Args:
        variant: ``cpu`` or ``cuda`` (which torch build), or ``onnx`` (no torch).
        onnx: Add onnxruntime to a torch image (an ONNX version is among the baked ones).
        progress: Called with each line pip prints.
        python_version: The image's Python, ``MAJOR.MINOR``.
        jobs: Add Celery and redis-py (the image runs job workers).

    Raises:
        DeployError: pip could not download a wheel (its last lines are in the message).

    """
    requirements, indexes = runtime_requirements(variant, onnx=onnx, jobs=jobs)
    constraints = _constraints({"prodai", "torch"})
    platforms = image_platforms()
    abi = "cp" + python_version.replace(".", "")
    key_material = "\n".join([WHEELHOUSE_FORMAT, requirements, constraints, *platforms, abi, *indexes])
    key = hashlib.sha256(key_material.encode("utf-8")).hexdigest()[:20]
    target = cache_dir() / "wheelhouse" / f"{variant}-{key}"
    if (target / "requirements.txt").is_file():
        return Wheelhouse(target, requirements, key, cached=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        (staging / "constraints.txt").write_text(constraints, encoding="utf-8")
        (staging / "requested.txt").write_text(requirements, encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--only-binary=:all:",
            *[f"--platform={tag}" for tag in platforms],
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--abi",
            abi,
            "-d",
            str(staging),
            "-r",
            str(staging / "requested.txt"),
            "-c",
            str(staging / "constraints.txt"),
        ]
        for index in indexes:
            command += ["--extra-index-url", index]
        _run_pip(command, progress)
        # pip evaluates environment markers for *this* interpreter, not the image's: a dependency only older
        # 3.11 releases need (async-timeout for Python < 3.11.3, Debian bookworm has 3.11.2) is fetched here.
        for _ in range(5):
            missing = missing_requirements(staging, python_version)
            if not missing:
                break
            (staging / "missing.txt").write_text("\n".join(missing) + "\n", encoding="utf-8")
            _run_pip(
                [*command[: command.index("-r")], "-r", str(staging / "missing.txt"), *command[command.index("-c") :]],
                progress,
            )
        # Written last: its presence marks a complete wheelhouse.
        (staging / "requirements.txt").write_text(requirements, encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Wheelhouse(target, requirements, key, cached=False)


def missing_requirements(directory: Path, python_version: str) -> list[str]:
    """Requirements of the wheels in ``directory`` that no wheel there satisfies, for the image's Python.

    Markers are evaluated for the oldest release of ``python_version`` on Linux, so a dependency that any
    3.11 image could need is included (an unused wheel costs nothing: pip installs only what it needs).
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    machine = platform.machine().lower()
    environment = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_machine": {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine),
        "extra": "",
    }
    wheels = sorted(directory.glob("*.whl"))
    present = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    missing: set[str] = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            meta_name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
            if meta_name is None:
                continue
            meta = archive.read(meta_name).decode("utf-8", errors="replace")
        for line in meta.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            try:
                requirement = Requirement(line.partition(":")[2].strip())
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in present:
                requirement.marker = None
                missing.add(str(requirement))
    return sorted(missing)


def _run_pip(command: list[str], progress: Progress | None) -> None:
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if progress is not None and line:
                progress(line)
        code = proc.wait()
    if code != 0:
        raise DeployError(
            "Downloading the image's wheels failed:\n" + "\n".join(tail),
            hint="The wheelhouse is built on this machine; check its access to the package index",
        )


# ------------------------------------------------------------------------------------------- prodai wheel


def build_prodai_wheel(directory: Path, requires: tuple[str, ...] = RUNTIME_PACKAGES) -> Path:
    """Write a wheel of the installed prodai package into ``directory`` (no build backend, no source tree).

    Works the same whether prodai was installed from a wheel or in editable mode: it packs the files of
    the imported ``prodai_cli`` package (templates included), with fixed timestamps so unchanged code
    makes a byte-identical wheel. ``requires`` are its ``Requires-Dist`` names (what the image installs).

    Returns:
        The wheel's path.

    """
    import prodai_cli

    version = prodai_cli.__version__
    package_dir = Path(prodai_cli.__file__).resolve().parent
    dist_info = f"prodai-{version}.dist-info"
    wheel_path = directory / f"prodai-{version}-py3-none-any.whl"
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, bytes]] = []
    for path in sorted(package_dir.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
            continue
        entries.append((f"prodai_cli/{path.relative_to(package_dir).as_posix()}", path.read_bytes()))
    requires_dist = "".join(f"Requires-Dist: {name}\n" for name in requires)
    header = f"Metadata-Version: 2.1\nName: prodai\nVersion: {version}\nRequires-Python: >=3.11\n"
    entries.append(
        (
            f"{dist_info}/METADATA",
            (header + requires_dist).encode(),
        )
    )
    entries.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: prodai-deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    entries.append((f"{dist_info}/entry_points.txt", b"[console_scripts]\nprodai = prodai_cli.cli:main\n"))
    record_lines = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in entries]
    record_lines.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode()))
    with zipfile.ZipFile(wheel_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel_path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
