#!/usr/bin/env bash
# Longer runs of the store crash-point test (tests/Tessera.Controller.Tests/StoreCrashTests.cs): one run per
# seed, each capturing the store at every commit of a seeded workload of STEPS operations and reopening every
# image (and its torn and power-loss variants) through ControllerCore. Prints each run's figures; exits non-zero
# if any seed fails (its failing images are kept under $TMPDIR/tessera-storecrash-failures).
#   scripts/storecrash.sh [first-seed] [seeds] [steps]      e.g. scripts/storecrash.sh 1 20 200
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
first="${1:-1}" seeds="${2:-5}" steps="${3:-200}"
project="$root/tests/Tessera.Controller.Tests/Tessera.Controller.Tests.csproj"
dotnet build "$project" -c Release -v q --nologo >/dev/null
failed=0
for ((seed = first; seed < first + seeds; seed++)); do
    if out="$(TESSERA_STORECRASH_SEED=$seed TESSERA_STORECRASH_STEPS=$steps dotnet test "$project" -c Release --no-build \
        --filter "FullyQualifiedName~StoreCrashTests.Store_survives" --logger "console;verbosity=detailed" 2>&1)"; then
        echo "seed $seed: pass"
    else
        echo "seed $seed: FAIL"
        failed=$((failed + 1))
    fi
    grep -E "^ *(seed [0-9]+,|[0-9]+ commit images|image [0-9]+)" <<<"$out" | head -20 | sed 's/^ */  /'
done
echo "$seeds seeds of $steps steps, $failed failed"
[[ $failed -eq 0 ]]
