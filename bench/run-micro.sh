#!/usr/bin/env bash
# Runs the BenchmarkDotNet microbenchmarks of bench/Tessera.Benchmarks (with the memory diagnoser).
#
#   bench/run-micro.sh                       # every benchmark, short job, in-process (a few minutes)
#   bench/run-micro.sh --filter '*Nbd*'      # a subset (BenchmarkDotNet glob on Class.Method)
#   MICRO_JOB=default bench/run-micro.sh     # the full-length job (minutes per benchmark)
#
# Extra arguments go to BenchmarkDotNet. In-process runs avoid a rebuild per benchmark, which matters on a
# small shared machine; set MICRO_INPROCESS=0 for separate processes. Results land in
# bench/BenchmarkDotNet.Artifacts/results (markdown and CSV).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
job="${MICRO_JOB:-short}"
args=(--job "$job" --artifacts "$root/bench/BenchmarkDotNet.Artifacts")
[[ "${MICRO_INPROCESS:-1}" == 1 ]] && args+=(--inProcess)
has_filter=0
for a in "$@"; do [[ "$a" == --filter || "$a" == -f ]] && has_filter=1; done
[[ $has_filter == 1 ]] || args+=(--filter '*')
dotnet build "$root/bench/Tessera.Benchmarks/Tessera.Benchmarks.csproj" -c Release -nologo -v quiet
exec dotnet "$root/bench/Tessera.Benchmarks/bin/Release/net10.0/Tessera.Benchmarks.dll" "${args[@]}" "$@"
