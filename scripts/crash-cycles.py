#!/usr/bin/python3
"""Crash cycles with real processes: kill -9 Tessera while clients write, restart, verify.

Each cycle starts Tessera on one data directory, reads back every block the model knows about, then writes
self-describing 4 KiB blocks (each encodes its block number and a generation) at random offsets through libnbd,
flushing now and then, and kills processes with SIGKILL at a random moment. The model remembers, per block, the
last generation whose write was acknowledged and the last one that was attempted. After the restart a block must
hold a generation between those two (a write in flight at the kill may or may not have landed), and every 8-byte
word of the block must agree (no torn or misplaced block). A killed process loses nothing the kernel already
accepted, so every acknowledged write must survive, flushed or not.

Modes:
  --mode up      kill `tessera up` (controller + agent + file container in one process).
  --mode split   `tessera controller` and `tessera agent` as separate processes on two file containers; each
                 cycle kills, at random, the agent, the controller, or both (at independent moments). Killing
                 only the controller must not interrupt the data path: the client keeps writing through it and
                 any NBD error is a failure.
  --during migrate,snapshot   (split) in a random subset of cycles start a disk migration or container
                 evacuation (--no-wait) and/or `tessera snapshot create` just before the kill. After the restart
                 every job must finish "done" (resumed or rolled back), and every snapshot that exists must read
                 back the model's image at the snapshot point: each block at least the generation acknowledged
                 before the command was sent and at most the last one attempted when it returned. A snapshot the
                 CLI reported as created must exist.
  --fio          (split) also run `fio --ioengine=nbd --verify=crc32c --fsync=N` on a second disk each cycle,
                 killed with the rest, and after the restart a `--verify_only --verify_state_load=1` pass; see
                 docs/reliability.md for what exactly that verifies.

Usage: scripts/crash-cycles.py [--mode up|split] [--targets agent,controller,both] [--round-robin]
                               [--during migrate,snapshot] [--op-probability P] [--fio] [--fio-mib M]
                               [--cycles N] [--seed S] [--disk-mib M] [--keep DIR]
Exit status 0 when every cycle verified; prints a summary line. TESSERA_COMMAND (e.g. "dotnet /path/tessera.dll")
overrides the ./tessera launcher, as the integration test does.
"""
import argparse, collections, json, os, random, re, shutil, signal, socket, struct, subprocess, sys, tempfile, threading, time

import nbd  # python3-libnbd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 4096
PORTS = random.SystemRandom()  # independent of --seed: two runs with one seed must not pick the same ports
TESSERA = os.environ.get("TESSERA_COMMAND", os.path.join(ROOT, "tessera")).split()
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 180


