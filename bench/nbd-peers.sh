#!/usr/bin/env bash
# Tessera side by side with qemu-nbd and nbdkit, on the same bytes, in the same run (issue 5).
#
#   bench/nbd-peers.sh [--runtime S] [--ramp S] [--rounds N] [--out FILE.md]
#                      [--servers "qemu-threads qemu-uring nbdkit tessera"] [--workloads "randread-qd1 ..."]
#                      [--no-thin] [--keep] [--baseline DIR]
#
# What it does:
#   1. installs what is missing (fio, qemu-utils, nbdkit, libnbd-bin) with apt-get when run as root;
#   2. fills one 1 GiB file with random bytes in a temp dir, and (after step 3) puts it and Tessera's pool in the
#      page cache the same way (flush, drop, read back with nbdcopy): see "same page-cache state" below;
#   3. serves it with qemu-nbd (aio=threads and aio=io_uring, --cache=writeback, raw, --shared=8),
#      nbdkit file (default threads), and Tessera (`./tessera up`, a 1 GiB disk `bench` into which the file is
#      copied with nbdcopy, so every segment is allocated and the map is on the path);
#   4. runs five fio workloads (--ioengine=nbd, one connection) against each server, interleaving the servers
#      A B C D A B C D ... for --rounds rounds, each run time_based for --runtime seconds after a --ramp;
#   5. measures the server's CPU time (utime+stime from /proc/PID/stat) around each run;
#   6. separately, per round: writes a fresh thin Tessera disk (nothing allocated: every 1 MiB write faults to
#      the controller first) once from start to end, and the allocated disk the same way;
#   7. prints medians per workload and server, and the ratio Tessera / best peer; --out writes markdown.
#
# Optional server "tessera-file" (add it to --servers): Tessera's NBD server alone on the same file with no
# mapping table (bench/Tessera.Nbd.Bench, the identity map), for the ratio mapped disk / identity map.
# Optional server "tessera-base" (with --baseline DIR, a second checkout, e.g. `git archive BASE | tar -x -C DIR`):
# the same disk served by that checkout's ./tessera, interleaved with this one, for an A/B of a change
# (prints new / baseline per workload).
#
# Everything it starts is stopped on exit. With the defaults it takes about 8 minutes.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runtime=6
ramp=1
rounds=3
out=""
servers="qemu-threads qemu-uring nbdkit tessera"
workloads="randread-qd1 randread-qd32 randwrite-qd32 seqread-qd8 seqwrite-qd8"
thin=1
keep=0
baseline=""
size_bytes=$((1 << 30))

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runtime) runtime="$2"; shift 2 ;;
        --ramp) ramp="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --servers) servers="$2"; shift 2 ;;
        --workloads) workloads="$2"; shift 2 ;;
        --no-thin) thin=0; shift ;;
        --keep) keep=1; shift ;;
        --baseline) baseline="$(cd "$2" && pwd)"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "nbd-peers: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
[[ "$runtime" =~ ^[0-9]+$ && "$runtime" -ge 1 ]] || { echo "nbd-peers: --runtime must be a whole number of seconds >= 1" >&2; exit 2; }
[[ "$ramp" =~ ^[0-9]+$ ]] || { echo "nbd-peers: --ramp must be a whole number of seconds" >&2; exit 2; }
[[ "$rounds" =~ ^[0-9]+$ && "$rounds" -ge 1 ]] || { echo "nbd-peers: --rounds must be >= 1" >&2; exit 2; }
[[ -n "$out" ]] && out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

