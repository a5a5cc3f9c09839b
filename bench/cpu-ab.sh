#!/bin/bash
# cpu-ab.sh: server CPU per accepted HS256 upgrade of several wsbroker
# binaries (or wrappers that add flags), alternated round by round on one
# machine, events on, tracing off. A quick A/B for one change; the full
# comparison with the baseline is `make bench-compare`.
#
#   go build -o /tmp/a ./cmd/wsbroker   # before
#   go build -o /tmp/b ./cmd/wsbroker   # after
#   go build -o /tmp/loadclient ./bench/loadclient
#   LOADCLIENT=/tmp/loadclient bench/cpu-ab.sh 3 3s /tmp/a /tmp/b
set -euo pipefail
rounds=$1 dur=$2
shift 2
lc=${LOADCLIENT:-loadclient}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
head -c 32 /dev/urandom | base64 >"$d/secret"
port=${PORT:-19080}
tck=$(getconf CLK_TCK)
for r in $(seq "$rounds"); do
	for b in "$@"; do
		rm -rf "$d/data"
		OTEL_TRACES_EXPORTER=none "$b" serve --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$((port + 1)) \
			--jwt-hmac-secret-file "$d/secret" --max-conns-per-subject 0 --failure-burst 0 --log-level error \
			--shutdown-drain 1s --data-dir "$d/data" >/dev/null 2>"$d/err" &
		pid=$!
		for _ in $(seq 100); do curl -sf http://127.0.0.1:$((port + 1))/readyz >/dev/null && break; sleep 0.1; done
		c0=$(awk '{print $14+$15}' /proc/$pid/stat)
		out=$("$lc" handshake -url ws://127.0.0.1:$port/ws -hmac-secret-file "$d/secret" -case accept-hs256 -workers 32 -duration "$dur")
		c1=$(awk '{print $14+$15}' /proc/$pid/stat)
		kill -TERM $pid
		wait $pid || true
		ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$out")
		awk -v r="$r" -v b="$(basename "$b")" -v ok="$ok" -v c="$((c1 - c0))" -v t="$tck" \
			'BEGIN { printf "round %s %-12s %6d accepted  %6.1f µs server CPU per accepted upgrade\n", r, b, ok, c / t * 1e6 / ok }'
	done
done
