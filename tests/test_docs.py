"""The README and the example config stay in step with the config schema."""

from __future__ import annotations

from prefork.config.framework import SETTINGS
from tests.server import ROOT
from workers.ingest import IngestSettings
from workers.syslog import SyslogSettings


def test_readme_documents_every_setting_with_its_default_and_flag():
    readme = (ROOT / "README.md").read_text()
    for s in SETTINGS + IngestSettings.settings() + SyslogSettings.settings():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{s.name}` |")), None)
        assert row is not None, f"README has no row for {s.name}"
        assert f"`{s.default or '(none)'}`" in row, f"README shows another default for {s.name}"
        if s.flag:
            assert f"`{s.flag}`" in row, f"README does not name {s.flag}"


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("## ", 1)[0]
    assert "make run" in head and "make test" in head