say() { printf '[nbd-peers %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v fio >/dev/null || need_pkgs+=(fio)
command -v qemu-nbd >/dev/null || need_pkgs+=(qemu-utils)
command -v nbdkit >/dev/null || need_pkgs+=(nbdkit)
{ command -v nbdcopy >/dev/null && command -v nbdinfo >/dev/null; } || need_pkgs+=(libnbd-bin)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "nbd-peers: missing ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]}) or run as root" >&2
        exit 1
    fi
    say "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [[ " $servers " == *" tessera-file "* ]]; then
    say "building bench/Tessera.Nbd.Bench (once)"
    dotnet build "$root/bench/Tessera.Nbd.Bench/Tessera.Nbd.Bench.csproj" -c Release -nologo -v quiet >/dev/null
fi
if [[ " $servers " == *" tessera "* ]]; then
    [[ -x "$root/tessera" ]] || { echo "nbd-peers: $root/tessera not found (the CLI launcher); run from a checkout of main" >&2; exit 1; }
    say "building tessera (once)"
    "$root/tessera" --help >/dev/null
fi
if [[ " $servers " == *" tessera-base "* ]]; then
    [[ -n "$baseline" && -x "$baseline/tessera" ]] || { echo "nbd-peers: server tessera-base needs --baseline DIR (a checkout with ./tessera)" >&2; exit 1; }
    say "building the baseline tessera in $baseline (once)"
    "$baseline/tessera" --help >/dev/null
fi

# ---------------------------------------------------------------- processes and cleanup
tmp="$(mktemp -d "${TMPDIR:-/tmp}/tessera-peers.XXXXXX")"
declare -A pid_of=()
started_pids=()

stop_pid() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    for pid in "${started_pids[@]}"; do stop_pid "$pid"; done
    if [[ $keep == 1 ]]; then say "kept $tmp"; else rm -rf "$tmp"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Polls until a TCP port accepts connections (bounded), failing early if the process died.
wait_port() {
    local port="$1" pid="$2" what="$3" limit="${4:-60}"
    local deadline=$((SECONDS + limit))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { say "$what exited before opening port $port"; return 1; }
        [[ $SECONDS -lt $deadline ]] || { say "$what did not open port $port within ${limit}s"; return 1; }
        sleep 0.05
    done
}

# Polls until an NBD export answers a handshake (bounded).
wait_export() {
    local uri="$1" what="$2" limit="${3:-60}"
    local deadline=$((SECONDS + limit))
    until nbdinfo --size "$uri" >/dev/null 2>&1; do
        [[ $SECONDS -lt $deadline ]] || { say "$what: $uri did not answer within ${limit}s"; return 1; }
        sleep 0.1
    done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# ---------------------------------------------------------------- the bytes
backing="$tmp/backing.img"
say "filling $backing with 1 GiB of random bytes"
head -c "$size_bytes" /dev/urandom >"$backing"
cat "$backing" >/dev/null # page cache

# ---------------------------------------------------------------- servers
declare -A uri_of=()
active=()

start_qemu() {
    local name="$1" aio="$2" port
    port="$(free_port)"
    qemu-nbd -f raw --cache=writeback --aio="$aio" --persistent --shared=8 -b 127.0.0.1 -p "$port" -x bench "$backing" \
        >"$tmp/$name.log" 2>&1 &
    local pid=$!
    started_pids+=("$pid")
    if wait_port "$port" "$pid" "$name" 20; then
        pid_of[$name]=$pid; uri_of[$name]="nbd://127.0.0.1:$port/bench"; active+=("$name")
    else
        say "skipping $name: $(tail -n 3 "$tmp/$name.log" | tr '\n' ' ')"
    fi
}

start_nbdkit() {
    local port
    port="$(free_port)"
    nbdkit -f -i 127.0.0.1 -p "$port" file file="$backing" >"$tmp/nbdkit.log" 2>&1 &
    local pid=$!
    started_pids+=("$pid")
    if wait_port "$port" "$pid" nbdkit 20; then
        pid_of[nbdkit]=$pid; uri_of[nbdkit]="nbd://127.0.0.1:$port/bench"; active+=(nbdkit)
    else
        say "skipping nbdkit: $(tail -n 3 "$tmp/nbdkit.log" | tr '\n' ' ')"
    fi
}

start_tessera_file() {
    local port
    port="$(free_port)"
    # Same thread-pool setting as the tessera host (src/Tessera.Cli/Tessera.Cli.csproj), so only the map differs.
    DOTNET_ThreadPool_UnfairSemaphoreSpinLimit="${DOTNET_ThreadPool_UnfairSemaphoreSpinLimit:-0}" \
        dotnet "$root/bench/Tessera.Nbd.Bench/bin/Release/net10.0/Tessera.Nbd.Bench.dll" "$backing" "$port" >"$tmp/tessera-file.log" 2>&1 &
    local pid=$!
    started_pids+=("$pid")
    if wait_port "$port" "$pid" tessera-file 60; then
        pid_of[tessera-file]=$pid; uri_of[tessera-file]="nbd://127.0.0.1:$port/bench"; active+=(tessera-file)
    else
        say "skipping tessera-file: $(tail -n 3 "$tmp/tessera-file.log" | tr '\n' ' ')"
    fi
}

controller_url=""
# start_tessera NAME CHECKOUT: ./tessera up of that checkout with a 1 GiB disk "bench", every segment allocated.
start_tessera() {
    local name="$1" checkout="$2" port cport
    port="$(free_port)"; cport="$(free_port)"
    mkdir -p "$tmp/$name"
    "$checkout/tessera" up --data "$tmp/$name" --nbd-listen "127.0.0.1:$port" --controller-listen "127.0.0.1:$cport" \
        --disk bench --size 1GiB >"$tmp/$name.log" 2>&1 &
    local pid=$!
    started_pids+=("$pid")
    wait_port "$port" "$pid" "$name" 120 || { cat "$tmp/$name.log" >&2; exit 1; }
    local uri="nbd://127.0.0.1:$port/bench"
    wait_export "$uri" "$name" 60 || { cat "$tmp/$name.log" >&2; exit 1; }
    say "$name: copying the backing file into disk bench (allocates every segment)"
    nbdcopy "$backing" "$uri"
    pid_of[$name]=$pid; uri_of[$name]="$uri"; active+=("$name")
    if [[ $name == tessera ]]; then controller_url="http://127.0.0.1:$cport"; tessera_port=$port; fi
}

for s in $servers; do
    case "$s" in
        qemu-threads) start_qemu qemu-threads threads ;;
        qemu-uring) start_qemu qemu-uring io_uring ;;
        nbdkit) start_nbdkit ;;
        tessera) start_tessera tessera "$root" ;;
        tessera-base) start_tessera tessera-base "$baseline" ;;
        tessera-file) start_tessera_file ;;
        *) echo "nbd-peers: unknown server $s" >&2; exit 2 ;;
    esac