def free_port():
    """A free port below the kernel's ephemeral range: there no outgoing connection (this machine runs many NBD
    clients) can take it between this check and the server's bind, nor while a killed role is down."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError):
        pass
    while True:
        port = PORTS.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


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


class Role:
    """One tessera process in its own session (so SIGKILL takes all of it), started when its ready line appears."""

    def __init__(self, args, ready, what, log_path):
        self.what = what
        with open(log_path, "a") as log:  # stderr of every incarnation, for the failure message
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(args)}\n")
            self.proc = subprocess.Popen(TESSERA + args, stdout=subprocess.PIPE, stderr=log, text=True,
                                         start_new_session=True)
        deadline = time.time() + START_TIMEOUT_S
        for line in self.proc.stdout:
            if ready(line):
                break
            if time.time() > deadline:
                self.kill()
                raise TimeoutError(f"{what} did not get ready in {START_TIMEOUT_S} s")
        else:
            with open(log_path) as log:
                tail = log.read()[-3000:]
            raise RuntimeError(f"{what} exited with {self.proc.wait()} before it was ready; stderr:\n{tail}")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    @property
    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def connect(host, port, export, deadline_s=START_TIMEOUT_S):
    """Connects once the export exists (a restarted agent lists a disk only after the controller sent its table)."""
    deadline = time.time() + deadline_s
    while True:
        h = nbd.NBD()
        h.set_export_name(export)
        try:
            h.connect_tcp(host, str(port))
            return h
        except nbd.Error:
            if time.time() > deadline:
                raise
            time.sleep(0.05)  # polling for a condition (export listed), not a fixed wait


class UpCluster:
    """`tessera up`: one process; every kill takes controller and agent together."""
    targets = ("up",)

    def __init__(self, data_dir, disk_mib):
        self.data_dir, self.disk_mib, self.up = data_dir, disk_mib, None

    def start(self):
        self.nbd_port, ctl_port = free_port(), free_port()
        self.up = Role(["up", "--data", self.data_dir, "--disk", "crash", "--size", f"{self.disk_mib}MiB",
                        "--nbd-listen", f"127.0.0.1:{self.nbd_port}", "--controller-listen", f"127.0.0.1:{ctl_port}",
                        "--log-level", "warning"],
                       lambda l: l.startswith("tessera: serving"), "tessera up", os.path.join(self.data_dir, "up-stderr.log"))

    def kill(self, target):
        self.up.kill()

    def stop(self):
        if self.up:
            self.up.kill()


class SplitCluster:
    """`tessera controller` + `tessera agent --host h1` as two processes, two file containers, disks presented to h1."""
    targets = ("agent", "controller", "both")

    def __init__(self, data_dir, disk_mib, fio_mib):
        self.data_dir, self.disk_mib, self.fio_mib = data_dir, disk_mib, fio_mib
        # Fixed for the whole run: a restarted agent must find its controller at the same address.
        self.ctl_port, self.nbd_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.ctl_port}"
        self.controller = self.agent = None

    def start_controller(self):
        self.controller = Role(["controller", "--data", os.path.join(self.data_dir, "controller"),
                                "--listen", f"127.0.0.1:{self.ctl_port}", "--log-level", "warning"],
                               lambda l: l.startswith("tessera: controller serving"), "tessera controller",
                               os.path.join(self.data_dir, "controller.log"))

    def start_agent(self):
        # "registered" needs the controller; a killed-controller-only cycle never restarts the agent.
        self.agent = Role(["agent", "--controller", self.url, "--host", "h1", "--nbd-listen", f"127.0.0.1:{self.nbd_port}",
                           "--log-level", "warning"],
                          lambda l: "registered" in l, "tessera agent", os.path.join(self.data_dir, "agent.log"))

    def start(self):
        if self.controller is None or not self.controller.alive:
            self.start_controller()
        if self.agent is None or not self.agent.alive:
            self.start_agent()
        marker = os.path.join(self.data_dir, "set-up")
        if not os.path.exists(marker):
            for name in ("a", "b"):
                self.cli("container", "add", name, "file://" + os.path.join(self.data_dir, f"{name}.img"), "--size", "2GiB")
            # Small segments: a migration has many to move, so kills land in the middle of it.
            self.cli("disk", "create", "crash", "--size", f"{self.disk_mib}MiB", "--segment-size", "256KiB")
            self.cli("disk", "present", "crash", "--host", "h1")
            if self.fio_mib:
                self.cli("disk", "create", "fio", "--size", f"{self.fio_mib}MiB", "--segment-size", "256KiB")
                self.cli("disk", "present", "fio", "--host", "h1")
            open(marker, "w").close()

    def cli(self, *args, check=True, timeout=120):
        r = subprocess.run(TESSERA + list(args) + ["--controller", self.url], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"tessera {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def cli_json(self, *args):
        return json.loads(self.cli(*args, "--json").stdout)

    def kill(self, target):
        if target in ("controller", "both"):
            self.controller.kill()
        if target in ("agent", "both"):
            self.agent.kill()

    def stop(self):
        for role in (self.agent, self.controller):
            if role:
                role.kill()


class Model:
    """Per block: the last acknowledged and the last attempted generation."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.acked, self.attempted = {}, {}
        self.gen = 0

    def verify(self, h, where, seed, totals):
        for block in sorted(self.attempted):
            got = decode(h.pread(BLOCK, block * BLOCK), block)
            lo, hi = self.acked.get(block, 0), self.attempted[block]
            if not lo <= got <= hi:
                raise AssertionError(f"{where} (seed {seed}): block {block} holds generation {got}, "
                                     f"acknowledged {lo}, last attempted {hi}")
            self.acked[block] = got  # what is there now is the baseline; a later lower value would be a loss
            self.attempted[block] = got
            totals["verified"] += 1


