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
. "$(dirname "$0")/debian-packages.sh"

missing() {
    out=""
    have_rsyslog || out="$out rsyslog"
    have_rsyslog_relp || out="$out rsyslog-relp"
    have_rsyslog_mysql || out="$out rsyslog-mysql"
    have_haproxy || out="$out haproxy"
    have_openssl || out="$out openssl"
    echo "${out# }"
}

# rsyslog-mysql's database setup: not in the machine's MySQL (see above).
before_install() {
    echo "rsyslog-mysql rsyslog-mysql/dbconfig-install boolean false" | debconf-set-selections
}
ensure_packages "the bench" "the bench needs"
