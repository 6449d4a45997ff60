"""prefork.config: defaults, precedence, validation, error messages, reload and the example file.

Most tests see the config as the default app does: the framework's sections plus the ingest app's
declared ``[ingest]`` (checked with Config.check_sections, as the CLI does once the app is imported);
tests/test_app_settings.py covers declaring sections.
"""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path

import pytest

from prefork.config.address import Address, parse_address
from prefork.config.errors import ConfigError
from prefork.config.flags import parse_override
from prefork.config.framework import SETTINGS, PoolConfig, ServerConfig, setting
from prefork.config.loader import Config
from prefork.config.loader import load_config as load_framework_config
from prefork.db.dsn import DSN
from workers.ingest import IngestSettings

# Every key the default app's config has, in the order of etc/prefork.ini.
ALL = SETTINGS + IngestSettings.settings()
SECTION_OF = {"server": ServerConfig, "pool": PoolConfig, "ingest": IngestSettings}


def load_config(*args, **kwargs) -> Config:
    """load_config, then the [ingest] values checked against the ingest app's section."""
    cfg = load_framework_config(*args, **kwargs)
    cfg.check_sections([IngestSettings])
    return cfg


def ingest(cfg: Config) -> IngestSettings:
    return cfg.section(IngestSettings)


def value_of(cfg: Config, name: str):
    section, key = name.split(".")
    return getattr(cfg.section(SECTION_OF[section]), key)


EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "prefork.ini"


def write(tmp_path: Path, text: str, name: str = "prefork.ini") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- defaults and the settings table ----


def test_defaults():
    cfg = load_config(env={})
    assert cfg.server.bind == [Address("tcp", "127.0.0.1", 32777)]
    assert cfg.server.workers == usable_cpus()
    assert cfg.server.worker_connections == 1000
    assert cfg.server.app == "workers.ingest:app"
    assert cfg.server.timeout == 30.0 and cfg.server.graceful_timeout == 30.0
    assert cfg.server.max_requests == 0 and cfg.server.max_requests_jitter == 0
    assert cfg.server.client_timeout == 300.0 and cfg.server.max_line == 65536
    assert cfg.server.ack == ("auto",) and cfg.server.framing == ("lines",) and cfg.server.daemon is False
    assert cfg.server.name == "prefork"
    assert cfg.server.pidfile is None and cfg.server.user is None and cfg.server.group is None
    assert cfg.server.log_file == "-" and cfg.server.log_level == "info"
    assert cfg.server.metrics_bind is None
    assert isinstance(cfg.pool.dsn, DSN)
    assert (cfg.pool.dsn.host, cfg.pool.dsn.port, cfg.pool.dsn.user, cfg.pool.dsn.database) == (
        "127.0.0.1",
        3306,
        "root",
        "test",
    )
    assert (cfg.pool.min_size, cfg.pool.max_size, cfg.pool.timeout, cfg.pool.max_uses) == (1, 10, 10.0, 0)
    assert (cfg.pool.max_idle, cfg.pool.max_lifetime, cfg.pool.ping_interval, cfg.pool.leak_timeout) == (
        300.0,
        3600.0,
        30.0,
        0.0,
    )
    assert ingest(cfg).table == "received_lines"
    ing = ingest(cfg)
    assert (ing.batch_size, ing.flushers, ing.commit_timeout, ing.max_pending) == (
        1000,
        2,
        30.0,
        100000,
    )
    assert cfg.path is None and cfg.env == {} and cfg.overrides == {}


def test_settings_table_matches_spec_order_and_names():
    names = [s.name for s in ALL]
    assert names[:3] == ["server.bind", "server.workers", "server.worker_connections"]
    assert names[-1] == "ingest.client_cert" and len(names) == len(set(names)) == 58
    assert {s.section for s in SETTINGS} == {"server", "pool"}  # the framework names no app's section
    assert [s.section for s in ALL] == sorted((s.section for s in ALL), key=["server", "pool", "ingest"].index)
    for s in ALL:
        s.parse(s.default)  # every default parses
        assert s.help and "\n" not in s.help
        assert s.flag is None or s.flag.startswith("--")
    assert setting("server.bind").flag == "--bind" and setting("pool.max_size").flag == "--pool-max"
    assert setting("server.app").flag is None


def test_setting_lookup_unknown():
    with pytest.raises(ConfigError, match=r"unknown setting 'pool\.max_sise'.*pool\.max_size"):
        setting("pool.max_sise")


