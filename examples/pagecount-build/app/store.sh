#!/bin/sh
# A tiny Redis-like counter store: one command per connection on stdin.
#   PING -> PONG      INCR key -> new value      GET key -> value
read -r cmd key
key=$(echo "$key" | tr -cd 'a-zA-Z0-9_-')
case "$cmd" in
  PING) echo PONG ;;
  GET) cat "/data/$key" 2>/dev/null || echo 0 ;;
  INCR)
    # mkdir is atomic: a portable lock across the per-connection processes.
    i=0; while ! mkdir /data/.lock 2>/dev/null; do i=$((i+1)); [ $i -gt 500 ] && break; usleep 2000; done
    n=$(cat "/data/$key" 2>/dev/null || echo 0); n=$((n+1)); echo "$n" > "/data/$key"
    rmdir /data/.lock 2>/dev/null
    echo "$n" ;;
  *) echo "ERR unknown command" ;;
esac
