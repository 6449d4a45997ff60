#!/bin/sh
# The fast part of the test suite again, under the distribution's own Python ($1, default /usr/bin/python3)
# when it is another interpreter than the one of the main venv ($2): Debian 12's 3.11.2 is not the newest
# 3.11, and its standard library differs (its urllib.parse rejected a DSN host list holding [v6]). It gets
# a venv of its own ($3, default .venv-system) with the package and its test extras; the selection leaves
# out the slow suites (the markers faults, hostile and cluster, and the files of FAST_SKIP below). Extra
# arguments go to pytest. Without that interpreter, or when it is the main venv's, this says so and exits 0.
set -eu
SYSTEM_PYTHON=${1:-/usr/bin/python3}
MAIN_PY=${2:-.venv/bin/python}
VENV=${3:-.venv-system}
[ "$#" -ge 3 ] && shift 3 || shift "$#"

# Process supervision, the ingest app's load tests, the app probe, reload handoffs, stops, unprivileged
# workers and the real shippers' daemons: minutes of subprocesses and waits that test our code, not the
# interpreter's library; the main run has them. What stays runs the parsers, the framers, the config, the
# client and the pool on this interpreter (with servers of its own where they need one).
FAST_SKIP="test_master.py test_supervision.py test_ingest.py test_app_settings.py test_balance.py test_typing.py
test_faults.py test_hostile.py test_cluster.py test_cluster_infra.py test_handoff.py test_stop.py
test_privileges.py test_systemd_unit.py test_shippers.py test_shipper_configs.py test_relp_rsyslog.py
test_syslog.py test_syslog_framing.py test_line_ids.py test_lookup.py test_logging.py test_allow_from.py
test_db_tls.py test_client_tls.py test_reload_wait.py test_bind_retry.py test_release.py test_health.py
test_socket_activation.py test_tls.py test_hostile_tls.py test_shippers_tls.py test_upgrade.py"

if [ ! -x "$SYSTEM_PYTHON" ]; then
    echo "prefork: no $SYSTEM_PYTHON: the suite ran under $MAIN_PY only" >&2
    exit 0
fi
# The same interpreter: the same installation (its real prefix) and the same version string.
IDENTITY='import os, sys; print(os.path.realpath(sys.base_prefix), sys.version)'
if [ "$("$SYSTEM_PYTHON" -c "$IDENTITY")" = "$("$MAIN_PY" -c "$IDENTITY")" ]; then
    echo "prefork: $MAIN_PY is $SYSTEM_PYTHON: the suite ran once" >&2
    exit 0
fi
sh scripts/ensure-venv.sh "$SYSTEM_PYTHON" "$VENV"
# Installed again only when the package metadata changed, as the main venv's stamp does in the Makefile.
if [ ! -f "$VENV/.installed" ] || [ setup.cfg -nt "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$VENV/.installed"
fi
ignores=""
for name in $FAST_SKIP; do
    ignores="$ignores --ignore=tests/$name"
done
echo "prefork: the fast tests again under $SYSTEM_PYTHON ($("$SYSTEM_PYTHON" -c 'import platform; print(platform.python_version())'))" >&2
# shellcheck disable=SC2086 # one word per option
exec "$VENV/bin/python" -m pytest -m "not faults and not hostile and not cluster" $ignores "$@"
