#!/usr/bin/env bash
# Fresh thin disk versus allocated disk, 1 MiB sequential writes at QD8, each byte written once (issue 5's
# "fresh thin disk sequential write >= 0.8x the allocated disk"), for one or more Tessera builds side by side.
#
#   bench/thin-write.sh [--rounds N] [--size-gib G] [--roots "DIR_A DIR_B ..."] [--tmp-dir DIR] [--warm W] [--out FILE.md]
#
# --warm W (default 0) first writes W thin disks of G GiB once per build (kept, so nothing is freed), so the control
# path is compiled to its last tier before anything is measured, as in a server that has been running for a while: a
# young process spends about half its CPU in the JIT during its first GiB of thin writes (docs/benchmarks.md).
#
# --tmp-dir (default /tmp) holds every store and container. On tmpfs (/dev/shm) no dirty-page writeback throttles the
# writers, which isolates Tessera's own costs; it needs about (rounds + 2) x G GiB of memory per root. The controllers'
# SQLite stores stay on /tmp either way (a symlink), so every allocation still pays its real fsync.
#
# For each root (a Tessera source tree; default: this one) it starts `ROOT/tessera up` with a 1 GiB disk `bench`,
# allocates it fully with one fio pass, and adds a second, fresh sparse container big enough for every thin disk
# of the run, exactly (so each thin disk lands on never-used units, as on a new pool; the emptiest container gets new
# segments). Then per round, interleaving the roots (A B, then B A, ...): create + present disk thinN, fio
# --rw=write --bs=1m --iodepth=8 --size=G once over it (every write is the first to its segment), then the same
# over the allocated disk. Thin disks are kept until the end, so later rounds do not reuse freed units. A last
# "reused" pass deletes the thin disks and writes one more thin disk onto their freed (zeroed on reuse) units.
# Each round also measures the filesystem alone (row "filesystem"): fio --ioengine=psync 1 MiB writes into a new sparse
# file in the same directory (the thin case: every write fills a hole), then over that file again (the allocated
# case: blocks exist, pages are cached), which is the ceiling any server storing data in a sparse file can reach.
# After each allocated pass the same disk is written once more with its container first written back and dropped from
# the page cache (row "allocated, evicted first"; the filesystem row does the same to its file): then the allocated
# write also fills new page-cache pages, as the thin one must, so thin / evicted separates what Tessera's thin path costs
# from what the page cache's state costs.
# Prints per-root medians of MiB/s and the ratio thin / allocated. Stops everything it started.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=3
size_gib=1
roots="$here"
out=""
tmp_dir="/tmp"
warm=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --size-gib) size_gib="$2"; shift 2 ;;
        --roots) roots="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --tmp-dir) tmp_dir="$2"; shift 2 ;;
        --warm) warm="$2"; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "thin-write: unknown argument $1" >&2; exit 2 ;;
    esac
done
say() { printf '[thin-write %s] %s\n' "$(date +%T)" "$*" >&2; }
command -v fio >/dev/null || { echo "thin-write: needs fio (apt-get install fio)" >&2; exit 1; }

tmp="$(mktemp -d "$tmp_dir/thin-write.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
stores="$(mktemp -d /tmp/thin-write-stores.XXXXXX)"
trap 'cleanup; rm -rf "$stores"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_export() {
    local uri="$1" i
    for i in $(seq 600); do nbdinfo --size "$uri" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "thin-write: $uri never answered" >&2; return 1
}

declare -A nbd_port=() ctl=()
i=0
for r in $roots; do
    i=$((i + 1)); name="b$i"
    mkdir -p "$tmp/$name" "$stores/$name"
    ln -s "$stores/$name" "$tmp/$name/controller" # `up` keeps its store in DATA/controller
    np="$(free_port)"; cp="$(free_port)"
    "$r/tessera" up --data "$tmp/$name" --nbd-listen "127.0.0.1:$np" --controller-listen "127.0.0.1:$cp" \
        --disk bench --size "${size_gib}GiB" >"$tmp/$name.log" 2>&1 &
    pids+=($!)
    nbd_port[$name]=$np; ctl[$name]="http://127.0.0.1:$cp"
    wait_export "nbd://127.0.0.1:$np/bench"
    say "$name ($r): allocating disk bench"
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$np/bench" --rw=write --bs=1m --iodepth=8 --size="${size_gib}g" >/dev/null
    "$r/tessera" container add fresh "file://$tmp/$name/fresh.img" --size "$(( (rounds + warm) * size_gib ))GiB" --controller "${ctl[$name]}" >/dev/null
    for w in $(seq "$warm"); do
        say "$name: warm-up thin disk $w/$warm"
        "$r/tessera" disk create "warm$w" --size "${size_gib}GiB" --controller "${ctl[$name]}" >/dev/null
        "$r/tessera" disk present "warm$w" --host local --controller "${ctl[$name]}" >/dev/null
        wait_export "nbd://127.0.0.1:$np/warm$w"
        fio --name=warm --ioengine=nbd --uri="nbd://127.0.0.1:$np/warm$w" --rw=write --bs=1m --iodepth=8 --size="${size_gib}g" >/dev/null
    done
