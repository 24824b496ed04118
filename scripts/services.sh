#!/usr/bin/env bash
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432 (trust auth,
# database "test") and Mosquitto on 127.0.0.1:1883. On the development machines both are
# pre-started; elsewhere we install and start them. Run as root or as a user with sudo: sudo is
# used only for apt-get and for starting PostgreSQL's cluster (it runs as the postgres user).
set -euo pipefail

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! port_up 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$ver/main/pg_hba.conf
  # The tests connect as postgres over TCP without a password (a throw-away local cluster).
  if ! $SUDO grep -q "umec-tests" "$conf"; then
    printf 'host all all 127.0.0.1/32 trust # umec-tests\nhost all all ::1/128 trust # umec-tests\n' \
      | $SUDO tee /tmp/umec-hba >/dev/null
    $SUDO sh -c "cat '$conf' >> /tmp/umec-hba && cp /tmp/umec-hba '$conf'"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 30); do port_up 5432 && break; sleep 1; done
fi
if port_up 5432; then
  psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='test'" postgres \
    2>/dev/null | grep -q 1 || createdb -h 127.0.0.1 -U postgres test 2>/dev/null || true
  echo "services: postgresql up"
else
  echo "services: postgresql NOT reachable; PostgreSQL tests will be skipped" >&2
fi

if ! port_up 1883; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
  # Our own broker for the tests, as whoever runs them: loopback only, anonymous.
  cfg=$(mktemp /tmp/umec-mosquitto.XXXXXX.conf)
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' > "$cfg"
  /usr/sbin/mosquitto -c "$cfg" -d
  for _ in $(seq 10); do port_up 1883 && break; sleep 0.5; done
fi
if port_up 1883; then
  echo "services: mosquitto up"
else
  echo "services: mosquitto NOT reachable; the MQTT tests against the system broker will be skipped" >&2
fi
