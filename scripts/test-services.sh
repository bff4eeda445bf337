#!/usr/bin/env bash
# Start what the tests need beyond `pip install` (what .ci/run does before pytest):
# a throw-away PostgreSQL 15 (team-mode sweep / server tests, via scripts/postgres.sh) and the
# environment pointing the tests at it and at the data. Prints `export` lines for eval:
#
#   eval "$(scripts/test-services.sh start)" && pytest      # start, export, test
#   scripts/test-services.sh stop                            # when done
#
# Without PostgreSQL (apt-get install postgresql) or Chromium (apt-get install chromium
# chromium-driver) the tests that need them skip and say why; this script says so too.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-start}
dir=${KAPPAFLOW_PG_DIR:-/tmp/kappaflow-test-pg}
port=${KAPPAFLOW_PG_PORT:-54329}
case "$cmd" in
  start)
    command -v chromium >/dev/null && command -v chromedriver >/dev/null \
      || echo "note: chromium + chromedriver missing: the browser tests will skip" >&2
    if url=$(scripts/postgres.sh start "$dir" "$port"); then
      echo "export KAPPAFLOW_TEST_PG_URL=$url"
    else
      echo "note: PostgreSQL did not start: the team-mode tests will skip" >&2
    fi
    data="${KAPPAFLOW_DATA_DIR:-$(cd .. && pwd)/shared/data}"
    if [ -d "$data" ]; then
      echo "export KAPPAFLOW_DATA_DIR=$data"
    else
      echo "note: no data at $data: the tests marked data will skip" >&2
    fi ;;
  stop) scripts/postgres.sh stop "$dir" ;;
  *) echo "usage: scripts/test-services.sh start|stop" >&2; exit 2 ;;
esac
