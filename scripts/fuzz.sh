#!/usr/bin/env bash
# Coverage-guided fuzzing of Tessera's parsers with SharpFuzz + AFL++ (docs/reliability.md, "Coverage-guided fuzzing").
#   scripts/fuzz.sh TARGET|all [--minutes M] [--reuse-build]     TARGET: handshake transmission client admin parsers
# Installs afl++ (Debian) and the SharpFuzz tool (.config/dotnet-tools.json) when missing, builds fuzz/Tessera.Fuzz,
# instruments the Tessera assemblies, runs one afl-fuzz instance per target (one after the other) for M minutes each
# (default 10), and prints executions, paths, crashes and hangs and where they are saved. --reuse-build keeps the
# instrumented build of an earlier run (building takes minutes on a loaded machine).
# Replay a finding (uninstrumented build): dotnet run --project fuzz/Tessera.Fuzz -c Release -- TARGET --replay FILE...
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

all_targets=(handshake transmission client admin parsers)
usage() { echo "usage: scripts/fuzz.sh ${all_targets[*]// /|}|all [--minutes M] [--reuse-build]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
target_arg="$1"; shift
minutes=10
reuse_build=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes) [[ $# -ge 2 ]] || usage; minutes="$2"; shift 2 ;;
        --reuse-build) reuse_build=1; shift ;;
        *) usage ;;
    esac
done
[[ "$minutes" =~ ^[0-9]+$ && "$minutes" -gt 0 ]] || { echo "fuzz.sh: --minutes needs a whole number > 0" >&2; exit 2; }
if [[ "$target_arg" == all ]]; then targets=("${all_targets[@]}")
elif [[ " ${all_targets[*]} " == *" $target_arg "* ]]; then targets=("$target_arg")
else usage; fi

# --- 1. Tools ---------------------------------------------------------------------------------------------
if ! command -v afl-fuzz >/dev/null 2>&1; then
    if [[ $EUID -eq 0 ]]; then as_root=(); elif command -v sudo >/dev/null 2>&1; then as_root=(sudo -n); else
        echo "fuzz.sh: afl-fuzz is missing and I am not root (no sudo): apt-get install afl++" >&2; exit 1; fi
    echo "fuzz.sh: installing afl++"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends afl++ >/dev/null
fi
dotnet tool restore >/dev/null

# --- 2. Build into a fresh directory and instrument ------------------------------------------------------
# SharpFuzz rewrites the IL of the assemblies under test to report branch coverage to AFL++'s shared memory;
# an assembly can be instrumented once, so every run starts from a clean build output.
out="$root/artifacts/fuzz"
bin="$out/bin"
mkdir -p "$out"
if [[ $reuse_build -eq 1 && -f "$bin/.instrumented" ]]; then
    echo "fuzz.sh: reusing the instrumented build in $bin"
else
    rm -rf "$bin"
    echo "fuzz.sh: building fuzz/Tessera.Fuzz"
    dotnet build fuzz/Tessera.Fuzz/Tessera.Fuzz.csproj -c Release -nologo -v quiet -o "$bin" >"$out/build.log" 2>&1 \
        || { cat "$out/build.log" >&2; echo "fuzz.sh: build failed" >&2; exit 1; }
    # The product assemblies, not the harness: coverage of the code under test is what guides AFL++.
    for asm in Tessera.Nbd.dll Tessera.Core.dll Tessera.Controller.dll tessera.dll; do
        dotnet sharpfuzz "$bin/$asm" >/dev/null
    done
    touch "$bin/.instrumented"
    echo "fuzz.sh: instrumented Tessera.Nbd, Tessera.Core, Tessera.Controller, tessera (CLI)"
fi

# --- 3. Fuzz ------------------------------------------------------------------------------------------------
# AFL_SKIP_BIN_CHECK: the program afl-fuzz starts is `dotnet`, which has no AFL instrumentation of its own; the
#   coverage comes from the SharpFuzz-instrumented assemblies through the shared memory map.
# AFL_SKIP_CPUFREQ / AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES: in a container we may not set the CPU governor or
#   /proc/sys/kernel/core_pattern; neither changes what is found (crashes are reported by SharpFuzz, not core files).
# AFL_NO_AFFINITY: the machine is shared; do not pin a core. AFL_NO_UI: plain log lines instead of the curses screen.
# -m none: the .NET runtime reserves far more virtual memory than afl's default limit. -t: per input, in ms, with
#   room for the first (JIT-compiling) runs on a loaded machine.
export AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
summary=()
for t in "${targets[@]}"; do
    findings="$out/findings/$t"
    rm -rf "$findings"
    mkdir -p "$findings"
    echo "fuzz.sh: fuzzing $t for $minutes min (corpus fuzz/corpus/$t, findings $findings)"
    nice -n 10 afl-fuzz -V $((minutes * 60)) -i "fuzz/corpus/$t" -o "$findings" -t 10000 -m none \
        -- dotnet "$bin/Tessera.Fuzz.dll" "$t" >"$out/$t.log" 2>&1 || { tail -30 "$out/$t.log" >&2; echo "fuzz.sh: afl-fuzz failed for $t" >&2; exit 1; }
    # afl-fuzz ends the harness with a signal, so the admin target's store on tmpfs is not removed by its Dispose.
    rm -rf /dev/shm/tessera-fuzz-admin-* "${TMPDIR:-/tmp}"/tessera-fuzz-admin-*
    stats="$findings/default/fuzzer_stats"
    stat() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
    line="$t: $(stat execs_done) execs ($(stat execs_per_sec)/s), $(stat corpus_count) paths, edge coverage $(stat bitmap_cvg), $(stat saved_crashes) crashes, $(stat saved_hangs) hangs; crashes in $findings/default/crashes, hangs in $findings/default/hangs"
    echo "fuzz.sh: $line"
    summary+=("$line")
done
echo "fuzz.sh: summary ($minutes min per target)"
printf '  %s\n' "${summary[@]}"
