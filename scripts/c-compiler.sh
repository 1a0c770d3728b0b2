#!/usr/bin/env bash
# Before the package is installed: a C compiler and the interpreter's headers, so that the install builds
# the C writer of CEF and LEEF lines (ce_daemon/logs/_native.c). Installed from Debian's packages when
# missing and we are root; otherwise said, and the install goes on without it (the Python writers run:
# the same bytes, more CPU). Usage: scripts/c-compiler.sh PYTHON
set -euo pipefail
PYTHON=${1:-python3}

headers() {
  "$PYTHON" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}

if command -v cc >/dev/null 2>&1 && headers; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing a C compiler (Debian: gcc, libc6-dev, python3-dev) for the C writer of CEF and LEEF"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null
fi
if ! command -v cc >/dev/null 2>&1 || ! headers; then
  echo "!! no C compiler or no Python.h for $PYTHON: CEF and LEEF run the Python writers (same bytes, more CPU)"
fi
