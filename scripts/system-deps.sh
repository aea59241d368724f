#!/usr/bin/env bash
# Install the Debian packages the test suite and benchmarks use, if missing.
# Runs as root in CI (apt-get works there); elsewhere it only says what is missing.
set -euo pipefail

packages=(curl sqlite3)
# The dashboard's browser test: Debian's Chromium (Playwright drives it; it never downloads
# a browser of its own) and a font for it to render text with.
packages+=(chromium fonts-dejavu-core)
# The benchmark (make bench) and its smoke test drive the servers with wrk, and start a
# Redis server for the Redis peers (PostgreSQL's comes from the line below).
packages+=(wrk redis-server)
# The server the PostgreSQL backend's tests run against (scripts/test-postgres.sh), and the
# benchmark's PostgreSQL peer.
packages+=(postgresql)
# The benchmark's lock peer: make bench (and tests/test_bench_locks.py) starts its own etcd on
# loopback ports with its data in a temp dir, whether or not the package's service runs.
packages+=(etcd-server)
# tests/test_docker.py builds the image with podman and runs it with buildah (no Docker
# daemon), from a base image debootstrap makes where no container registry is reachable.
packages+=(podman buildah debootstrap)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing Debian packages (tests needing them will skip): ${missing[*]}" >&2
fi
