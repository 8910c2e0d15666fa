#!/usr/bin/env bash
# Profiles Tessera's NBD data path under one fio workload: `perf stat` (CPU, context switches, per I/O) and a
# `perf record` call-graph summary with .NET symbols (DOTNET_PerfMapEnabled=1). Needs perf (Debian: linux-perf).
#
#   bench/profile-tessera.sh [randread-qd1|randread-qd32|randwrite-qd32|seqread-qd8|seqwrite-qd8] [seconds] [nbdkit]
#
# With a third argument "nbdkit", perf stat is also taken of nbdkit serving the same file, for comparison.
# Prints a summary; the full perf report stays in the temp dir only with KEEP=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workload="${1:-randread-qd32}"
seconds="${2:-5}"
compare="${3:-}"
command -v perf >/dev/null || { [[ $(id -u) -eq 0 ]] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v perf >/dev/null || { echo "profile-tessera: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
case "$workload" in
    randread-qd1) fio_args=(--rw=randread --bs=4k --iodepth=1) ;;
    randread-qd32) fio_args=(--rw=randread --bs=4k --iodepth=32) ;;
    randwrite-qd32) fio_args=(--rw=randwrite --bs=4k --iodepth=32) ;;
    seqread-qd8) fio_args=(--rw=read --bs=1m --iodepth=8) ;;
    seqwrite-qd8) fio_args=(--rw=write --bs=1m --iodepth=8) ;;
    *) echo "profile-tessera: unknown workload $workload" >&2; exit 2 ;;
esac

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tessera-profile.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ "${KEEP:-0}" == 1 ]] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_export() { local d=$((SECONDS + 120)); until nbdinfo --size "$1" >/dev/null 2>&1; do [[ $SECONDS -lt $d ]] || return 1; sleep 0.1; done; }

"$root/tessera" --help >/dev/null
head -c $((1 << 30)) /dev/urandom >"$tmp/backing.img"
port="$(free_port)"; cport="$(free_port)"
DOTNET_PerfMapEnabled="${PERFMAP:-1}" "$root/tessera" up --data "$tmp/tessera" --nbd-listen "127.0.0.1:$port" --controller-listen "127.0.0.1:$cport" \
    --disk bench --size 1GiB >"$tmp/tessera.log" 2>&1 &
pid=$!; pids+=("$pid")
uri="nbd://127.0.0.1:$port/bench"
wait_export "$uri" || { cat "$tmp/tessera.log" >&2; exit 1; }
nbdcopy "$tmp/backing.img" "$uri"

stat_run() { # name pid uri
    local name="$1" p="$2" u="$3"
    fio --name=warm --ioengine=nbd --uri="$u" "${fio_args[@]}" --time_based --runtime=1 --output-format=json --output=/dev/null >/dev/null 2>&1
    perf stat -x, -e task-clock,context-switches,cpu-migrations -p "$p" -o "$tmp/$name.stat" -- \
        fio --name=prof --ioengine=nbd --uri="$u" "${fio_args[@]}" --time_based --runtime="$seconds" --output-format=json --output="$tmp/$name.json" >/dev/null 2>&1
    python3 - "$tmp/$name.stat" "$tmp/$name.json" "$name" <<'PY'
import json, sys
stat, js, name = sys.argv[1:]
job = json.load(open(js))["jobs"][0]
side = job["write"] if job["write"]["total_ios"] > 0 else job["read"]
ios = side["total_ios"]
vals = {}
for line in open(stat):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[0] and parts[0][0].isdigit():
        vals[parts[2]] = float(parts[0])
cpu_ms = vals.get("task-clock", 0)
cs = vals.get("context-switches", 0)
print(f"{name}: {side['iops']:,.0f} IOPS, server CPU {cpu_ms * 1000 / ios:.1f} us/IO, {cs / ios:.2f} context switches/IO, migrations {vals.get('cpu-migrations', 0):.0f}")
PY
}

echo "== $workload, ${seconds}s"
stat_run tessera "$pid" "$uri"
if [[ "$compare" == nbdkit ]]; then
    kport="$(free_port)"
    nbdkit -f -i 127.0.0.1 -p "$kport" file file="$tmp/backing.img" >"$tmp/nbdkit.log" 2>&1 &
    kpid=$!; pids+=("$kpid")
    wait_export "nbd://127.0.0.1:$kport/"
    stat_run nbdkit "$kpid" "nbd://127.0.0.1:$kport/"
fi

perf record -F 999 -g -p "$pid" -o "$tmp/perf.data" -- \
    fio --name=prof --ioengine=nbd --uri="$uri" "${fio_args[@]}" --time_based --runtime="$seconds" --output=/dev/null >/dev/null 2>&1 || true
echo "== tessera: top symbols (self time, all threads)"
perf report -i "$tmp/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -30
echo "== tessera: CPU by thread"
perf report -i "$tmp/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -10
