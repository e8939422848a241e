#!/usr/bin/env bash
# Builds a pinned Consul from the Go module proxy and caches it outside the repo.
# Debian has no Consul package and no other network is reachable, so this is the
# only way to get a real agent for the integration tests. Prints the binary path.
set -euo pipefail
version=${CONSUL_VERSION:-1.20.6}
cache=${FARMDNS_CACHE:-$HOME/.cache/farmdns}
bin=$cache/consul-$version/consul
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
mkdir -p "$(dirname "$bin")"
# One build at a time: parallel test runs wait for the first build instead of starting their own.
exec 9>"$(dirname "$bin")/.lock"
flock 9
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
# The module zip is read-only in the module cache; build from a writable copy.
dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/consul@v$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
# The replace block points at sub-modules that are not in the module zip; without it
# the published sub-module versions are used instead.
awk '/^replace \(/{skip=1; next} skip && /^\)/{skip=0; next} !skip' go.mod >go.mod.new
mv go.mod.new go.mod
sed -i '/^replace .* => \.\//d' go.mod
echo "building consul $version (several minutes, once)" >&2
go build -mod=mod -o "$bin.tmp" . >&2
mv "$bin.tmp" "$bin"
echo "$bin"
