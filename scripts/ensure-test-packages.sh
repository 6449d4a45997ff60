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
have_faketime() { ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; }
have_haproxy() { command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; }
have_galera_4() {
    for f in /usr/lib/galera/libgalera_smm.so /usr/lib/*/galera*/libgalera_smm.so; do
        [ -e "$f" ] && return 0
    done
    return 1
}
have_rsync() { command -v rsync >/dev/null 2>&1; }
have_rsyslog() { command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ]; }
have_rsyslog_relp() { ls /usr/lib/*/rsyslog/omrelp.so >/dev/null 2>&1; }
have_rsyslog_openssl() { ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1; }
have_systemd() { command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-socket-activate >/dev/null 2>&1; }
have_setpriv() { command -v setpriv >/dev/null 2>&1; }
have_openssl() { command -v openssl >/dev/null 2>&1; }

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

need=$(missing)
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "prefork: installing the Debian packages $need for the tests" >&2
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    need=$(missing)
    [ -z "$need" ] && exit 0
fi
echo "prefork: the tests need the Debian packages: $need; install them with: sudo apt-get install $need" >&2
exit 1
