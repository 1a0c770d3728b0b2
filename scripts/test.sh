#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: system packages, lint, types, config check, and
# pytest twice: on the SQLite state backend, then on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

# rsyslog (with its GnuTLS driver) is the real syslog receiver the log-shipping tests talk to;
# the tests start their own rsyslogd on loopback ports.
if ! command -v rsyslogd >/dev/null 2>&1 || ! ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing rsyslog and rsyslog-gnutls (Debian) for the syslog tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsyslog rsyslog-gnutls >/dev/null
  else
    echo "!! rsyslog/rsyslog-gnutls missing and we are not root: 'sudo apt-get install rsyslog rsyslog-gnutls'"
    exit 1
  fi
fi

# prometheus is the real scraper the metrics test starts on a loopback port of its own (its data in the
# test's folder). On a host with systemd, Debian's package also enables a prometheus service of its own.
if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing prometheus (Debian) for the metrics test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "!! prometheus missing and we are not root: 'sudo apt-get install prometheus'"
    exit 1
  fi
fi

# Chromium (Debian's, headless) is the browser the dashboard tests drive through Playwright; Playwright's own
# browser download is never used.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing chromium (Debian) for the dashboard tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "!! chromium missing and we are not root: 'sudo apt-get install chromium'"
    exit 1
  fi
fi

# PostgreSQL is the second state backend: the suite runs once on it, each test in a database of its own
# on 127.0.0.1:5432 as user postgres (trust authentication on loopback).
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "!! PostgreSQL is not answering on 127.0.0.1:5432 and we are not root: install and start it"
    echo "!! ('sudo apt-get install postgresql'), with trust for 127.0.0.1 in pg_hba.conf"
    exit 1
  fi
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    echo "== installing postgresql (Debian) for the PostgreSQL state backend"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  read -r version cluster _ < <(pg_lsclusters --no-header | head -n 1)
  if [ -z "${version:-}" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    cluster=main
    pg_createcluster "$version" "$cluster" >/dev/null
  fi
  hba="/etc/postgresql/$version/$cluster/pg_hba.conf"
  if ! grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
    echo "== allowing trust on 127.0.0.1 in $hba for the test run"
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  pg_ctlcluster "$version" "$cluster" start 2>/dev/null || pg_ctlcluster "$version" "$cluster" reload
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi

echo "== ruff"
$BIN/ruff check ce_daemon plugins tests bench
$BIN/ruff format --check ce_daemon plugins tests bench
echo "== mypy --strict"
$BIN/mypy ce_daemon plugins
echo "== ce-daemon check config.example.yaml"
$BIN/ce-daemon check -c config.example.yaml
echo "== pytest on SQLite"
$BIN/pytest -n 2 -p no:cacheprovider --state-backend=sqlite "$@"
echo "== pytest on PostgreSQL"
$BIN/pytest -n 2 -p no:cacheprovider --state-backend=postgresql "$@"
