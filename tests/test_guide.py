"""README's "Writing an application" guide, run as a reader would follow it.

Every code block of the guide carries a marker comment saying what to do with it:

- ``<!-- guide-file: NAME -->``: save the block as NAME in the reader's directory;
- ``<!-- guide-run: SESSION -->``: a ``prefork run ...`` command, started there (on a free port);
- ``<!-- guide-python: SESSION -->``: Python run against that server (port 32777 replaced by the real
  one), whose output must be what its ``# -> ...`` comments say; without SESSION, Python on its own
  (the default DSN replaced by the private MariaDB's);
- ``<!-- guide-shell -->``: ``prefork`` commands, each followed by ``# -> text`` lines its output must hold.

A block without a marker fails the test: nothing in the guide goes untried. The database is the private
MariaDB (``PREFORK_POOL_DSN``), as the reader's would be the default DSN.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import query
from tests.server import ROOT, ServerProcess, prefork_cmd, test_env

BLOCK = re.compile(r"(?:<!-- guide-(file|run|python|shell)(?::\s*(\S+))?\s*-->\n)?```(\w*)\n(.*?)```", re.S)


DEFAULT_DSN = "mysql://root@127.0.0.1:3306/test"


def guide_blocks() -> list[tuple[str | None, str | None, str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Writing an application", 1)[1].split("\n## ", 1)[0]
    return [(kind, name, body) for kind, name, _lang, body in BLOCK.findall(section)]


def expected_outputs(text: str) -> list[str]:
    return [match.strip() for match in re.findall(r"# -> (.*)", text)]


def test_every_block_of_the_guide_is_tried():
    blocks = guide_blocks()
    assert len(blocks) >= 8
    untried = [body[:60] for kind, _, body in blocks if not kind]
    assert not untried, f"blocks without a guide marker: {untried}"


@pytest.mark.timeout(180)
def test_the_guide_works_as_written(tmp_path, dsn):
    query(dsn, "DROP TABLE IF EXISTS `word_counts`")
    query(dsn, "DROP TABLE IF EXISTS `lookup_values`")
    env = test_env({"PREFORK_POOL_DSN": dsn})
    servers: dict[str, ServerProcess] = {}
    ran = []
    try:
        for kind, name, body in guide_blocks():
            if kind == "file":
                (tmp_path / name).write_text(body)
            elif kind == "run":
                argv = shlex.split(body.strip())
                assert argv[:2] == ["prefork", "run"], body
                servers[name] = ServerProcess(argv[2:], env={"PREFORK_POOL_DSN": dsn}, cwd=tmp_path).start()
            elif kind == "python":
                code = body.replace(DEFAULT_DSN, dsn)
                if name:
                    code = code.replace("127.0.0.1:32777", f"127.0.0.1:{servers[name].port}")
                result = subprocess.run(
                    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
                )
                assert result.returncode == 0, result.stderr
                assert result.stdout.strip().splitlines() == expected_outputs(body), result.stdout
            elif kind == "shell":
                run_shell_block(body, tmp_path, env)
            ran.append(kind)
    finally:
        for srv in servers.values():
            srv.stop()
    assert {"file", "run", "python", "shell"} <= set(ran)


def run_shell_block(body: str, cwd, env) -> None:
    """Each ``prefork ...`` line, its output checked against the ``# -> `` lines after it."""
    commands: list[tuple[str, list[str]]] = []
    for line in body.strip().splitlines():
        if line.startswith("# -> "):
            commands[-1][1].append(line[len("# -> ") :].strip())
        else:
            commands.append((line, []))
    for command, expected in commands:
        argv = shlex.split(command)
        assert argv[0] == "prefork", command
        result = subprocess.run(prefork_cmd(*argv[1:]), cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        for text in expected:
            assert text in output, (command, output)
