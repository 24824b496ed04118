#!/usr/bin/env bash
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432 (trust auth,
# database "test"). On the development machines it is pre-started; elsewhere we install/start it.
set -euo pipefail

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 30); do pg_up && break; sleep 1; done
fi
if pg_up; then
  psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='test'" postgres \
    2>/dev/null | grep -q 1 || createdb -h 127.0.0.1 -U postgres test 2>/dev/null || true
  echo "services: postgresql up"
else
  echo "services: postgresql NOT reachable; PostgreSQL tests will be skipped" >&2
fi
