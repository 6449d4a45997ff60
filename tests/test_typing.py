"""The typed seams hold: prefork and workers type-check, and a typo in a settings section is a type
checker's error (the sections are dataclasses to mypy too), not an AttributeError in a worker."""

from __future__ import annotations

import subprocess
import sys

from tests.server import ROOT


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_packages_type_check():
    result = mypy()  # the files and options of setup.cfg's [mypy]
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_typo_in_a_section_is_a_type_error(tmp_path):
    user = tmp_path / "user.py"
    user.write_text(
        "from prefork.config.loader import load_config\n"
        "from workers.ingest import IngestSettings\n"
        "cfg = load_config()\n"
        "size: int = cfg.section(IngestSettings).batch_sise\n"
        "workers: int = cfg.server.workerz\n"
        "table: str = cfg.section(IngestSettings).table\n"
    )
    result = mypy(str(user))
    assert result.returncode == 1, result.stdout
    assert '"IngestSettings" has no attribute "batch_sise"; maybe "batch_size"?' in result.stdout
    assert '"ServerConfig" has no attribute "workerz"; maybe "workers"?' in result.stdout
    assert "user.py:6" not in result.stdout  # the right name is fine
