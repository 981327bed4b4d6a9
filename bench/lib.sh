# Shared by bench/callgrind and bench/queues (sourced, not run): a data
# directory with the bench user, a free port, and a session cookie, as
# bench.py sets them up for scenario 1.

# free_port -> a free TCP port on 127.0.0.1
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# sigma_setup BIN DIR -> writes DIR/sigma.toml (bench/sigma.toml.in) with its
# data in DIR/data, and adds the bench user there.
sigma_setup() {
    mkdir -p "$2/data"
    sed "s#@DATA@#$2/data#" "$HERE/sigma.toml.in" >"$2/sigma.toml"
    echo bench-password-not-secret | "$1" user add bench --password-stdin --data "$2/data" >/dev/null
}

# sigma_cookie PORT -> the bench user's session cookie (name=value)
sigma_cookie() {
    curl -s -i -H 'Content-Type: application/json' \
        -d '{"user":"bench","password":"bench-password-not-secret"}' \
        "http://127.0.0.1:$1/login" | grep -io 'sigma_session=[^;]*'
}