def write_until(h, model, rng, stop, totals):
    """Writes (and now and then flushes) until the connection fails or stop is set; returns True when it failed."""
    in_flight = None
    try:
        while not stop.is_set():
            block = rng.randrange(model.blocks)
            model.gen += 1
            model.attempted[block] = model.gen
            in_flight = block
            h.pwrite(payload(block, model.gen), block * BLOCK)
            model.acked[block] = model.gen
            in_flight = None
            totals["writes"] += 1
            if rng.random() < 0.05:
                h.flush()
                totals["flushes"] += 1
        return False
    except nbd.Error:
        if in_flight is not None:
            totals["in_flight_at_kill"] += 1
        return True


class Operations:
    """Migrations and snapshots started just before a kill, checked after the restart."""

    def __init__(self, cluster, model, seed, totals):
        self.cluster, self.model, self.seed, self.totals = cluster, model, seed, totals
        self.snapshots = []  # (name, lo, hi, reported)
        self.jobs_seen_done = set()
        self.jobs_pending = False
        self.to_clean = []  # verified snapshots, unpresented and deleted during the next cycle's writes
        self.next_target = "b"

    def start(self, what, cycle, rng):
        """Runs in a thread while the writer writes; the CLI may itself be cut off by the kill."""
        if what == "migrate":
            if rng.random() < 0.5:
                args = ("disk", "migrate", "crash", "--to", self.next_target, "--no-wait")
                self.totals["migrations_started"] += 1
            else:
                args = ("container", "evacuate", "a" if self.next_target == "b" else "b", "--no-wait")
                self.totals["evacuations_started"] += 1
            self.next_target = "a" if self.next_target == "b" else "b"
            self.jobs_pending = True
            r = self.cluster.cli(*args, check=False)
            self.totals["job_cli_ok" if r.returncode == 0 else "job_cli_cut_off"] += 1
        elif what == "snapshot":
            name = f"s{cycle}"
            lo = dict(self.model.acked)  # everything acknowledged before the command is sent must be in it
            r = self.cluster.cli("snapshot", "create", "crash", name, check=False)
            hi = dict(self.model.attempted)  # nothing attempted after it returned can be in it
            self.snapshots.append((name, lo, hi, r.returncode == 0))
            self.totals["snapshot_cli_ok" if r.returncode == 0 else "snapshot_cli_cut_off"] += 1

    def check(self, where):
        if self.jobs_pending:
            self._check_jobs(where)
        if self.snapshots:
            self._check_snapshots(where)

    def clean_up(self):
        """Unpresents and deletes verified snapshots while the writer writes; a kill may cut it off (retried next cycle)."""
        for name in list(self.to_clean):
            self.cluster.cli("disk", "unpresent", f"crash@{name}", "--host", "h1", check=False)
            if self.cluster.cli("snapshot", "delete", "crash", name, check=False).returncode == 0:
                self.to_clean.remove(name)

    def _check_jobs(self, where):
        deadline = time.time() + JOB_TIMEOUT_S
        first = True
        while True:
            jobs = self.cluster.cli_json("job", "list")
            running = [j for j in jobs if j["state"] not in ("done", "failed")]
            if first and running:
                self.totals["jobs_unfinished_at_restart"] += 1
            first = False
            for j in jobs:
                if j["state"] == "failed":
                    raise AssertionError(f"{where} (seed {self.seed}): job {j['id']} ({j['kind']}) failed: {j['message']}")
                if j["state"] == "done" and j["id"] not in self.jobs_seen_done:
                    self.jobs_seen_done.add(j["id"])
                    self.totals["jobs_done"] += 1
                    # "moved N segments in this run": fewer than the job moved in all means a controller was killed
                    # in the middle of it and its successor resumed it from the persisted cursor.
                    this_run = re.search(r"moved (\d+) segments in this run", j["message"])
                    if this_run and int(this_run.group(1)) < j["moved_segments"]:
                        self.totals["jobs_resumed_after_a_controller_kill"] += 1
            if not running:
                self.jobs_pending = False
                return
            if time.time() > deadline:
                raise AssertionError(f"{where} (seed {self.seed}): jobs still running after {JOB_TIMEOUT_S} s: {running}")
            time.sleep(0.2)  # polling the job's state

    def _check_snapshots(self, where):
        existing = {s["name"] for s in self.cluster.cli_json("snapshot", "list", "crash")["snapshots"]}
        for name, lo, hi, reported in self.snapshots:
            if name not in existing:
                if reported:
                    raise AssertionError(f"{where} (seed {self.seed}): snapshot {name} was reported created but is gone")
                self.totals["snapshots_absent_after_cut_off_cli"] += 1
                continue
            self.cluster.cli("disk", "present", f"crash@{name}", "--host", "h1", "--read-only")
            h = connect("127.0.0.1", self.cluster.nbd_port, f"crash@{name}")
            for block in sorted(hi):
                got = decode(h.pread(BLOCK, block * BLOCK), block)
                if not lo.get(block, 0) <= got <= hi[block]:
                    raise AssertionError(f"{where} (seed {self.seed}): snapshot {name} block {block} holds generation {got}, "
                                         f"acknowledged before the snapshot {lo.get(block, 0)}, last attempted {hi[block]}")
                self.totals["snapshot_blocks_verified"] += 1
            h.shutdown()
            self.to_clean.append(name)
            self.totals["snapshots_verified" if reported else "snapshots_verified_after_cut_off_cli"] += 1
            existing.discard(name)
        self.snapshots.clear()
        stray = existing - set(self.to_clean)
        if stray:
            raise AssertionError(f"{where} (seed {self.seed}): unexpected snapshots {sorted(stray)}")


