#!/usr/bin/env bash
# What the tests need, installed and started on a fresh machine; a second run reuses it all.
#   PostgreSQL: Debian's package, cluster started with pg_ctlcluster, database `test`,
#               password auth on 127.0.0.1 (MOTCUA_TEST_PG_URL, see the Makefile).
#   Apache Kafka: Java 17 + Maven (Debian's packages if missing), then `motcua kafka install`
#               resolves the jars into var/kafka/lib (Maven's cache ~/.m2 serves a re-run).
#   Chromium:   Debian's package, for the wall boards' browser tests (Playwright).
#   promtool:   Debian's prometheus package, for infra/deploy's alert rules' tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_PASSWORD=${MOTCUA_TEST_PG_PASSWORD:-motcua}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "services: $* missing and not root: install them (Debian: apt-get install $*)" >&2
    exit 1
  fi
  if [ ! -f /var/lib/apt/.motcua-updated ]; then
    apt-get update -qq && touch /var/lib/apt/.motcua-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

t0=$(date +%s)
if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  echo "services: installing PostgreSQL (Debian package)"
  apt_install postgresql
fi
ver=$(ls /etc/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$ver main"; then
  pg_createcluster "$ver" main >/dev/null
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "services: starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  for _ in $(seq 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.5; done
  pg_isready -h 127.0.0.1 -p 5432
fi
# from / : the postgres user may not enter the clone's folder (mktemp makes it 0700)
as_postgres() { (cd / && if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sh -c "$1"; fi); }
# Debian's pg_hba asks for a password on 127.0.0.1: give the superuser the test one
as_postgres "psql -q -c \"ALTER USER postgres PASSWORD '$PG_PASSWORD'\""
if ! as_postgres "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1
then
  as_postgres "createdb test"
fi
echo "services: PostgreSQL $ver up, database test ($(( $(date +%s) - t0 )) s)"

t0=$(date +%s)
if ! command -v java >/dev/null; then apt_install openjdk-17-jre-headless; fi
if ! command -v mvn >/dev/null; then apt_install maven; fi
.venv/bin/motcua kafka install
echo "services: Apache Kafka jars ready ($(( $(date +%s) - t0 )) s)"

# The wall boards' browser tests drive Debian's chromium through Playwright (Playwright's
# own browser download is not used: executable_path=/usr/bin/chromium).
t0=$(date +%s)
if [ ! -x /usr/bin/chromium ]; then
  echo "services: installing chromium (Debian package)"
  apt_install chromium
fi
echo "services: chromium ready ($(( $(date +%s) - t0 )) s)"

# infra/deploy's alert rules are checked and unit-tested (alerts.test.yml) with promtool,
# from Debian's prometheus package (nothing of it is started).
t0=$(date +%s)
if ! command -v promtool >/dev/null; then
  echo "services: installing promtool (Debian package prometheus)"
  apt_install --no-install-recommends prometheus
fi
echo "services: promtool ready ($(( $(date +%s) - t0 )) s)"