def test_workers_auto_is_usable_cpus():
    assert load_config(env={}, overrides={"server.workers": "auto"}).server.workers == usable_cpus()
    assert load_config(env={}, overrides={"server.workers": "AUTO"}).server.workers == usable_cpus()
    assert load_config(env={}, overrides={"server.workers": "3"}).server.workers == 3


def test_get_and_attribute_access_are_read_only():
    cfg = load_config(env={})
    assert cfg.get("pool.max_size") == cfg.pool.max_size == 10
    with pytest.raises(ConfigError, match="unknown setting"):
        cfg.get("pool.nope")
    with pytest.raises(AttributeError):
        cfg.pool.max_size = 3
    with pytest.raises(AttributeError):
        cfg.pool.nope  # noqa: B018


# ---- precedence: defaults < file < env < overrides ----


def test_file_overrides_defaults(tmp_path):
    path = write(tmp_path, "[pool]\nmax_size = 5\n[server]\nbind = 0.0.0.0:80, unix:/run/p.sock\n")
    cfg = load_config(path, env={})
    assert cfg.pool.max_size == 5 and cfg.path == path
    assert cfg.server.bind == [Address("tcp", "0.0.0.0", 80), Address("unix", path="/run/p.sock")]
    assert cfg.pool.min_size == 1  # untouched keys keep their defaults


def test_env_overrides_file(tmp_path):
    path = write(tmp_path, "[pool]\nmax_size = 5\nmin_size = 2\n")
    env = {"PREFORK_POOL_MAX_SIZE": "20", "PREFORK_SERVER_BIND": "[::1]:8000", "HOME": "/root"}
    cfg = load_config(path, env=env)
    assert cfg.pool.max_size == 20 and cfg.pool.min_size == 2
    assert cfg.server.bind == [Address("tcp", "::1", 8000)]
    assert cfg.env == {"PREFORK_POOL_MAX_SIZE": "20", "PREFORK_SERVER_BIND": "[::1]:8000"}


def test_overrides_beat_env_and_file(tmp_path):
    path = write(tmp_path, "[pool]\nmax_size = 5\n[ingest]\nbatch_size = 7\n")
    env = {"PREFORK_POOL_MAX_SIZE": "20", "PREFORK_INGEST_FLUSHERS": "4"}
    cfg = load_config(path, env=env, overrides={"pool.max_size": "30", "server.ack": "off"})
    assert cfg.pool.max_size == 30 and ingest(cfg).batch_size == 7 and ingest(cfg).flushers == 4
    assert cfg.server.ack == ("off",)
    assert cfg.overrides == {"pool.max_size": "30", "server.ack": "off"}


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("PREFORK_INGEST_BATCH_SIZE", "42")
    assert ingest(load_config()).batch_size == 42


def test_other_prefork_variables_are_ignored():
    cfg = load_config(env={"PREFORK_CONFIG": "x", "PREFORK_SERVERX": "1", "PREFORK_": ""})
    assert cfg.pool.max_size == 10


def test_none_override_means_not_given():
    cfg = load_config(env={"PREFORK_POOL_MAX_SIZE": "20"}, overrides={"pool.max_size": None})
    assert cfg.pool.max_size == 20 and cfg.overrides == {}


def test_a_bad_value_is_an_error_even_when_a_later_source_replaces_it(tmp_path):
    path = write(tmp_path, "[server]\nworkers = abc\n")
    with pytest.raises(ConfigError, match="workers"):
        load_config(path, env={}, overrides={"server.workers": "2"})


# ---- values ----


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:32777", Address("tcp", "127.0.0.1", 32777)),
        ("localhost:0", Address("tcp", "localhost", 0)),
        ("[::1]:8000", Address("tcp", "::1", 8000)),
        ("[fe80::1%eth0]:80", Address("tcp", "fe80::1%eth0", 80)),
        ("unix:/run/x.sock", Address("unix", path="/run/x.sock")),
        (" db.example.org:65535 ", Address("tcp", "db.example.org", 65535)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "address, text",
    [
        (Address("tcp", "127.0.0.1", 32777), "127.0.0.1:32777"),
        (Address("tcp", "::1", 8000), "[::1]:8000"),
        (Address("unix", path="/run/x.sock"), "unix:/run/x.sock"),
    ],
)
def test_address_str(address, text):
    assert str(address) == text
    assert parse_address(text) == address  # round trip


