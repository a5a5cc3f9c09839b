#!/usr/bin/env bash
# Builds the Jaeger all-in-one binary pinned by tools/jaeger/go.mod into
# $REPO/.bin/jaeger (or $1). It skips the build when the binary is there and
# was built from the same go.mod/go.sum with the same Go toolchain; the first
# build takes a few minutes on two cores.
#
#   tools/jaeger/build.sh            # -> <repo>/.bin/jaeger
#   tools/jaeger/build.sh /tmp/jaeger
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/.bin/jaeger}"
stamp="$out.stamp"

cd "$here"
want="$( { cat go.mod go.sum; go env GOVERSION GOOS GOARCH; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
	echo "jaeger: $out is up to date"
	exit 0
fi

mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$out.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "jaeger: building $out (takes a few minutes the first time)"
start=$SECONDS
go build -trimpath -o "$tmp" github.com/jaegertracing/jaeger/cmd/jaeger
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "$want" >"$stamp"
echo "jaeger: built $out in $((SECONDS - start))s"
