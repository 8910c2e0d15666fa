#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run). Installs the third-party NBD clients the integration tests
# drive, builds the solution once, runs every test project with a bound on time and on any single hang, and
# ends with one line "N passed, N failed[, N skipped]" counted from the TRX results. Exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

# Bounds: the whole test run, and one test that stops making progress (the hang is dumped, the run fails).
test_timeout="${TESSERA_TEST_TIMEOUT:-60m}"
hang_timeout="${TESSERA_TEST_HANG_TIMEOUT:-10m}"
configuration=Release
results="$root/artifacts/test-results"

# --- 1. Tools the integration tests use: binary -> Debian package ------------------------------------------
declare -A package_of=(
    [qemu-img]=qemu-utils [qemu-io]=qemu-utils
    [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin
    [nbdkit]=nbdkit [fio]=fio
)
python_nbd_ok() { /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1; }

missing_packages() {
    local -A want=()
    local tool
    for tool in "${!package_of[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || want[${package_of[$tool]}]=1
    done
    python_nbd_ok || want[python3-libnbd]=1
    echo "${!want[@]}"
}

missing="$(missing_packages)"
if [[ -n "$missing" ]]; then
    if [[ $EUID -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        echo "test.sh: missing packages ($missing) and not root, no sudo: install them and run again" >&2
        exit 1
    fi
    echo "test.sh: installing $missing"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

for tool in qemu-img qemu-io nbdinfo nbdcopy nbdkit fio; do
    command -v "$tool" >/dev/null 2>&1 || { echo "test.sh: error: $tool is still missing after installing ${package_of[$tool]}" >&2; exit 1; }
done
python_nbd_ok || { echo "test.sh: error: /usr/bin/python3 cannot import nbd (package python3-libnbd)" >&2; exit 1; }

# --- 2. Build once --------------------------------------------------------------------------------------
echo "test.sh: building ($configuration)"
build_log="$root/artifacts/test-build.log"
mkdir -p "$root/artifacts"
if ! dotnet build Tessera.slnx -c "$configuration" -nologo -v quiet >"$build_log" 2>&1; then
    cat "$build_log" >&2
    echo "test.sh: error: build failed"
    echo "0 passed, 1 failed"
    exit 1
fi

# --- 3. Test, bounded -----------------------------------------------------------------------------------
rm -rf "$results"
mkdir -p "$results"
test_log="$root/artifacts/test-output.log"
set +e
timeout --kill-after=30s "$test_timeout" \
    dotnet test Tessera.slnx -c "$configuration" --no-build -nologo \
        --results-directory "$results" \
        --logger "trx;LogFilePrefix=tessera" \
        --logger "console;verbosity=normal" \
        --blame-hang --blame-hang-timeout "$hang_timeout" --blame-hang-dump-type mini 2>&1 | tee "$test_log"
test_rc=${PIPESTATUS[0]}
set -e

# --- 4. Count -------------------------------------------------------------------------------------------
# Each test project's run ends with a console summary block ("Total tests: N", "Passed: N", "Failed: N",
# "Skipped: N"); those are summed. The TRX files are the fallback (and the detailed record in $results).
read -r passed failed skipped total < <(/usr/bin/python3 - "$test_log" "$results" <<'PY'
import glob, re, sys, xml.etree.ElementTree as ET
log, results = sys.argv[1], sys.argv[2]
sums = {"total": 0, "passed": 0, "failed": 0, "skipped": 0}
pattern = re.compile(r"^\s*(Total tests|Passed|Failed|Skipped):\s+(\d+)\s*$")
names = {"Total tests": "total", "Passed": "passed", "Failed": "failed", "Skipped": "skipped"}
with open(log, errors="replace") as f:
    for line in f:
        m = pattern.match(line)
        if m:
            sums[names[m.group(1)]] += int(m.group(2))
if sums["total"] == 0:
    for path in glob.glob(f"{results}/**/*.trx", recursive=True):
        counters = ET.parse(path).getroot().find(".//{*}ResultSummary/{*}Counters")
        if counters is None:
            continue
        get = lambda name: int(counters.get(name, "0"))
        sums["total"] += get("total")
        sums["passed"] += get("passed")
        sums["failed"] += get("failed") + get("error") + get("timeout") + get("aborted")
        sums["skipped"] += get("notExecuted") + get("inconclusive")
print(sums["passed"], sums["failed"], sums["skipped"], sums["total"])
PY
)

status=0
if [[ $test_rc -ne 0 ]]; then
    status=1
    if [[ $failed -eq 0 ]]; then
        # The runner failed without a failed result: a crashed or hung test host, or the overall timeout.
        [[ $test_rc -eq 124 || $test_rc -eq 137 ]] && echo "test.sh: the test run exceeded $test_timeout and was stopped" \
            || echo "test.sh: dotnet test exited with $test_rc without a failed result (test host crash or hang; see $results)"
        failed=1
    fi
fi
[[ $failed -gt 0 ]] && status=1
if [[ $total -eq 0 ]]; then
    echo "test.sh: error: no test ran"
    status=1
fi

if [[ $skipped -gt 0 ]]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
exit $status
