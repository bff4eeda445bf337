#!/usr/bin/env bash
# A throw-away PostgreSQL 15 server on loopback, for the team-mode tests (Optuna storage, MLflow
# backend) and for trying team mode on one machine. Not for production: trust auth on 127.0.0.1.
#
#   scripts/postgres.sh start [DIR] [PORT]   # initdb (once) + start; prints the SQLAlchemy URL
#   scripts/postgres.sh stop  [DIR]
#   scripts/postgres.sh url   [DIR] [PORT]
#
# Databases `optuna` and `mlflow` are created. initdb refuses to run as root, so as root the
# server runs as the `postgres` user (Debian's package creates it).
set -euo pipefail
cmd=${1:?usage: postgres.sh start|stop|url [DIR] [PORT]}
dir=${2:-${KAPPAFLOW_PG_DIR:-/tmp/kappaflow-pg}}
port=${3:-${KAPPAFLOW_PG_PORT:-54329}}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
url() { echo "postgresql+psycopg2://postgres@127.0.0.1:${port}/${1:-optuna}"; }
case "$cmd" in
  start)
    if [ ! -s "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" = 0 ] && chown postgres "$dir"
      as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >/dev/null
    for db in optuna mlflow; do
      as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
        || as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
    done
    url optuna ;;
  stop)
    [ -s "$dir/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true ;;
  url) url "${4:-optuna}" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
