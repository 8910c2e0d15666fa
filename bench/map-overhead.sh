#!/usr/bin/env bash
# What the mapping table and the agent cost per request: `tessera up` (a 1 GiB mapped disk) against the same NBD server
# with no agent, controller or map (bench/Tessera.Nbd.Bench on a plain 1 GiB file), 4k random reads at QD1, one
# server at a time, two rounds: perf stat (CPU time and context switches per I/O) of each server process, and in the
# second round perf record, summarised by thread and by DSO (where the agent's extra CPU goes: its own code, the JIT,
# the controller's threads). Needs perf and fio. Keeps its temp dir (named at the end) for perf report.
#
#   bench/map-overhead.sh
set -euo pipefail
R="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v perf >/dev/null || { echo "map-overhead: needs perf (apt-get install linux-perf)" >&2; exit 1; }
"$R/tessera" --help >/dev/null
dotnet build "$R/bench/Tessera.Nbd.Bench/Tessera.Nbd.Bench.csproj" -c Release -nologo -v quiet >/dev/null
d=$(mktemp -d /tmp/mapgap.XXXXXX)
head -c $((1<<30)) /dev/urandom > $d/backing.img
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
np=$(free_port); cp=$(free_port); fp=$(free_port)
tpid=""; fpid=""
trap 'kill $tpid $fpid 2>/dev/null || true' EXIT
DOTNET_PerfMapEnabled=1 $R/tessera up --data $d/t --nbd-listen 127.0.0.1:$np --controller-listen 127.0.0.1:$cp --disk bench --size 1GiB > $d/t.log 2>&1 &
tpid=$!
DOTNET_PerfMapEnabled=1 DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=0 dotnet $R/bench/Tessera.Nbd.Bench/bin/Release/net10.0/Tessera.Nbd.Bench.dll $d/backing.img $fp > $d/f.log 2>&1 &
fpid=$!
for i in $(seq 300); do nbdinfo --size nbd://127.0.0.1:$np/bench >/dev/null 2>&1 && nbdinfo --size nbd://127.0.0.1:$fp/bench >/dev/null 2>&1 && break; sleep 0.2; done
nbdcopy $d/backing.img nbd://127.0.0.1:$np/bench
tproc=$(pgrep -P $tpid -f tessera.dll || echo $tpid)
for round in 1 2; do
for s in tessera file; do
  if [[ $s == tessera ]]; then port=$np; pid=$tproc; else port=$fp; pid=$fpid; fi
  fio --name=w --ioengine=nbd --uri=nbd://127.0.0.1:$port/bench --rw=randread --bs=4k --iodepth=1 --time_based --runtime=2 >/dev/null 2>&1
  perf stat -e task-clock,context-switches,cpu-migrations -p $pid -o $d/$s.stat -- sleep 5 >/dev/null 2>&1 &
  sp=$!
  [[ $round == 2 ]] && { perf record -F 2999 -g -p $pid -o $d/$s.perf -- sleep 5 >/dev/null 2>&1 & rp=$!; }
  fio --name=w --ioengine=nbd --uri=nbd://127.0.0.1:$port/bench --rw=randread --bs=4k --iodepth=1 --time_based --runtime=5 --output-format=json --output=$d/$s.json >/dev/null 2>&1
  wait $sp || true; [[ $round == 2 ]] && { wait $rp || true; }
  ios=$(python3 -c "import json; print(json.load(open('$d/$s.json'))['jobs'][0]['read']['total_ios'])")
  tc=$(awk '/task-clock/ {gsub(",","",$1); print $1}' $d/$s.stat); cs=$(awk '/context-switches/ {gsub(",","",$1); print $1}' $d/$s.stat)
  python3 -c "print('$s round $round', $ios, 'ios', round($tc*1000/$ios,2), 'us CPU/IO', round($cs/$ios,2), 'cs/IO')"
done
done
for s in tessera file; do echo "== $s by thread"; perf report -i $d/$s.perf --no-children --sort comm -g none 2>/dev/null | grep -E "^ +[0-9]" | head -8; echo "== $s by dso"; perf report -i $d/$s.perf --no-children --sort dso -g none 2>/dev/null | grep -E "^ +[0-9]" | head -8; done
kill $tpid $fpid 2>/dev/null; wait 2>/dev/null || true; rm -f $d/backing.img; rm -rf $d/t; echo "kept $d"
