"""What a user installs: the version in one place, python -m prefork, py.typed, the licence."""

from __future__ import annotations

import configparser
import importlib.metadata
import subprocess
import sys

import prefork
from tests.server import ROOT, test_env


def test_version_has_one_home():
    assert importlib.metadata.version("prefork") == prefork.__version__
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: prefork.__version__"


def test_python_dash_m_prefork_is_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "prefork", "--version"], env=test_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert prefork.__version__ in out.stdout + out.stderr


def test_typed_package_and_licence_match_the_metadata():
    assert (ROOT / "prefork" / "py.typed").exists()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "py.typed" in setup["options.package_data"]["prefork"]
    licence = (ROOT / "LICENSE").read_text()
    assert setup["metadata"]["license"] == "MIT" and licence.startswith("MIT License")


def test_the_private_mariadb_helper_is_not_part_of_the_installed_package():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = {p.strip() for p in setup["options"]["packages"].split(",")}
    assert {p.split(".")[0] for p in packages} == {"prefork", "workers"}  # and their subpackages, not devtools
    assert (ROOT / "devtools" / "mariadb.py").exists() and not (ROOT / "prefork" / "devdb.py").exists()
