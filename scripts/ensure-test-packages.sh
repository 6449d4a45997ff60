#!/bin/sh
# Debian packages the test suite needs besides MariaDB: faketime (the wall-clock step test). Installed when
# root and missing; otherwise one clear line (the test that needs it then fails and says the same).
set -eu
have_faketime() { ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; }
have_faketime && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "prefork: installing the Debian package faketime for the tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
    have_faketime && exit 0
fi
echo "prefork: libfaketime is missing; install it with: sudo apt-get install faketime" >&2
