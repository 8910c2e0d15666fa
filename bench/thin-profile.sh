#!/usr/bin/env bash
# perf profile of one Tessera build while it writes a fresh thin disk and then the same disk allocated.
#
#   bench/thin-profile.sh ROOT OUT_PREFIX      (needs perf and fio; writes OUT_PREFIX.thin.data and OUT_PREFIX.allocated.data)
#
# Starts ROOT/tessera up with DOTNET_PerfMapEnabled=1 (so JIT-compiled frames have names), writes a 1 GiB thin disk
# `warm` once, then records `perf record -F 999 -g` of the process during one 1 MiB QD8 pass over the fresh 1 GiB disk
# `bench` and during a second pass over it (now allocated). Read them with e.g.
#   perf report -i OUT_PREFIX.thin.data --no-children -n --sort comm -g none --stdio
# Used for the profiles in docs/benchmarks.md ("Ahead-requests, the JIT and the page cache").
set -euo pipefail
root="$1"; out="$2"
d="$(mktemp -d /tmp/thinnext-prof.XXXXXX)"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$d"; }
trap cleanup EXIT
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/warm-tessera.sh"
DOTNET_PerfMapEnabled=1 start_warm_tessera "$root" "$d"
for pass in thin allocated; do
  perf record -F 999 -g -p "$proc" -o "$out.$pass.data" 2>/dev/null &
  pp=$!
  sleep 0.5
  fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$np/bench" --rw=write --bs=1m --iodepth=8 --size=1g --output-format=json --output="$d/$pass.json" >/dev/null
  kill -INT $pp; wait $pp || true
  python3 -c "import json,sys; w=json.load(open('$d/$pass.json'))['jobs'][0]['write']; print('$pass', round(w['bw_bytes']/2**20), 'MiB/s')"
done
