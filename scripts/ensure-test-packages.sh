#!/bin/sh
# Debian packages the test suite needs besides MariaDB: faketime (the wall-clock step test), haproxy,
# galera-4 and rsync (the cluster suite: prefork behind HAProxy, a Galera cluster whose joiners take their
# state by rsync), rsyslog, rsyslog-relp and rsyslog-openssl (the shippers suite, RELP and syslog over TLS:
# rsyslogd run in the foreground with its own config, never the machine's service), systemd
# (systemd-analyze verifies the shipped units; systemd-socket-activate passes listening sockets as a .socket
# unit does; the package does not make systemd PID 1), util-linux (setpriv runs the unit's command as systemd would) and
# openssl (the TLS tests make their certificates with it, and its s_client is a client no one here wrote;
# HAProxy terminates TLS in front of prefork).
# Installed when root and missing; otherwise one clear line
# naming what to install and a non-zero exit, so `make test` stops before pytest instead of tests failing one
# by one.
set -eu
. "$(dirname "$0")/debian-packages.sh"

missing() {
    out=""
    have_faketime || out="$out faketime"
    have_haproxy || out="$out haproxy"
    have_galera_4 || out="$out galera-4"
    have_rsync || out="$out rsync"
    have_rsyslog || out="$out rsyslog"
    have_rsyslog_relp || out="$out rsyslog-relp"
    have_rsyslog_openssl || out="$out rsyslog-openssl"
    have_systemd || out="$out systemd"
    have_setpriv || out="$out util-linux"
    have_openssl || out="$out openssl"
    echo "${out# }"
}

ensure_packages "the tests" "the tests need"