class Fio:
    """fio writing the "fio" disk sequentially at queue depth 1 with crc32c verify headers and a flush every 16 writes.

    fio's own count of completed writes (write.io_bytes, which leaves out the write that failed at the kill) names
    exactly the prefix of the disk whose writes were acknowledged; after the restart a --verify_only pass over that
    prefix checks every one of them (fio's header: magic, offset, length, seed, crc32c of the block).
    --verify_state_save/--verify_state_load would be the natural tool, but for a write job in verify_only mode fio
    3.33 does not bound the verify by the saved state: it verified never-written blocks and failed on them."""

    DEPTH, FSYNC_EVERY = 1, 16

    def __init__(self, cluster, data_dir, mib, seed, totals):
        self.cluster, self.dir, self.mib, self.seed, self.totals = cluster, data_dir, mib, seed, totals
        self.proc, self.pending = None, None

    def args(self, name, randseed, size_bytes):
        return ["fio", f"--name={name}", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{self.cluster.nbd_port}/fio",
                "--rw=write", "--bs=4k", f"--size={size_bytes}", f"--iodepth={self.DEPTH}", "--verify=crc32c",
                f"--randseed={randseed}", "--output-format=json", f"--output={os.path.join(self.dir, name + '.json')}"]

    def start(self, cycle):
        self.randseed = self.seed * 1000 + cycle
        self.proc = subprocess.Popen(self.args("write", self.randseed, self.mib << 20) +
                                     [f"--fsync={self.FSYNC_EVERY}", "--do_verify=0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)

    def result(self, name):
        """fio's JSON report; fio puts its error messages in front of it in the same file."""
        with open(os.path.join(self.dir, name + ".json")) as f:
            text = f.read()
        return json.loads(text[text.index("{"):])["jobs"][0]

    def join(self, where, controller_only):
        """Waits for fio (it stops at the first I/O error) and returns how many bytes it had acknowledged."""
        code = self.proc.wait(timeout=600)
        job = self.result("write")
        done = job["write"]["io_bytes"]
        if controller_only and code != 0:
            raise AssertionError(f"{where} (seed {self.seed}): fio failed (exit {code}, error {job['error']}) "
                                 "while only the controller was down")
        self.pending = (self.randseed, done)
        self.totals["fio_runs"] += 1
        self.totals["fio_runs_cut_off" if code != 0 else "fio_runs_complete"] += 1

    def verify(self, where):
        if not self.pending or self.pending[1] == 0:
            return
        randseed, done = self.pending
        r = subprocess.run(self.args("verify", randseed, done) + ["--verify_only", "--verify_fatal=1"],
                           capture_output=True, text=True, cwd=self.dir, timeout=600)
        read = 0
        try:
            read = self.result("verify")["read"]["io_bytes"]
        except (OSError, ValueError, KeyError, IndexError):
            pass
        if r.returncode != 0 or read != done:
            raise AssertionError(f"{where} (seed {self.seed}): fio verify of {done} acknowledged bytes failed "
                                 f"(exit {r.returncode}, read {read}): {r.stdout[-2000:]}{r.stderr[-2000:]}")
        self.totals["fio_bytes_verified"] += done
        self.pending = None


def run_cycle(cycle, cluster, model, ops, fio, a, rng, totals):
    """One cycle: restart what is down, verify everything, then write until the chosen kill."""
    where = f"cycle {cycle}"
    cluster.start()
    h = connect("127.0.0.1", cluster.nbd_port, "crash")
    model.verify(h, where, a.seed, totals)
    if ops:
        ops.check(where)
    if fio:
        fio.verify(where)

    target = rng.choice(cluster.targets)
    if a.round_robin:  # the test suite's few cycles cover every target
        target = cluster.targets[(cycle - 1) % len(cluster.targets)]
    during = [op for op in a.during if rng.random() < a.op_probability]
    op_at = rng.uniform(0.05, 0.5)
    kill_at = (op_at + rng.uniform(0.0, 1.5)) if during else rng.uniform(0.05, 1.5)
    second_kill_after = rng.uniform(0.0, 0.5)  # "both": the two processes die at independent moments
    agent_first = rng.random() < 0.5
    controller_down_s, write_on_s = rng.uniform(0.0, 1.0), rng.uniform(0.2, 1.0)
    writer_rng = random.Random(rng.random())
    totals[f"target_{target}"] += 1
    for op in during:
        totals[f"during_{op}"] += 1
    if not during:
        totals["during_none"] += 1

    stop = threading.Event()
    errors = []

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)

    def timeline():
        t0 = time.time()
        op_threads = []
        if ops and ops.to_clean:
            op_threads.append(threading.Thread(target=guarded, args=(ops.clean_up,)))
            op_threads[-1].start()
        if during:
            time.sleep(max(0.0, t0 + op_at - time.time()))
            for op in during:
                t = threading.Thread(target=guarded, args=(ops.start, op, cycle, rng_ops))
                t.start()
                op_threads.append(t)
        if kill_after_ops_returned is None:
            time.sleep(max(0.0, t0 + kill_at - time.time()))
        else:
            for t in op_threads:
                t.join()
            time.sleep(kill_after_ops_returned)
        if target == "both":
            first, second = ("agent", "controller") if agent_first else ("controller", "agent")
            cluster.kill(first)
            time.sleep(second_kill_after)
            cluster.kill(second)
        else:
            cluster.kill(target)
        if target == "controller":
            # The agent keeps serving mapped segments; new faults wait until the controller is back.
            time.sleep(controller_down_s)
            cluster.start_controller()
            time.sleep(write_on_s)
            stop.set()
        for t in op_threads:
            t.join()

    rng_ops = random.Random(rng.random())
    # Half the cycles with operations kill while the CLIs may still be starting or talking to the controller; the
    # other half wait until they returned (job queued, snapshot taken) and kill 0-0.5 s later, inside the job.
    kill_after_ops_returned = rng.uniform(0.0, 0.5) if during and rng.random() < 0.5 else None
    if kill_after_ops_returned is not None:
        totals["kills_after_the_operations_returned"] += 1
    if fio:
        fio.start(cycle)
    killer = threading.Thread(target=guarded, args=(timeline,))
    killer.start()
    failed = write_until(h, model, writer_rng, stop, totals)
    killer.join()
    if errors:
        raise errors[0]
    if fio:
        fio.join(where, target == "controller")
    if errors:
        raise errors[0]
    if target == "controller" and failed:
        raise AssertionError(f"{where} (seed {a.seed}): the NBD connection failed while only the controller was down")
    try:
        h.shutdown()
    except nbd.Error:
        pass
    print(f"cycle {cycle}: ok, killed {target}" + (f" during {'+'.join(during)}" if during else "") +
          f" ({totals['writes']} writes acknowledged so far)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--disk-mib", type=int, default=64)
    ap.add_argument("--mode", choices=("up", "split"), default="up")
    ap.add_argument("--targets", default="agent,controller,both", help="split mode: what each cycle may kill")
    ap.add_argument("--during", default="", help="split mode: operations to start before kills (migrate,snapshot)")
    ap.add_argument("--op-probability", type=float, default=0.5, help="chance that a cycle starts each --during operation")
    ap.add_argument("--round-robin", action="store_true", help="take the targets in turn instead of at random")
    ap.add_argument("--fio", action="store_true", help="split mode: also run fio with crc32c verify on a second disk")
    ap.add_argument("--fio-mib", type=int, default=32)
    ap.add_argument("--keep")
    a = ap.parse_args()
    a.during = [op for op in a.during.split(",") if op]
    if any(op not in ("migrate", "snapshot") for op in a.during):
        ap.error("--during takes migrate and/or snapshot")
    if a.mode == "up" and (a.during or a.fio):
        ap.error("--during and --fio need --mode split (they drive the controller's admin API)")
    rng = random.Random(a.seed)
    model = Model(a.disk_mib * (1 << 20) // BLOCK)
    data_dir = a.keep or tempfile.mkdtemp(prefix="tessera-crash-")
    os.makedirs(data_dir, exist_ok=True)
    if a.mode == "up":
        cluster = UpCluster(data_dir, a.disk_mib)
    else:
        cluster = SplitCluster(data_dir, a.disk_mib, a.fio_mib if a.fio else 0)
        targets = tuple(t for t in a.targets.split(",") if t)
        if not targets or any(t not in SplitCluster.targets for t in targets):
            ap.error("--targets takes agent, controller and/or both")
        cluster.targets = targets
    totals = collections.Counter(writes=0, flushes=0, verified=0, in_flight_at_kill=0)
    ops = Operations(cluster, model, a.seed, totals) if a.during else None
    fio = Fio(cluster, data_dir, a.fio_mib, a.seed, totals) if a.fio else None
    started = time.time()
    print(f"crash-cycles: seed {a.seed}, mode {a.mode}, {a.cycles} cycles, {model.blocks} blocks, data {data_dir}", flush=True)
    # SIGTERM ends the run early but properly: the cycle under way finishes, then the final check runs.
    wind_down = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: wind_down.set())
    cycles = 0
    try:
        for cycle in range(1, a.cycles + 1):
            run_cycle(cycle, cluster, model, ops, fio, a, rng, totals)
            cycles = cycle
            if wind_down.is_set():
                print(f"crash-cycles: SIGTERM: stopping after cycle {cycle}", flush=True)
                break
        # A last restart verifies the final cycle's writes, jobs and snapshots.
        cluster.start()
        h = connect("127.0.0.1", cluster.nbd_port, "crash")
        model.verify(h, "final check", a.seed, totals)
        if ops:
            ops.check("final check")
        if fio:
            fio.verify("final check")
        h.shutdown()
    except Exception as e:
        cluster.stop()
        kind = "FAILED" if isinstance(e, AssertionError) else f"ERROR ({type(e).__name__})"
        print(f"crash-cycles: {kind}: {e}\ncrash-cycles: data and process logs kept in {data_dir}", flush=True)
        print("0 passed, 1 failed")
        return 1
    cluster.stop()
    if not a.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    extra = {k: v for k, v in sorted(totals.items()) if k not in ("writes", "flushes", "verified", "in_flight_at_kill")}
    print(f"crash-cycles: {cycles} kill -9 cycles, {totals['writes']} acknowledged writes, {totals['flushes']} flushes, "
          f"{totals['verified']} block verifications, {totals['in_flight_at_kill']} writes in flight at a kill, 0 errors "
          f"(seed {a.seed}, mode {a.mode}, {time.time() - started:.0f} s)", flush=True)
    if extra:
        print("crash-cycles: " + ", ".join(f"{k} {v}" for k, v in extra.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
