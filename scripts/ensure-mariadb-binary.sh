#!/bin/sh
# Make sure a MariaDB (or MySQL) server binary and mariadb-install-db are installed, so that tests and
# `make run` can start a private server. Installs the Debian package when root; otherwise one clear line.
set -eu
PATH="$PATH:/usr/sbin:/usr/local/sbin"
have_server() {
    { command -v mariadbd || command -v mysqld; } >/dev/null 2>&1 &&
        { command -v mariadb-install-db || command -v mysql_install_db; } >/dev/null 2>&1
}
have_server && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "prefork: no MariaDB server binary found; installing the Debian package mariadb-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
    have_server && exit 0
fi
echo "prefork: no MariaDB server binary found; install it with: sudo apt-get install mariadb-server" >&2
exit 1
