#!/usr/bin/env bash
# A PostgreSQL 15 primary and a streaming hot standby on one machine, for `openagents-bench
# replica` (docs/BENCHMARKS.md). The same setup tests/it/replica.rs builds for itself.
#
#   bench/replica-clusters.sh start DIR [PRIMARY_PORT] [STANDBY_PORT]   # prints the two URLs
#   bench/replica-clusters.sh stop DIR                                  # stops both, removes DIR
#
# Runs the clusters as the `postgres` user when invoked as root. PG_BIN overrides the binaries'
# directory (default /usr/lib/postgresql/15/bin).
set -euo pipefail

cmd=${1:?start|stop}
dir=${2:?a directory for both clusters}
pport=${3:-55432}
sport=${4:-55433}
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  as_pg "$bin/initdb" -D "$dir/primary" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log"
  common=(-c listen_addresses=127.0.0.1 -k "$dir" -c max_connections=100 -c max_wal_senders=4
    -c wal_keep_size=1GB -c shared_buffers=128MB)
  as_pg "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w start \
    -o "-p $pport ${common[*]} -c wal_level=replica"
  as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$dir/standby" -R -X stream -c fast
  as_pg "$bin/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w start \
    -o "-p $sport ${common[*]} -c hot_standby=on -c hot_standby_feedback=on"
  echo "primary: postgres://postgres@127.0.0.1:$pport/postgres"
  echo "standby: postgres://postgres@127.0.0.1:$sport/postgres"
  ;;
stop)
  for c in standby primary; do
    [ -d "$dir/$c" ] && as_pg "$bin/pg_ctl" -D "$dir/$c" -m immediate -w stop || true
  done
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop DIR [PRIMARY_PORT] [STANDBY_PORT]" >&2
  exit 2
  ;;
esac
