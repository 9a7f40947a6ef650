#!/usr/bin/env bash
# Prepares this machine for the test suite; `make test` runs it first (and so does `.ci/run`).
# Starts Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, database `test`) when they are
# not running, and installs Debian's chromium + chromium-driver when they are missing. Where it
# cannot (not root, no sudo, no package access), it stops with one line saying what is missing
# and the command that installs it, before any test runs.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
fi
can_install() { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }

missing() {  # what, command that fixes it
    echo "make test: $1 is missing and this user cannot install it; run: $2" >&2
    exit 1
}

apt_install() {
    can_install && command -v apt-get >/dev/null || missing "$*" "sudo apt-get install -y $*"
    if [ -z "${APT_UPDATED:-}" ]; then
        $SUDO apt-get update -qq || missing "$*" "sudo apt-get update && sudo apt-get install -y $*"
        APT_UPDATED=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || missing "$*" "sudo apt-get install -y $*"
}

wait_for() {  # seconds, command...
    local n=$1; shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}

# Redis on 127.0.0.1:6379
if ! (command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    dir=/var/lib/redis; [ -w "$dir" ] || dir=$(mktemp -d)
    log=/var/log/redis/ci.log; [ -w /var/log/redis ] || log="$dir/redis.log"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir "$dir" --logfile "$log"
    wait_for 30 redis-cli -h 127.0.0.1 -p 6379 ping \
        || missing "a running Redis on 127.0.0.1:6379" "redis-server --port 6379 --daemonize yes"
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth and a database `test`
if ! (command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432); then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
        hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)
        $SUDO sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/' "$hba"
    fi
    can_install || missing "a running PostgreSQL on 127.0.0.1:5432" \
        "sudo pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    wait_for 30 pg_isready -q -h 127.0.0.1 -p 5432 \
        || missing "a running PostgreSQL on 127.0.0.1:5432" "pg_ctlcluster <version> main start"
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" \
    | grep -q 1 || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test" \
    || missing "the PostgreSQL database 'test' (trust auth for postgres on 127.0.0.1)" \
        "psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test'"

# Chromium for the browser tests (tests/test_web.py), from Debian: no test tool downloads one.
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium chromium-driver
fi
