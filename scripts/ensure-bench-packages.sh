#!/bin/sh
# Debian packages `make bench` needs besides MariaDB: rsyslog, rsyslog-relp (omrelp) and rsyslog-mysql
# (ommysql), for the shipper bench (bench/shippers.py: rsyslogd run in the foreground with its own config,
# never the machine's service); haproxy and openssl for the TLS bench (bench/tls.py: HAProxy terminating TLS
# in the foreground with its own config, certificates made by the openssl command line). Installed when root and missing; otherwise one clear line naming what to
# install and a non-zero exit: the bench never leaves a contender out.
# rsyslog-mysql's own setup (dbconfig-common) would create a database and a user in the machine's MySQL: it
# is told not to (the bench gives ommysql its own server and table). The package still drops
# /etc/rsyslog.d/mysql.conf, read only by the machine's rsyslog service, which the bench never starts.
set -eu
have_rsyslog() { command -v rsyslogd >/dev/null 2>&1 || [ -x /usr/sbin/rsyslogd ]; }
have_rsyslog_relp() { ls /usr/lib/*/rsyslog/omrelp.so >/dev/null 2>&1; }
have_rsyslog_mysql() { ls /usr/lib/*/rsyslog/ommysql.so >/dev/null 2>&1; }
have_haproxy() { command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; }
have_openssl() { command -v openssl >/dev/null 2>&1; }

missing() {
    out=""
    have_rsyslog || out="$out rsyslog"
    have_rsyslog_relp || out="$out rsyslog-relp"
    have_rsyslog_mysql || out="$out rsyslog-mysql"
    have_haproxy || out="$out haproxy"
    have_openssl || out="$out openssl"
    echo "${out# }"
}

need=$(missing)
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "prefork: installing the Debian packages $need for the bench" >&2
    echo "rsyslog-mysql rsyslog-mysql/dbconfig-install boolean false" | debconf-set-selections
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    need=$(missing)
    [ -z "$need" ] && exit 0
fi
echo "prefork: the bench needs the Debian packages: $need; install them with: sudo apt-get install $need" >&2
exit 1
