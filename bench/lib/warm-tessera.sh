# Sourced by bench/thin-cpu.sh and bench/thin-profile.sh: one `tessera up` whose data and control paths are already
# compiled when the measured passes start.
#
#   start_warm_tessera ROOT DIR [extra `tessera up` arguments]
#
# Starts ROOT/tessera up in DIR with a fresh 1 GiB thin disk `bench`, writes a second 1 GiB thin disk `warm` once
# (1 MiB writes, QD8), and sets: pid (the launcher; the caller's cleanup kills it), proc (the dotnet process itself),
# np (its NBD port), cp (its controller port). The environment (e.g. DOTNET_PerfMapEnabled) passes through.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_export() {
    local i
    for i in $(seq 600); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench: $1 never answered" >&2
    return 1
}

start_warm_tessera() {
    local root="$1" dir="$2"
    shift 2
    np="$(free_port)"; cp="$(free_port)"
    "$root/tessera" up --data "$dir" --nbd-listen "127.0.0.1:$np" --controller-listen "127.0.0.1:$cp" --disk bench --size 1GiB "$@" >"$dir/log" 2>&1 &
    pid=$!
    wait_export "nbd://127.0.0.1:$np/bench"
    "$root/tessera" disk create warm --size 1GiB --controller "http://127.0.0.1:$cp" >/dev/null
    "$root/tessera" disk present warm --host local --controller "http://127.0.0.1:$cp" >/dev/null
    wait_export "nbd://127.0.0.1:$np/warm"
    fio --name=warm --ioengine=nbd --uri="nbd://127.0.0.1:$np/warm" --rw=write --bs=1m --iodepth=8 --size=1g >/dev/null
    proc="$(pgrep -P "$pid" -f tessera.dll || echo "$pid")" # the launcher script runs dotnet as its child
}