@pytest.mark.parametrize(
    "name, raw, value",
    [
        ("server.ack", "OFF", ("off",)),
        ("server.ack", "yes", ("on",)),
        ("server.ack", "Auto", ("auto",)),
        ("server.framing", "Octet-Count", ("octet-count",)),
        ("server.daemon", "1", True),
        ("server.daemon", "False", False),
        ("server.log_level", "DEBUG", "debug"),
        ("server.pidfile", "/run/prefork.pid", "/run/prefork.pid"),
        ("server.user", "nobody", "nobody"),
        ("server.timeout", "2.5", 2.5),
        ("server.timeout", "500ms", 0.5),
        ("server.client_timeout", "5m", 300.0),
        ("pool.max_lifetime", "1h", 3600.0),
        ("server.graceful_timeout", "0", 0.0),
        ("pool.min_size", "0", 0),
        ("server.max_requests", "+5", 5),
        ("server.app", "workers.echo:app", "workers.echo:app"),
        ("ingest.table", "my table-1", "my table-1"),
        ("ingest.table", "x" * 64, "x" * 64),
    ],
)
def test_good_values(name, raw, value):
    assert value_of(load_config(env={}, overrides={name: raw}), name) == value


def test_metrics_bind_and_multiple_binds():
    cfg = load_config(env={}, overrides={"server.metrics_bind": "0.0.0.0:9100", "server.bind": "a:1,[::]:0,[::]:0"})
    assert cfg.server.metrics_bind == Address("tcp", "0.0.0.0", 9100)
    assert [str(a) for a in cfg.server.bind] == ["a:1", "[::]:0", "[::]:0"]  # port 0 may repeat


BAD_VALUES = [
    ("server.workers", "0"),
    ("server.workers", "abc"),
    ("server.workers", "-2"),
    ("server.workers", "1.5"),
    ("server.bind", "nohost"),
    ("server.bind", "1.2.3.4:99999"),
    ("server.bind", "[::1]"),
    ("server.bind", "::1:80"),
    ("server.bind", "1.2.3.999:80"),
    ("server.bind", ":80"),
    ("server.bind", "host:port"),
    ("server.bind", "bad host:80"),
    ("server.bind", "[1.2.3.4]:80"),
    ("server.bind", "unix:"),
    ("server.bind", ""),
    ("server.bind", "a:1,,b:2"),
    ("server.bind", "a:1,a:1"),
    ("server.worker_connections", "0"),
    ("server.app", "workers.ingest"),
    ("server.app", "workers/ingest:app"),
    ("server.app", "workers.ingest:"),
    ("server.app", "import:app"),
    ("server.timeout", "0"),
    ("server.timeout", "-1"),
    ("server.timeout", "soon"),
    ("server.timeout", "inf"),
    ("server.timeout", "nan"),
    ("server.graceful_timeout", "-1"),
    ("server.max_requests", "-1"),
    ("server.max_requests", "1.5"),
    ("server.max_requests", "1_000"),
    ("server.max_requests_jitter", "x"),
    ("server.client_timeout", "0"),
    ("server.max_line", "0"),
    ("server.ack", "maybe"),
    ("server.ack", "on,maybe"),
    ("server.framing", "rfc5424"),
    ("server.framing", "lines,"),
    ("server.daemon", "2"),
    ("server.name", ""),
    ("server.name", "a\tb"),
    ("server.log_file", ""),
    ("server.log_level", "loud"),
    ("server.metrics_bind", "unix:/run/m.sock"),
    ("server.metrics_bind", "9100"),
    ("pool.min_size", "-1"),
    ("pool.max_size", "0"),
    ("pool.timeout", "0"),
    ("pool.max_uses", "-1"),
    ("pool.max_idle", "-5"),
    ("pool.max_lifetime", "forever"),
    ("pool.ping_interval", "1e3"),
    ("pool.leak_timeout", "-0.1"),
    ("ingest.table", "a`b"),
    ("ingest.table", "a\0b"),
    ("ingest.table", ""),
    ("ingest.table", "x" * 65),
    ("ingest.batch_size", "0"),
    ("ingest.flushers", "0"),
    ("ingest.commit_timeout", "0"),
    ("ingest.max_pending", "0"),
    ("ingest.max_pending_bytes", "0"),
    ("ingest.max_pending_bytes", "64 apples"),
    ("ingest.max_pending_bytes", "-1M"),
]


@pytest.mark.parametrize("name, raw", BAD_VALUES)
def test_bad_values_name_key_and_value(name, raw):
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={name: raw})
    message = str(info.value)
    assert message.startswith(f"{name}: invalid value {raw!r} ("), message
    assert "\n" not in message and info.value.key == name


