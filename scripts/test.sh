#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: system packages, lint, types, config check, pytest.
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

echo "== ruff"
$BIN/ruff check ce_daemon plugins tests bench
$BIN/ruff format --check ce_daemon plugins tests bench
echo "== mypy --strict"
$BIN/mypy ce_daemon plugins
echo "== ce-daemon check config.example.yaml"
$BIN/ce-daemon check -c config.example.yaml
echo "== pytest"
$BIN/pytest -n 2 -p no:cacheprovider "$@"
