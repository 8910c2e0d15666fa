#!/usr/bin/env bash
# One Tessera build, one process: fresh thin write versus allocated write of the same disk, with the process's CPU.
#
#   [TDIR=/dev/shm] bench/thin-cpu.sh [ROOT] [extra `tessera up` arguments, e.g. --allocate-ahead 0]
#
# Starts ROOT/tessera up (default: this tree) in a temp dir under TDIR (default /tmp), writes a 1 GiB thin disk `warm`
# once so the data and control paths are compiled, then writes the fresh 1 GiB thin disk `bench` once (every write is
# its segment's first) and once more (allocated). Prints MiB/s and the process's user and system CPU for each of the
# two passes. Stops what it started. Used for the CPU table of "Sequential allocate-ahead" in docs/benchmarks.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-$here}"; [[ $# -gt 0 ]] && shift
command -v fio >/dev/null || { echo "thin-cpu: needs fio" >&2; exit 1; }
d="$(mktemp -d "${TDIR:-/tmp}/thin-cpu.XXXXXX")"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$d"; }
trap cleanup EXIT
source "$here/bench/lib/warm-tessera.sh"
start_warm_tessera "$root" "$d" "$@"
ticks() { awk '{print $14, $15}' "/proc/$proc/stat"; }
hz="$(getconf CLK_TCK)"
for pass in thin allocated; do
    read -r u0 s0 < <(ticks)
    fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$np/bench" --rw=write --bs=1m --iodepth=8 --size=1g \
        --output-format=json --output="$d/$pass.json" >/dev/null
    read -r u1 s1 < <(ticks)
    python3 - "$d/$pass.json" "$pass" "$(( (u1 - u0) * 1000 / hz ))" "$(( (s1 - s0) * 1000 / hz ))" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(f"{sys.argv[2]:>9}: {w['bw_bytes'] / 2**20:7.0f} MiB/s  user {sys.argv[3]} ms  system {sys.argv[4]} ms")
PY
done