@pytest.mark.parametrize("name, raw", BAD_VALUES[:6])
def test_bad_values_from_file_and_env_name_the_source(tmp_path, name, raw):
    section, key = name.split(".")
    var = f"PREFORK_{section.upper()}_{key.upper()}"
    with pytest.raises(ConfigError, match=f"^{var}: {name}: invalid value "):
        load_config(env={var: raw})
    if raw:  # configparser strips values: an empty one would be the same as "key ="
        path = write(tmp_path, f"[{section}]\n{key} = {raw}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
        assert str(info.value).startswith(f"{path}: {name}: invalid value {raw!r}")


def test_min_size_above_max_size_names_both_keys():
    with pytest.raises(ConfigError) as info:
        load_config(env={"PREFORK_POOL_MIN_SIZE": "20"}, overrides={"pool.max_size": "10"})
    assert "pool.min_size" in str(info.value) and "pool.max_size" in str(info.value) and "'20'" in str(info.value)
    assert load_config(env={}, overrides={"pool.min_size": "10", "pool.max_size": "10"}).pool.min_size == 10


# ---- the DSN and its password ----


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://app:s3cr3tpw@db/x",
        "mysql://app:s3cr3tpw@db:notaport/x",
        "mysql://app:s3cr3tpw@db/x?bogus=1",
        "mysql:/app:s3cr3tpw@db/x",  # no "://": the DSN parser cannot even find the password
        "app:s3cr3tpw@db",
        "mysql://app:s3cr3tpw@/x",
    ],
)
def test_bad_dsn_never_shows_the_password(tmp_path, raw):
    for kwargs in (
        {"overrides": {"pool.dsn": raw}},
        {"env": {"PREFORK_POOL_DSN": raw}},
        {"path": write(tmp_path, f"[pool]\ndsn = {raw}\n")},
    ):
        kwargs.setdefault("env", {})
        with pytest.raises(ConfigError) as info:
            load_config(**kwargs)
        message = str(info.value)
        assert "pool.dsn" in message and "s3cr3tpw" not in message, message
        assert "s3cr3tpw" not in repr(info.value) and info.value.__cause__ is None


def test_as_dict_is_json_safe_and_redacts_the_password():
    cfg = load_config(
        env={},
        overrides={"pool.dsn": "mysql://app:s3cr3tpw@db.example:3307/shop", "server.bind": "[::1]:1,unix:/x"},
    )
    data = cfg.as_dict([IngestSettings])
    text = json.dumps(data)
    assert "s3cr3tpw" not in text and "s3cr3tpw" not in repr(cfg) and "s3cr3tpw" not in repr(cfg.pool)
    assert data["pool"]["dsn"] == "mysql://app:***@db.example:3307/shop"
    assert data["server"]["bind"] == ["[::1]:1", "unix:/x"] and data["server"]["metrics_bind"] is None
    assert list(data) == ["server", "pool", "ingest"]
    assert [(section, key) for section in data for key in data[section]] == [(s.section, s.key) for s in ALL]
    assert list(cfg.as_dict()) == ["server", "pool"]
    assert cfg.pool.dsn.password == "s3cr3tpw"  # the pool still gets the real one


# ---- unknown names and broken files ----


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "[pool]\nmax_sise = 5\n", name="config.ini")
    with pytest.raises(ConfigError, match=r"config\.ini: unknown key 'max_sise' in \[pool\].*'max_size'"):
        load_config(path, env={})


@pytest.mark.parametrize("header", ["[database]", "[DEFAULT]", "[Server]"])
def test_unknown_section_in_file(tmp_path, header):
    path = write(tmp_path, f"{header}\nbind = 1.2.3.4:5\n")
    with pytest.raises(ConfigError, match=rf"unknown section \[{header[1:-1]}\]"):
        load_config(path, env={})


def test_unknown_env_key_names_the_variable():
    with pytest.raises(ConfigError, match=r"^PREFORK_POOL_MAX_SISE: unknown setting 'pool\.max_sise'"):
        load_config(env={"PREFORK_POOL_MAX_SISE": "5"})


def test_unknown_override():
    with pytest.raises(ConfigError, match=r"unknown setting 'pool\.max_sise'"):
        load_config(env={}, overrides={"pool.max_sise": "5"})


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read config file: No such file"):
        load_config(path, env={})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max_size = 5\n", "line 1: a key before the first [section]"),
        ("[pool]\nthis line is no key value pair\n", "line 2: expected 'key = value'"),
        ("[pool]\nmax_size = 1\nmax_size = 2\n", "line 3: duplicate key 'max_size' in [pool]"),
        ("[pool]\n[pool]\n", "line 2: duplicate section [pool]"),
    ],
)
def test_unparsable_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: {expected}")


