#!/bin/sh
# The whole suite, as `make test` runs it: the main run under the venv's Python ($2) and, beside it, the fast
# part again under the distribution's own Python ($1; scripts/test-system-python.sh, in its venv $3). The two
# run at once: the main run mostly waits on servers, signals and timeouts, the second pass mostly computes,
# and one after the other they took about 14 minutes of a 2-core machine. The second pass writes to
# var/test-system-python.log, shown once the main run is over (all of it if it failed). Exit status: the main
# run's if it failed, else the second pass's.
set -u
SYSTEM_PYTHON=${1:-/usr/bin/python3}
MAIN_PY=${2:-.venv/bin/python}
VENV=${3:-.venv-system}
LOG=var/test-system-python.log

mkdir -p var
sh scripts/test-system-python.sh "$SYSTEM_PYTHON" "$MAIN_PY" "$VENV" >"$LOG" 2>&1 &
second=$!
# Whatever ends this script ends the second pass too: no pytest left running behind an interrupted make.
trap 'kill "$second" 2>/dev/null' EXIT INT TERM

"$MAIN_PY" -m pytest
main_status=$?

wait "$second"
second_status=$?
trap - EXIT INT TERM
if [ "$second_status" -eq 0 ]; then
    echo "prefork: the fast tests again under $SYSTEM_PYTHON, run beside the main run (whole log: $LOG):"
    tail -n 3 "$LOG"
else
    echo "prefork: the fast tests under $SYSTEM_PYTHON FAILED (exit $second_status); their log ($LOG):"
    cat "$LOG"
fi
[ "$main_status" -ne 0 ] && exit "$main_status"
exit "$second_status"
