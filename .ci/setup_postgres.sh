#!/usr/bin/env bash
# Make the PostgreSQL tests of tests/autotune runnable: Debian's postgresql server binaries
# (initdb, pg_ctl; the fixtures start a throwaway server on 127.0.0.1) and the psycopg 3 driver.
# Idempotent and quick when everything is already installed.
set -euo pipefail

have_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

if ! have_server; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup_postgres: postgresql is missing and apt-get is unavailable" >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    have_server || { echo "setup_postgres: initdb/pg_ctl still missing after install" >&2; exit 1; }
fi

if ! python -c "import psycopg" >/dev/null 2>&1; then
    python -m pip install -q "psycopg[binary]>=3.1"
fi

# The server refuses to run as root; the fixtures then use the 'postgres' account via runuser.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "setup_postgres: running as root but there is no 'postgres' user" >&2
    exit 1
fi

echo "setup_postgres: $(ls -d /usr/lib/postgresql/*/bin | tail -n1), psycopg $(python -c 'import psycopg; print(psycopg.__version__)')"