def test_unparsable_file_does_not_quote_a_password(tmp_path):
    path = write(tmp_path, "dsn = mysql://u:s3cr3tpw@h/db\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "s3cr3tpw" not in str(info.value)
    path = write(tmp_path, "[pool]\ndsn mysql://u:s3cr3tpw@h/db\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "s3cr3tpw" not in str(info.value)


def test_not_utf8_file(tmp_path):
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[server]\nname = caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path), env={})


def test_file_keys_are_case_insensitive_and_values_may_continue(tmp_path):
    path = write(tmp_path, "[server]\nBIND = 127.0.0.1:1,\n    127.0.0.1:2\n")
    assert [a.port for a in load_config(path, env={}).server.bind] == [1, 2]


# ---- -s section.key=value ----


def test_parse_override():
    assert parse_override("pool.max_size=20") == ("pool.max_size", "20")
    assert parse_override(" server.bind = 0.0.0.0:80 ") == ("server.bind", "0.0.0.0:80")
    assert parse_override("pool.dsn=mysql://u:p=w@h/db") == ("pool.dsn", "mysql://u:p=w@h/db")
    assert parse_override("server.pidfile=") == ("server.pidfile", "")


@pytest.mark.parametrize("text", ["pool.max_size", "=5", "", "pool.dsn:mysql://u:s3cr3tpw@h/db"])
def test_parse_override_malformed(text):
    with pytest.raises(ConfigError, match="expected section.key=value") as info:
        parse_override(text)
    assert "s3cr3tpw" not in str(info.value)


def test_parse_override_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown setting 'pool\.max_sise'"):
        parse_override("pool.max_sise=5")


# ---- reload ----


def test_reload_rereads_the_file_but_keeps_env_and_overrides(tmp_path, monkeypatch):
    path = write(tmp_path, "[pool]\nmax_size = 5\nmin_size = 2\n[ingest]\nbatch_size = 10\nflushers = 3\n")
    cfg = load_config(path, env={"PREFORK_INGEST_FLUSHERS": "4"}, overrides={"pool.min_size": "1"})
    assert (cfg.pool.max_size, cfg.pool.min_size, ingest(cfg).batch_size, ingest(cfg).flushers) == (5, 1, 10, 4)

    write(tmp_path, "[pool]\nmax_size = 6\nmin_size = 3\n[ingest]\nbatch_size = 20\nflushers = 5\n")
    monkeypatch.setenv("PREFORK_INGEST_FLUSHERS", "9")  # the environment as given at start stays
    new = cfg.reload()
    assert isinstance(new, Config) and new is not cfg
    assert (new.pool.max_size, new.pool.min_size, ingest(new).batch_size, ingest(new).flushers) == (6, 1, 20, 4)
    assert cfg.pool.max_size == 5  # the old config is unchanged
    assert new.env == cfg.env and new.overrides == cfg.overrides and new.path == path


def test_reload_of_a_broken_file_raises(tmp_path):
    path = write(tmp_path, "[pool]\nmax_size = 5\n")
    cfg = load_config(path, env={})
    write(tmp_path, "[pool]\nmax_size = lots\n")
    with pytest.raises(ConfigError, match=r"pool\.max_size: invalid value 'lots'"):
        cfg.reload()
    Path(path).unlink()
    with pytest.raises(ConfigError, match="cannot read config file"):
        cfg.reload()


def test_reload_without_file():
    cfg = load_config(env={}, overrides={"pool.max_size": "3"})
    assert cfg.reload().as_dict() == cfg.as_dict()


# ---- etc/prefork.ini ----


def test_example_file_parses_and_lists_exactly_the_settings():
    cfg = load_config(str(EXAMPLE), env={})
    # every value is the default
    assert cfg.as_dict([IngestSettings]) == load_config(env={}).as_dict([IngestSettings])

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(EXAMPLE, encoding="utf-8")
    listed = [f"{section}.{key}" for section in parser.sections() for key in parser[section]]
    assert listed == [s.name for s in ALL]
    for s in ALL:
        assert parser[s.section][s.key] == s.default


def test_example_file_comments_each_key_with_its_help():
    lines = EXAMPLE.read_text().splitlines()
    section, found = "", []
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.append((section, key.strip(), value.strip(), lines[number - 1]))
    assert found == [(s.section, s.key, s.default, f"# {s.help}") for s in ALL]


@pytest.mark.parametrize(
    "raw, value", [("1048576", 1 << 20), ("512K", 512 << 10), ("64MiB", 64 << 20), ("1g", 1 << 30), ("2 MB", 2 << 20)]
)
def test_sizes_take_binary_units(raw, value):
    assert ingest(load_config(env={}, overrides={"ingest.max_pending_bytes": raw})).max_pending_bytes == value
