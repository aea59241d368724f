#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the test suite (creating it on first use) and
# print how to reach it. Needs root (pg_createcluster/pg_ctlcluster and runuser) and the
# Debian `postgresql` package (scripts/system-deps.sh installs it).
#
#   scripts/test-postgres.sh          prints the URL
#   scripts/test-postgres.sh --env    prints `export ...` lines for LOCKSTEP_TEST_POSTGRES_URL
#                                     and LOCKSTEP_TEST_POSTGRES_CLUSTER (used by the
#                                     stop/start recovery test)
#   scripts/test-postgres.sh --stop   stops the cluster again
set -euo pipefail

# Only the result goes to stdout (callers eval it); whatever the PostgreSQL tools print,
# such as pg_ctlcluster's "Removed stale pid file", goes to stderr.
exec 3>&1 1>&2

cluster=${LOCKSTEP_TEST_CLUSTER_NAME:-lockstep-test}
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
[ -n "$version" ] || { echo "PostgreSQL server binaries not found" >&2; exit 1; }

exists() { pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c' | grep -q .; }

if [ "${1:-}" = "--stop" ]; then
  exists && pg_ctlcluster "$version" "$cluster" stop -m fast 2>/dev/null || true
  exit 0
fi

if ! exists; then
  # Throwaway: no start at boot, password auth over TCP for the test role.
  pg_createcluster --start-conf=manual "$version" "$cluster" \
    -o max_connections=200 >/dev/null
fi
port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c {print $3}')
if ! pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1; then
  pg_ctlcluster "$version" "$cluster" start 3>&-  # the server must not hold our stdout open
fi

psql_admin() { runuser -u postgres -- psql -p "$port" -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
psql_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lockstep') THEN
    CREATE ROLE lockstep LOGIN PASSWORD 'lockstep';
  END IF; END \$\$;" >/dev/null
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'lockstep'")" ]; then
  psql_admin -c "CREATE DATABASE lockstep OWNER lockstep" >/dev/null
fi

url="postgresql://lockstep:lockstep@127.0.0.1:$port/lockstep"
if [ "${1:-}" = "--env" ]; then
  echo "export LOCKSTEP_TEST_POSTGRES_URL='$url'" >&3
  echo "export LOCKSTEP_TEST_POSTGRES_CLUSTER='$version $cluster'" >&3
else
  echo "$url" >&3
fi
