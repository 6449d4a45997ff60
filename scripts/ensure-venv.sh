#!/bin/sh
# Create .venv with the interpreter given as $1 (default python3). On a fresh Debian the venv module
# lives in a separate package (python3-venv); install it when we are root, otherwise say what to do.
set -eu
PYTHON=${1:-python3}
VENV=${2:-.venv}
if [ -x "$VENV/bin/python" ]; then exit 0; fi
if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "prefork: installing the Debian package python3-venv" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$PYTHON" -m venv "$VENV"
    else
        echo "prefork: '$PYTHON -m venv' failed; install it with: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
