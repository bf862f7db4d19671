"""The core imports on a platform without fcntl (Windows): locks go through filelock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_config_and_batch_writer_import_and_lock_without_fcntl(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["fcntl"] = None  # what `import fcntl` meets on Windows: ImportError
        from pathlib import Path
        import prodai_cli.config as config
        import prodai_cli.batch.writer as writer
        target = Path({str(tmp_path)!r}) / "prodai.yaml"
        with config.file_lock(target):
            print("locked", (target.parent / "prodai.yaml.lock").exists())
        print("writer", writer.ResumableWriter.__name__)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "locked True" in proc.stdout
    assert "writer ResumableWriter" in proc.stdout