done
[[ ${#active[@]} -gt 0 ]] || { echo "nbd-peers: no server started" >&2; exit 1; }
say "servers: ${active[*]}"

# ---------------------------------------------------------------- same page-cache state for every server
# The page cache's folio sizes follow how a file was written: Tessera's pool was filled through 1 MiB writes
# (nbdcopy → agent), the backing file by `head` in small writes. On large folios a 4 KiB write costs several
# times more in ext4 (ext4_block_write_begin walks the whole folio): nbdkit itself measured 8.6 vs 47 µs of CPU
# per 4 KiB write on the same bytes written the two ways. So flush both files, drop them from the cache, and read
# both back the same way (nbdcopy, 256 KiB reads), so every server starts from the same kind of cached pages.
say "re-caching the backing file and Tessera's pool the same way"
python3 - "$backing" "$tmp/tessera/containers/pool0.img" "$tmp/tessera-base/containers/pool0.img" <<'PY'
import os, sys
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
nbdcopy "$backing" null:
[[ -n "${uri_of[tessera]:-}" ]] && nbdcopy "${uri_of[tessera]}" null:
[[ -n "${uri_of[tessera-base]:-}" ]] && nbdcopy "${uri_of[tessera-base]}" null:

# ---------------------------------------------------------------- workloads
fio_args() {
    case "$1" in
        randread-qd1) echo "--rw=randread --bs=4k --iodepth=1" ;;
        randread-qd32) echo "--rw=randread --bs=4k --iodepth=32" ;;
        randwrite-qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        seqread-qd8) echo "--rw=read --bs=1m --iodepth=8" ;;
        seqwrite-qd8) echo "--rw=write --bs=1m --iodepth=8" ;;
        *) echo "nbd-peers: unknown workload $1" >&2; return 2 ;;
    esac
}

results="$tmp/results.tsv"
printf 'round\tworkload\tserver\tjson\tcpu_ticks\n' >"$results"

