#!/usr/bin/env bash
# Installs the third-party NBD clients the interop tests drive, then builds and runs the NBD tests.
# The tests fail (never skip) when one of these tools is missing, and point here.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in qemu-io qemu-img nbdinfo nbdcopy fio; do command -v "$tool" >/dev/null || need+=("$tool"); done
/usr/bin/python3 -c 'import nbd' 2>/dev/null || need+=(python3-libnbd)
if ((${#need[@]})); then
  echo "installing: qemu-utils nbdkit libnbd-bin python3-libnbd fio (missing: ${need[*]})"
  sudo apt-get update && sudo apt-get install -y qemu-utils nbdkit libnbd-bin python3-libnbd fio
fi
dotnet build tests/Tessera.Nbd.Tests
dotnet test tests/Tessera.Nbd.Tests --no-build "$@"
