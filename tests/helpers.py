"""Plain helpers shared by tests (importable as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [str(d) for d in range(10)]
    + ["hello", "world", "good", "bad", "movie", "great", "terrible", "the", "a", "is", "was", "not", "very"]
    + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
)


def build_tiny_model(
    directory: Path, task: str = "text-classification", seed: int = 0, num_labels: int = 2, head_gain: float = 1.0
) -> Path:
    """Save a random 2-layer BERT (classification head or bare encoder) with a WordPiece tokenizer.

    A random head gives nearly equal logits whatever the text, so such a model answers one label for every
    input; ``head_gain`` scales the head's weights so that the label follows the text (two such models with
    other seeds then agree on some texts and disagree on others).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` and silently ignores `vocab_file` (4.x's name): given only
    # the file, it saved a tokenizer of the 5 special tokens, and every text became [UNK]s. Both are given.
    vocab = {token: index for index, token in enumerate(dict.fromkeys(VOCAB))}
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), vocab=vocab, model_max_length=128)
    labels = ["NEGATIVE", "POSITIVE", "NEUTRAL", "MIXED"][:num_labels]
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if task == "text-classification" else BertModel(config)
    if head_gain != 1.0 and isinstance(model, BertForSequenceClassification):
        # Scale the head, then centre each logit on its median over sample texts: the constant part of the
        # pooled output no longer decides, the text does (about half the sample goes to each label).
        import random

        rng = random.Random(seed)
        words = [token for token in VOCAB if not token.startswith("[")]
        sample = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 24))) for _ in range(256)]
        model.eval()
        with torch.no_grad():
            model.classifier.weight.mul_(head_gain)
            model.classifier.bias.zero_()
            logits = model(**tokenizer(sample, padding=True, return_tensors="pt")).logits
            model.classifier.bias.sub_(logits.median(dim=0).values)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@dataclass
class CliResult:
    """Outcome of one real `prodai` process."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run `python -m prodai_cli ARGS` as a real subprocess (exit codes and streams exactly as a user sees them)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PRODAI_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "prodai_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_same_predictions(got: Sequence[dict[str, Any]], want: Sequence[dict[str, Any]]) -> None:
    """Two runs' predictions agree: the same labels (confidences within 1e-6) or embeddings within 1e-6."""
    import pytest

    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if "label" in b:
            assert a["label"] == b["label"]
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-6)
        else:
            assert a["embedding"] == pytest.approx(b["embedding"], abs=1e-6)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real `redis-server` on 127.0.0.1:<port> without persistence, that tests can stop, restart and pause.

    `stop()` then `start()` brings it back on the same port and URL (empty: no persistence); `pause()` sends
    SIGSTOP (connections hang, as with an overloaded Redis) and `resume()` SIGCONT.
    """

    def __init__(
        self, port: int, workdir: Path, executable: str = "redis-server", extra_args: Sequence[str] = ()
    ) -> None:
        self.port = port
        self.workdir = workdir
        self.executable = executable
        self.extra_args = list(extra_args)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        import shutil
        import time

        exe = shutil.which(self.executable)
        if exe is None:
            raise RuntimeError(f"{self.executable} not found on PATH: run scripts/setup (it installs redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.workdir / 'redis.log'}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout} s")

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                # NOAUTH: up, but asks for a password (requirepass in extra_args).
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            import signal

            proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self):  # type: ignore[no-untyped-def]
        """A synchronous redis-py client, for inspecting keys in tests."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)


class Traffic:
    """A client that sends predictions to ``url`` from a thread until stopped, counting every failure.

    Roll-out tests run it across a redeploy, a rollback or a rolling update: a failure is anything but a
    200 (a refused connection, a reset, a 5xx), and ``versions`` counts which model version answered.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, pause_s: float = 0.02) -> None:
        import collections
        import threading

        self.url = url
        self.headers = headers or {}
        self.pause_s = pause_s
        self.ok = 0
        self.failures: list[str] = []
        self.versions: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    response = client.post(
                        f"{self.url}/predict",
                        json={"text": f"hello world {n}"},
                        headers={"X-User-ID": f"traffic-{n}", **self.headers},
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    if response.status_code == 200:
                        self.ok += 1
                        self.versions[response.headers.get("x-model-version", "?")] += 1
                    else:
                        self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                self._stop.wait(self.pause_s)

    @property
    def total(self) -> int:
        """Requests sent so far."""
        return self.ok + len(self.failures)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def site_packages_without_torch(target: Path) -> Path:
    """A copy of this venv's site-packages made of links to everything but torch (and functorch, torchgen, nvidia).

    Run with :func:`run_without_torch`: to Python and to transformers' probes torch is simply absent, as in an
    install without the torch extra.
    """
    import torch

    site = Path(torch.__file__).resolve().parents[1]
    target.mkdir()
    for entry in site.iterdir():
        if entry.name.lower().startswith(("torch", "functorch", "nvidia")):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def run_without_torch(site: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -S ARGS`` over ``site`` (from :func:`site_packages_without_torch`) and this tree's prodai_cli."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODAI_", "PYTHON"))}
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{site}"
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
