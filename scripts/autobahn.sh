#!/usr/bin/env bash
# Runs the Autobahn|Testsuite cases (via kosoku) against sigma's &echo and
# fails unless every case is OK, strictly: no NON-STRICT, no FAILED, and
# every closing behaviour OK. All cases run, 12.* and 13.* (permessage-
# deflate) included, with `[websocket] compression = true` (off by default, DESIGN §3).
#
# The conformance config raises the message limits so that the 9.* cases
# (messages up to 16 MiB) test framing and performance rather than sigma's
# default 4 MiB limit, which tests/ws checks separately (close 1009).
# Four cases run at a time (`-p 4`): with 12.* and 13.* the suite takes
# about 8 minutes one at a time on a 2-core machine, under 5 this way.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin="${TEST_SIGMA_BIN:-$root/target/release/sigma}"
venv="$root/.venv"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/sigma.toml" <<'TOML'
[websocket]
max_frame = 16777216
max_message = 67108864
max_outbound = 67108864
compression = true
TOML

"$bin" serve --config "$work/sigma.toml" --pipeline 'T127.0.0.1:0[H]' --data "$work/data" \
    > "$work/stdout" 2> "$work/stderr" &
pid=$!
addr=""
for _ in $(seq 1 200); do
    addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$work/stdout" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/stderr"; echo "sigma did not start"; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "sigma did not print its address"; exit 1; }

outdir="$root/target/autobahn"
rm -rf "$outdir"
set +e
"$venv/bin/kosoku" -p 4 -o "$outdir" "ws://$addr/echo" > "$work/kosoku.log" 2>&1
status=$?
set -e
tail -n 3 "$work/kosoku.log"

"$venv/bin/python" - "$outdir/index.json" <<'PY'
import collections, json, sys

with open(sys.argv[1]) as f:
    index = json.load(f)

cases = {}
def walk(node, key=None):
    if isinstance(node, dict):
        if "behavior" in node and key is not None:
            cases[key] = node
            return
        for k, v in node.items():
            walk(v, k)
walk(index)

counts = collections.Counter(c["behavior"] for c in cases.values())
closes = collections.Counter(c.get("behaviorClose", "?") for c in cases.values())
print(f"Autobahn: {len(cases)} cases: " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
print("closing behaviour: " + ", ".join(f"{n} {b}" for b, n in sorted(closes.items())))
bad = sorted(
    (k for k, c in cases.items()
     if c["behavior"] not in ("OK", "INFORMATIONAL") or c.get("behaviorClose") not in ("OK", "INFORMATIONAL")),
    key=lambda k: [int(p) for p in k.split(".")],
)
for k in bad:
    print(f"  not strict: {k}: {cases[k]['behavior']} / close {cases[k].get('behaviorClose')}")
if not cases:
    print("no Autobahn results found"); sys.exit(1)
sys.exit(1 if bad else 0)
PY
summary=$?
[ "$status" -eq 0 ] || { echo "kosoku exited with $status"; cat "$work/kosoku.log" | tail -20; exit 1; }
exit "$summary"
