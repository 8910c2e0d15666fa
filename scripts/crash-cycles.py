#!/usr/bin/python3
"""Crash cycles with real processes: kill -9 `tessera up` while a client writes, restart, verify.

Each cycle starts `tessera up` on one data directory, reads back every block the model knows about, then writes
self-describing 4 KiB blocks (each encodes its block number and a generation) at random offsets through libnbd,
flushing now and then, and kills the whole process with SIGKILL at a random moment. The model remembers, per
block, the last generation whose write was acknowledged and the last one that was attempted. After the restart a
block must hold a generation between those two (a write in flight at the kill may or may not have landed), and
every 8-byte word of the block must agree (no torn or misplaced block). A killed process loses nothing the
kernel already accepted, so every acknowledged write must survive, flushed or not.

Usage: scripts/crash-cycles.py [--cycles N] [--seed S] [--disk-mib M] [--keep DIR]
Exit status 0 when every cycle verified; prints a summary line. TESSERA_COMMAND (e.g. "dotnet /path/tessera.dll")
overrides the ./tessera launcher, as the integration test does.
"""
import argparse, os, random, shutil, signal, socket, struct, subprocess, sys, tempfile, threading, time

import nbd  # python3-libnbd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 4096
TESSERA = os.environ.get("TESSERA_COMMAND", os.path.join(ROOT, "tessera")).split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(block, gen):
    word = struct.pack("<II", block, gen)
    return word * (BLOCK // 8)


def decode(data, block):
    """Returns the generation the block holds (0 = never written) or raises on a torn/misplaced block."""
    if data == b"\0" * BLOCK:
        return 0
    first = data[:8]
    if first * (BLOCK // 8) != data:
        raise AssertionError(f"block {block} is torn: it mixes more than one write")
    b, gen = struct.unpack("<II", first)
    if b != block:
        raise AssertionError(f"block {block} holds block {b}'s data (misplaced write)")
    return gen


class Up:
    def __init__(self, data_dir, disk_mib):
        self.nbd_port, self.ctl_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            TESSERA + ["up", "--data", data_dir, "--disk", "crash", "--size", f"{disk_mib}MiB",
             "--nbd-listen", f"127.0.0.1:{self.nbd_port}", "--controller-listen", f"127.0.0.1:{self.ctl_port}",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        deadline = time.time() + 120
        for line in self.proc.stdout:
            if line.startswith("tessera: serving"):
                break
            if time.time() > deadline:
                raise TimeoutError("tessera up did not start serving")
        else:
            raise RuntimeError(f"tessera up exited with {self.proc.wait()} before serving")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def uri(self):
        return f"nbd://127.0.0.1:{self.nbd_port}/crash"

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--disk-mib", type=int, default=64)
    ap.add_argument("--keep")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    blocks = a.disk_mib * (1 << 20) // BLOCK
    acked, attempted = {}, {}
    data_dir = a.keep or tempfile.mkdtemp(prefix="tessera-crash-")
    gen = 0
    totals = {"writes": 0, "flushes": 0, "verified": 0, "in_flight_at_kill": 0}
    print(f"crash-cycles: seed {a.seed}, {a.cycles} cycles, {blocks} blocks, data {data_dir}", flush=True)
    try:
        for cycle in range(1, a.cycles + 1):
            up = Up(data_dir, a.disk_mib)
            h = nbd.NBD()
            h.connect_uri(up.uri())
            # 1. Everything acknowledged before the last kill must be there.
            for block in sorted(attempted):
                got = decode(h.pread(BLOCK, block * BLOCK), block)
                lo, hi = acked.get(block, 0), attempted[block]
                if not lo <= got <= hi:
                    raise AssertionError(f"cycle {cycle} (seed {a.seed}): block {block} holds generation {got}, "
                                         f"acknowledged {lo}, last attempted {hi}")
                acked[block] = got  # what is there now is the baseline; a later lower value would be a loss
                attempted[block] = got
                totals["verified"] += 1
            # 2. Write until killed at a random moment.
            kill_at = time.time() + rng.uniform(0.05, 1.5)
            killer = threading.Timer(max(0.0, kill_at - time.time()), up.kill)
            killer.start()
            in_flight = None
            try:
                while True:
                    block = rng.randrange(blocks)
                    gen += 1
                    attempted[block] = gen
                    in_flight = block
                    h.pwrite(payload(block, gen), block * BLOCK)
                    acked[block] = gen
                    in_flight = None
                    totals["writes"] += 1
                    if rng.random() < 0.05:
                        h.flush()
                        totals["flushes"] += 1
            except nbd.Error:
                if in_flight is not None:
                    totals["in_flight_at_kill"] += 1
            killer.join()
            try:
                h.shutdown()
            except nbd.Error:
                pass
            print(f"cycle {cycle}: ok ({totals['writes']} writes acknowledged so far)", flush=True)
        # A last restart verifies the final cycle's writes.
        up = Up(data_dir, a.disk_mib)
        h = nbd.NBD()
        h.connect_uri(up.uri())
        for block in sorted(attempted):
            got = decode(h.pread(BLOCK, block * BLOCK), block)
            if not (acked.get(block, 0) <= got <= attempted[block]):
                raise AssertionError(f"final check (seed {a.seed}): block {block} holds {got}, acknowledged {acked.get(block, 0)}")
            totals["verified"] += 1
        h.shutdown()
        up.kill()
    except AssertionError as e:
        print(f"crash-cycles: FAILED: {e}", flush=True)
        print(f"0 passed, 1 failed")
        return 1
    finally:
        if not a.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"crash-cycles: {a.cycles} kill -9 cycles, {totals['writes']} acknowledged writes, {totals['flushes']} flushes, "
          f"{totals['verified']} block verifications, {totals['in_flight_at_kill']} writes in flight at a kill, 0 errors (seed {a.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
