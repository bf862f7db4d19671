"""How a `prodai` process ends once torch is loaded: the exit code, output, threads and atexit callbacks as a
normal exit, without the interpreter's module teardown (about a second with torch; see cli.exit_process).

Each case is a real child process entering the CLI the way `python -m prodai_cli` does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path

    out = Path(sys.argv[1])
    atexit.register(lambda: (out / "atexit").write_text("ran"))

    def late() -> None:
        time.sleep(0.3)
        (out / "thread").write_text("done")

    threading.Thread(target=late).start()  # not a daemon: a normal exit waits for it
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)  # an idle worker, stopped only by threading's exit hooks (as MLflow leaves one)
    pool.submit(lambda: None).result()

    class Teardown:
        def __del__(self) -> None:
            (out / "teardown").write_text("ran")

    kept = Teardown()  # freed only by the interpreter's module teardown
    if sys.argv[2] == "torch":
        import torch  # noqa: F401
    sys.stdout.write("partial line without a newline")  # buffered: must still be flushed
    sys.argv = ["prodai", *sys.argv[3:]]
    from prodai_cli.cli import main

    main()
    """
)


def _run(tmp_path: Path, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("args", "code"), [(["--version"], 0), (["no-such-command"], 2)])
def test_with_torch_loaded_the_exit_keeps_every_promise_and_skips_the_teardown(
    tmp_path: Path, args: list[str], code: int
) -> None:
    result = _run(tmp_path, "torch", *args)
    assert result.returncode == code, result.stderr
    assert result.stdout.startswith("partial line without a newline")
    if code == 0:
        assert "prodai " in result.stdout  # the command's own output, flushed
    else:
        assert "no-such-command" in result.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"  # joined before the process ended
    assert not (tmp_path / "teardown").exists()  # the slow part: skipped


def test_without_torch_the_process_exits_the_usual_way(tmp_path: Path) -> None:
    result = _run(tmp_path, "light", "no-such-command")
    assert result.returncode == 2
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "teardown").read_text() == "ran"  # the interpreter's own finalization ran


def test_a_message_exit_prints_it_and_exits_1(tmp_path: Path) -> None:
    code = "import torch\nfrom prodai_cli.cli import exit_process\nexit_process('gone wrong')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "gone wrong" in result.stderr
