#!/bin/sh
# Send messages to prefork with util-linux logger: each argument, or each line of a file
# (`logger.sh -f FILE`), or of stdin (`logger.sh < FILE`), is one RFC 5424 message, octet-counted.
#     etc/shippers/logger.sh -t myapp -p local3.notice 'disk almost full'
#     etc/shippers/logger.sh -t import -f messages.txt
#
# Change: PREFORK_HOST and PREFORK_PORT below (or set them in the environment).
# prefork: give that listener `framing = octet-count` (or `syslog`) and leave `ack` at `auto` (= off),
# e.g. `prefork run workers.syslog:app --bind 0.0.0.0:6514 --framing octet-count`. logger reads no
# replies: with acks on, it closes with its replies unread and the reset that sends destroys the tail of
# what it sent. Without --octet-count (LF-terminated, --rfc3164 or --rfc5424) use `framing = syslog`.
#
# Guarantee: plain TCP, one connection, no retry: what is in flight when prefork crashes or reloads is
# lost, and logger still exits 0.
PREFORK_HOST=${PREFORK_HOST:-prefork.example.com}
PREFORK_PORT=${PREFORK_PORT:-6514}
exec logger --server "$PREFORK_HOST" --port "$PREFORK_PORT" --tcp --octet-count --rfc5424 "$@"
