#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: redis-server,
# postgresql and mariadb-server (Debian packages) and the SQS/DynamoDB
# emulator (moto's server, from PyPI into .venv); for the console's browser
# test, chromium and chromium-driver (Debian packages) and selenium (PyPI,
# into .venv); for the admin API's OpenAPI check, schemathesis (PyPI, into .venv).
# Idempotent and quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test-deps: installing redis-server (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if [ ! -x .venv/bin/moto_server ]; then
  echo "test-deps: installing the SQS emulator (moto[server]) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check 'moto[server]>=5,<6'
fi

# PostgreSQL and MariaDB for the database app managers' tests: the suite
# runs private servers from temporary directories (never the system ones).
for pkg in postgresql:/usr/lib/postgresql mariadb-server:/usr/bin/mariadb-install-db; do
  name=${pkg%%:*}
  path=${pkg#*:}
  if [ ! -e "$path" ]; then
    echo "test-deps: installing $name (Debian package)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$name" >/dev/null
  fi
done

# The console's browser test (tests/it/console.rs): headless Chromium driven
# through WebDriver by tests/browser/console.py.
for pkg in chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver; do
  name=${pkg%%:*}
  path=${pkg#*:}
  if [ ! -x "$path" ]; then
    echo "test-deps: installing $name (Debian package)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$name" >/dev/null
  fi
done
if ! .venv/bin/python -c 'import selenium' >/dev/null 2>&1; then
  echo "test-deps: installing the WebDriver client (selenium) into .venv"
  .venv/bin/pip install -q --disable-pip-version-check 'selenium>=4.20,<5'
fi

# The admin API's OpenAPI check (tests/it/admin_api.rs): schemathesis runs
# docs/openapi.json against a real worker.
if [ ! -x .venv/bin/schemathesis ]; then
  echo "test-deps: installing schemathesis into .venv"
  .venv/bin/pip install -q --disable-pip-version-check 'schemathesis==4.32.5'
fi