# One fio run; appends a line to results.tsv. Extra fio arguments follow the first three.
run_fio() {
    local round="$1" workload="$2" server="$3"; shift 3
    local uri="${uri_of[$server]}" pid="${pid_of[$server]}"
    local json="$tmp/r$round-$workload-$server.json"
    local before after
    before="$(cpu_ticks "$pid")"
    if ! timeout $((runtime + ramp + 60)) fio --name="$workload" --ioengine=nbd --uri="$uri" "$@" \
            --output-format=json --output="$json" >"$tmp/fio.stderr" 2>&1; then
        say "fio failed for $server $workload: $(tail -n 3 "$tmp/fio.stderr" | tr '\n' ' ')"
        return 0
    fi
    after="$(cpu_ticks "$pid")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$workload" "$server" "$json" "$((after - before))" >>"$results"
}

n_runs=$(( rounds * $(wc -w <<<"$workloads") * ${#active[@]} ))
say "$n_runs runs of ${runtime}s (+${ramp}s ramp), about $(( n_runs * (runtime + ramp + 1) / 60 + 1 )) min"
for round in $(seq "$rounds"); do
    for w in $workloads; do
        for s in "${active[@]}"; do
            say "round $round/$rounds  $w  $s"
            # shellcheck disable=SC2046
            run_fio "$round" "$w" "$s" $(fio_args "$w") --time_based --runtime="$runtime" --ramp_time="$ramp"
        done
    done
done

# ---------------------------------------------------------------- thin versus allocated
if [[ $thin == 1 && -n "${pid_of[tessera]:-}" ]]; then
    tcli() { "$root/tessera" "$@" --controller "$controller_url" >>"$tmp/tessera-cli.log" 2>&1; }
    for round in $(seq "$rounds"); do
        disk="thin$round"
        tcli disk create "$disk" --size 1GiB
        tcli disk present "$disk" --host local
        uri_of[$disk]="nbd://127.0.0.1:$tessera_port/$disk"; pid_of[$disk]="${pid_of[tessera]}"
        wait_export "${uri_of[$disk]}" "$disk" 30
        # Each byte once, start to end: on the thin disk every 1 MiB write is the first to its segment.
        say "round $round/$rounds  seqwrite-once  thin disk / allocated disk"
        run_fio "$round" thin-seqwrite "$disk" --rw=write --bs=1m --iodepth=8 --size=1g
        run_fio "$round" thin-seqwrite tessera --rw=write --bs=1m --iodepth=8 --size=1g
        tcli disk unpresent "$disk" --host local || true
        tcli disk delete "$disk" || true
    done
fi

# ---------------------------------------------------------------- report
python3 - "$results" "$runtime" "$ramp" "$(getconf CLK_TCK)" "$out" "$rounds" <<'PY'
import json, statistics, sys
results, runtime, ramp, hz, out, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = [l.rstrip("\n").split("\t") for l in open(results)][1:]
data = {}  # (workload, server) -> list of (iops, mibs, p99us, cpu_us_per_io)
for rnd, workload, server, path, ticks in rows:
    try:
        job = json.load(open(path))["jobs"][0]
    except Exception:
        continue
    side = job["write"] if job["write"]["total_ios"] > 0 else job["read"]
    iops = side["iops"]
    mibs = side["bw_bytes"] / 2**20
    pct = side.get("clat_ns", {}).get("percentile", {})
    p99 = pct.get("99.000000", 0) / 1000
    ios = side["total_ios"]
    if workload.startswith("thin"):
        span = job["job_runtime"] / 1000  # size-based run: no ramp, CPU covers exactly the I/Os
    else:
        span = runtime + ramp
    # Time-based runs: fio counts I/Os after the ramp only, the CPU sample covers the ramp too; scale I/Os by the
    # ratio of wall times so both cover the same span.
    ios_span = ios * (span / runtime) if not workload.startswith("thin") else ios
    cpu_us = int(ticks) / hz * 1e6 / ios_span if ios_span else float("nan")
    data.setdefault((workload, server), []).append((iops, mibs, p99, cpu_us))

def med(xs): return statistics.median(xs) if xs else float("nan")
names = {"randread-qd1": "4k random read QD1", "randread-qd32": "4k random read QD32", "randwrite-qd32": "4k random write QD32",
         "seqread-qd8": "1 MiB sequential read QD8", "seqwrite-qd8": "1 MiB sequential write QD8"}
workloads = [w for w in names if any(k[0] == w for k in data)]
servers = []
for _, s in data:
    if s not in servers and not s.startswith("thin"): servers.append(s)
order = ["qemu-threads", "qemu-uring", "nbdkit", "tessera-file", "tessera-base", "tessera"]
servers.sort(key=lambda s: order.index(s) if s in order else 99)
peers = [s for s in servers if s not in ("tessera", "tessera-file", "tessera-base")]

lines = []
lines.append(f"Medians of {rounds} interleaved rounds, {runtime} s per run after a {ramp} s ramp, fio --ioengine=nbd, one connection.")
lines.append("CPU = server CPU time (user+system, all threads) per I/O.")
lines.append("")
lines.append("| workload | server | IOPS | MiB/s | p99 µs | CPU µs/IO |")
lines.append("|---|---|--:|--:|--:|--:|")
summary = []
for w in workloads:
    for s in servers:
        v = data.get((w, s))
        if not v: continue
        lines.append(f"| {names[w]} | {s} | {med([x[0] for x in v]):,.0f} | {med([x[1] for x in v]):,.0f} | {med([x[2] for x in v]):,.0f} | {med([x[3] for x in v]):.1f} |")
    t = data.get((w, "tessera"))
    best = max(peers, key=lambda s: med([x[0] for x in data.get((w, s), [])]) if data.get((w, s)) else -1) if peers else None
    if t and best and data.get((w, best)):
        bi = med([x[0] for x in data[(w, best)]]); ti = med([x[0] for x in t])
        bc = med([x[3] for x in data[(w, best)]]); tc = med([x[3] for x in t])
        summary.append(f"| {names[w]} | {best} | {ti / bi:.2f} | {tc / bc:.2f} |")
identity = []
for w in workloads:
    t, f = data.get((w, "tessera")), data.get((w, "tessera-file"))
    if t and f:
        identity.append(f"| {names[w]} | {med([x[0] for x in t]) / med([x[0] for x in f]):.2f} | {med([x[3] for x in t]) / med([x[3] for x in f]):.2f} |")
if summary:
    lines.append("")
    lines.append("| workload | best peer | Tessera / best peer (throughput) | Tessera / best peer (CPU per I/O) |")
    lines.append("|---|---|--:|--:|")
    lines += summary
if identity:
    lines.append("")
    lines.append("| workload | mapped disk / identity map (throughput) | mapped / identity (CPU per I/O) |")
    lines.append("|---|--:|--:|")
    lines += identity
ab = []
for w in workloads:
    t, b = data.get((w, "tessera")), data.get((w, "tessera-base"))
    if t and b:
        per_round = sorted(x[0] / y[0] for x, y in zip(t, b))
        ab.append(f"| {names[w]} | {med([x[0] for x in t]) / med([x[0] for x in b]):.2f} | {per_round[0]:.2f}–{per_round[-1]:.2f} | {med([x[3] for x in t]) / med([x[3] for x in b]):.2f} |")
if ab:
    lines.append("")
    lines.append("| workload | this checkout / baseline (throughput, medians) | per-round range | this / baseline (CPU per I/O) |")
    lines.append("|---|--:|--:|--:|")
    lines += ab
thin = {s: v for (w, s), v in data.items() if w == "thin-seqwrite"}
fresh = [x for s, v in thin.items() if s.startswith("thin") for x in v]
alloc = thin.get("tessera", [])
if fresh and alloc:
    fm, am = med([x[1] for x in fresh]), med([x[1] for x in alloc])
    lines.append("")
    lines.append("1 MiB sequential write QD8, each byte of a 1 GiB disk written once (medians):")
    lines.append("")
    lines.append("| disk | MiB/s | p99 µs | CPU µs/IO |")
    lines.append("|---|--:|--:|--:|")
    lines.append(f"| fresh thin (every write faults first) | {fm:,.0f} | {med([x[2] for x in fresh]):,.0f} | {med([x[3] for x in fresh]):.1f} |")
    lines.append(f"| allocated | {am:,.0f} | {med([x[2] for x in alloc]):,.0f} | {med([x[3] for x in alloc]):.1f} |")
    lines.append(f"| thin / allocated | {fm / am:.2f} | | |")
text = "\n".join(lines) + "\n"
print(text)
if out:
    open(out, "w").write(text)
PY
[[ -n "$out" ]] && say "wrote $out"
