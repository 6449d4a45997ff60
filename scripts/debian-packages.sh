# Sourced by scripts/ensure-test-packages.sh and scripts/ensure-bench-packages.sh: how to tell whether a Debian
# package the suite or the bench needs is there (have_*), and `ensure_packages WHAT`, which installs what the
# caller's `missing` names when root with apt-get, and otherwise prints one line naming what to install and
# exits 1. A caller may define `before_install` (run as root just before apt-get, e.g. debconf answers).
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
have_rsyslog_mysql() { ls /usr/lib/*/rsyslog/ommysql.so >/dev/null 2>&1; }
have_systemd() { command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-socket-activate >/dev/null 2>&1; }
have_setpriv() { command -v setpriv >/dev/null 2>&1; }
have_openssl() { command -v openssl >/dev/null 2>&1; }

before_install() { :; }

# ensure_packages WHAT NEED: exit 0 once nothing is missing; WHAT names who needs them ("the tests"), NEED says
# so with its verb ("the tests need").
ensure_packages() {
    need=$(missing)
    [ -z "$need" ] && exit 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "prefork: installing the Debian packages $need for $1" >&2
        before_install
        apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
        need=$(missing)
        [ -z "$need" ] && exit 0
    fi
    echo "prefork: $2 the Debian packages: $need; install them with: sudo apt-get install $need" >&2
    exit 1
}
