#!/usr/bin/env bash
# heartbeat.sh <label> <command...>: run the command as usual (its output and exit status are its
# own) and, while it runs, print "  ... <label>: still running, <N>s" every HEARTBEAT_S seconds
# (default 25). A long step that prints nothing (an install with --quiet) so shows that it is
# alive: `make demo` prints a line at least every 30 s.
set -u
if (($# < 2)); then
  echo "usage: $0 <label> <command...>" >&2
  exit 2
fi
label=$1
shift
every=${HEARTBEAT_S:-25}
parent=$$
start=$(date +%s)

# One-second ticks, so that the loop is gone within a second of the command; its `sleep` writes
# nowhere, so that no leftover process holds a caller's pipe open after the command ends.
(
  last=$start
  while sleep 1 </dev/null >/dev/null 2>&1; do
    kill -0 "$parent" 2>/dev/null || exit 0  # this script was killed: stop too
    now=$(date +%s)
    if ((now - last >= every)); then
      printf '  ... %s: still running, %ss\n' "$label" $((now - start))
      last=$now
    fi
  done
) &
beat=$!

rc=0
"$@" || rc=$?
# SIGKILL: a shell started with SIGTERM ignored cannot un-ignore it (see scripts/demo.sh).
kill -KILL "$beat" 2>/dev/null
wait "$beat" 2>/dev/null
exit "$rc"
