# Sourced by scripts/test.sh: the servers the tests need (PostgreSQL and
# Redis), found where the machine runs them or started privately.
#
#   ensure_postgres   exports SIGMA_TEST_POSTGRES (an admin URL, trust auth)
#   ensure_redis      exports SIGMA_TEST_REDIS (redis://host:port/db)
#
# Each ensure_* function follows the same steps, so the next service is one
# more function of the same shape:
#   1. the variable is already set: check it answers, else fail naming it;
#   2. the default address answers: use it;
#   3. else install the Debian package if its binaries are missing and
#      start a private instance in a temporary directory on a free
#      loopback port, stopped when the script exits.
# Nothing is skipped: when a step cannot be done the function fails with a
# message naming what is missing. SIGMA_PRIVATE_SERVICES=1 skips step 2
# (to test step 3 on a machine that runs the servers).
#
# Tests isolate themselves on whatever server this gives: each creates its
# own database (sigma_test_<random>) and drops it; on Redis each uses its
# own key prefix (sigma_test_<random>:), whose keys expire.

services_tmp=
services_stops=()

# Runs every registered stop command (at exit).
services_cleanup() {
    local i
    for ((i = ${#services_stops[@]} - 1; i >= 0; i--)); do
        eval "${services_stops[$i]}" >/dev/null 2>&1 || true
    done
    if [ -n "$services_tmp" ]; then
        rm -rf "$services_tmp"
    fi
}
trap services_cleanup EXIT

# A fresh private directory for the instances.
services_dir() {
    if [ -z "$services_tmp" ]; then
        services_tmp=$(mktemp -d "${TMPDIR:-/tmp}/sigma-services.XXXXXX")
        chmod 755 "$services_tmp"
    fi
    printf '%s\n' "$services_tmp"
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Installs Debian packages, or fails naming them.
services_install() {
    local sudo=
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "services: need the Debian package(s) $* and cannot install them (not root, no sudo)" >&2
            return 1
        fi
        sudo=sudo
    fi
    if ! command -v apt-get >/dev/null; then
        echo "services: need the Debian package(s) $* (no apt-get here: install them by hand)" >&2
        return 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# Runs a command as the unprivileged `postgres` user when we are root
# (PostgreSQL refuses to run as root).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# PostgreSQL's server binaries (initdb, pg_ctl), newest version first.
postgres_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    return 1
}

# True when `$1` (a connection URL) accepts a query.
postgres_answers() {
    command -v psql >/dev/null && PGCONNECT_TIMEOUT=3 psql "$1" -XAtqc 'SELECT 1' >/dev/null 2>&1
}

ensure_postgres() {
    local default=postgres://postgres@127.0.0.1:5432/postgres
    if ! command -v psql >/dev/null || ! postgres_bindir >/dev/null; then
        # The server package brings psql and initdb.
        if [ -n "${SIGMA_TEST_POSTGRES:-}" ] && command -v psql >/dev/null; then
            :
        elif [ -z "${SIGMA_PRIVATE_SERVICES:-}" ] && command -v psql >/dev/null && postgres_answers "$default"; then
            :
        else
            services_install postgresql || return 1
        fi
    fi
    if [ -n "${SIGMA_TEST_POSTGRES:-}" ]; then
        if ! postgres_answers "$SIGMA_TEST_POSTGRES"; then
            echo "services: SIGMA_TEST_POSTGRES is set but no PostgreSQL answers there" >&2
            return 1
        fi
        echo "PostgreSQL: $SIGMA_TEST_POSTGRES (from SIGMA_TEST_POSTGRES)"
        return 0
    fi
    if [ -z "${SIGMA_PRIVATE_SERVICES:-}" ] && postgres_answers "$default"; then
        export SIGMA_TEST_POSTGRES=$default
        echo "PostgreSQL: $default (running on this machine)"
        return 0
    fi
    local bin dir port
    if ! bin=$(postgres_bindir); then
        echo "services: PostgreSQL's initdb/pg_ctl not found after installing postgresql" >&2
        return 1
    fi
    dir=$(services_dir)/postgres
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    port=$(free_port)
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
        echo "services: initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        return 1
    }
    services_stops+=("as_postgres '$bin/pg_ctl' -D '$dir/data' -m immediate stop")
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >/dev/null || {
        echo "services: the private PostgreSQL did not start:" >&2
        cat "$dir/server.log" >&2
        return 1
    }
    export SIGMA_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres
    if ! postgres_answers "$SIGMA_TEST_POSTGRES"; then
        echo "services: the private PostgreSQL on port $port does not answer" >&2
        return 1
    fi
    echo "PostgreSQL: $SIGMA_TEST_POSTGRES (private instance in $dir)"
}

# True when the Redis of `$1` (redis://host:port[/db]) answers PING.
redis_answers() {
    python3 - "$1" <<'PY' >/dev/null 2>&1
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=3)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
PY
}

ensure_redis() {
    local default=redis://127.0.0.1:6379/0
    if [ -n "${SIGMA_TEST_REDIS:-}" ]; then
        if ! redis_answers "$SIGMA_TEST_REDIS"; then
            echo "services: SIGMA_TEST_REDIS is set but no Redis answers there" >&2
            return 1
        fi
        echo "Redis: $SIGMA_TEST_REDIS (from SIGMA_TEST_REDIS)"
        return 0
    fi
    if [ -z "${SIGMA_PRIVATE_SERVICES:-}" ] && redis_answers "$default"; then
        export SIGMA_TEST_REDIS=$default
        echo "Redis: $default (running on this machine)"
        return 0
    fi
    if ! command -v redis-server >/dev/null; then
        services_install redis-server || return 1
    fi
    local dir port
    dir=$(services_dir)/redis
    mkdir -p "$dir"
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" || {
        echo "services: the private redis-server did not start" >&2
        return 1
    }
    services_stops+=("kill \$(cat '$dir/redis.pid')")
    export SIGMA_TEST_REDIS=redis://127.0.0.1:$port/0
    local i
    for i in $(seq 1 100); do
        if redis_answers "$SIGMA_TEST_REDIS"; then
            echo "Redis: $SIGMA_TEST_REDIS (private instance in $dir)"
            return 0
        fi
        sleep 0.1
    done
    echo "services: the private Redis on port $port does not answer:" >&2
    cat "$dir/redis.log" >&2
    return 1
}