done

results="$tmp/results.tsv"
run_seq=0
: >"$results"
run() { # root-name label disk
    local name="$1" label="$2" disk="$3" json="$tmp/$1-$2-$3-$((++run_seq)).json"
    fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:${nbd_port[$name]}/$disk" --rw=write --bs=1m --iodepth=8 \
        --size="${size_gib}g" --output-format=json --output="$json" >/dev/null
    printf '%s\t%s\t%s\n' "$name" "$label" "$json" >>"$results"
}
evict() { # files: written back, then dropped from the page cache (the "allocated, evicted" passes)
    python3 - "$@" <<'PY'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
thin_disk() { # root name disk
    "$1/tessera" disk create "$3" --size "${size_gib}GiB" --controller "${ctl[$2]}" >/dev/null
    "$1/tessera" disk present "$3" --host local --controller "${ctl[$2]}" >/dev/null
    wait_export "nbd://127.0.0.1:${nbd_port[$2]}/$3"
}
order=() # "name root" pairs; reversed on even rounds, so no build always runs right after the other's writes
i=0
for r in $roots; do i=$((i + 1)); order+=("b$i $r"); done
for round in $(seq "$rounds"); do
    if (( round % 2 == 0 )); then idx=$(seq $(( ${#order[@]} - 1 )) -1 0); else idx=$(seq 0 $(( ${#order[@]} - 1 ))); fi
    for k in $idx; do
        read -r name r <<<"${order[$k]}"
        thin_disk "$r" "$name" "thin$round"
        say "round $round/$rounds $name: thin, then allocated"
        run "$name" thin "thin$round"
        run "$name" allocated bench
        evict "$tmp/$name/containers/pool0.img"
        run "$name" evicted bench
    done
    fs_file="$tmp/fs-round$round.img"
    truncate -s "${size_gib}G" "$fs_file"
    for label in thin allocated evicted; do
        json="$tmp/fs-$label-$round.json"
        [[ $label == evicted ]] && evict "$fs_file"
        fio --name=fs --filename="$fs_file" --ioengine=psync --rw=write --bs=1m --size="${size_gib}g" --fallocate=none \
            --invalidate=0 --output-format=json --output="$json" >/dev/null
        printf '%s\t%s\t%s\n' fs "$label" "$json" >>"$results"
    done
    rm -f "$fs_file"
done
i=0
for r in $roots; do
    i=$((i + 1)); name="b$i"
    for round in $(seq "$rounds"); do
        "$r/tessera" disk unpresent "thin$round" --host local --controller "${ctl[$name]}" >/dev/null
        "$r/tessera" disk delete "thin$round" --controller "${ctl[$name]}" >/dev/null
    done
    # The fresh container is now the emptiest, and all its free units are freed ones (below its mark).
    thin_disk "$r" "$name" reused
    say "$name: thin disk on reused units"
    run "$name" reused reused
done

python3 - "$results" "$roots" "$out" <<'PY'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
roots = sys.argv[2].split()
bw = {}
for name, label, path in rows:
    j = json.load(open(path))["jobs"][0]["write"]
    bw.setdefault((name, label), []).append(j["bw_bytes"] / 2**20)
lines = ["| build | fresh thin MiB/s | allocated MiB/s | thin / allocated | allocated, evicted first MiB/s | thin / allocated evicted | thin on reused units MiB/s | runs (thin; allocated; evicted) |", "|---|--:|--:|--:|--:|--:|--:|---|"]
for i, root in enumerate(roots + ["filesystem (fio psync on a sparse file)"], 1):
    n = f"b{i}" if i <= len(roots) else "fs"
    t, a, ev, ru = bw.get((n, "thin"), []), bw.get((n, "allocated"), []), bw.get((n, "evicted"), []), bw.get((n, "reused"), [])
    if not t or not a: continue
    tm, am = statistics.median(t), statistics.median(a)
    em = statistics.median(ev) if ev else 0
    runs = "; ".join(" ".join(f"{x:.0f}" for x in v) for v in (t, a, ev))
    lines.append(f"| {root} | {tm:,.0f} | {am:,.0f} | {tm / am:.2f} | {em:,.0f} | {tm / em if em else 0:.2f} | {statistics.median(ru) if ru else 0:,.0f} | {runs} |")
text = "\n".join(lines)
print(text)
if sys.argv[3]:
    open(sys.argv[3], "w").write(text + "\n")
PY
