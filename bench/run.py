#!/usr/bin/env python3
"""Interleaved fio comparison: Tessera NBD server vs nbdkit (file) vs qemu-nbd, same file in page cache.

Usage: bench/run.py [seconds-per-job] [rounds]. Prints a median per workload and server, plus server CPU per I/O.
"""
import json, os, subprocess, sys, time, socket, statistics

SECS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 1
FILE = '/tmp/tessera-nbd-bench.img'
HERE = os.path.dirname(os.path.abspath(__file__))

def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(p, proc):
    for _ in range(300):
        try:
            socket.create_connection(('127.0.0.1', p), 0.2).close(); return
        except OSError:
            if proc.poll() is not None: raise SystemExit('server exited')
            time.sleep(0.05)
    raise SystemExit('server did not listen')

if not os.path.exists(FILE) or os.path.getsize(FILE) != 1 << 30:
    subprocess.run(['dd', 'if=/dev/urandom', f'of={FILE}', 'bs=1M', 'count=1024', 'status=none'], check=True)
subprocess.run(['cat', FILE], stdout=subprocess.DEVNULL, check=True)  # into page cache

servers = {}
p = free_port()
env = dict(os.environ)
if os.environ.get('INLINE') == '1': env['DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS'] = '1'
servers['tessera'] = (subprocess.Popen(['dotnet', f'{HERE}/Tessera.Nbd.Bench/bin/Release/net10.0/Tessera.Nbd.Bench.dll', FILE, str(p)],
                                       stdout=subprocess.DEVNULL, env=env), p)
p = free_port()
servers['nbdkit'] = (subprocess.Popen(['nbdkit', '-f', '-p', str(p), '-i', '127.0.0.1', 'file', FILE]), p)
p = free_port()
servers['qemu-nbd'] = (subprocess.Popen(['qemu-nbd', '-f', 'raw', '-p', str(p), '-b', '127.0.0.1', '-x', 'bench', '--cache=writeback', '-t', FILE], stderr=subprocess.DEVNULL), p)
for name, (proc, port) in servers.items(): wait_port(port, proc)

jobs = [('4k randread QD1', 'randread', '4k', 1), ('4k randread QD32', 'randread', '4k', 32),
        ('4k randwrite QD32', 'randwrite', '4k', 32), ('1M read QD8', 'read', '1M', 8), ('1M write QD8', 'write', '1M', 8)]

if os.environ.get('JOBS'): jobs = [j for j in jobs if os.environ['JOBS'] in j[0]]

def cpu(pid):
    with open(f'/proc/{pid}/stat') as f: parts = f.read().rsplit(')', 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf('SC_CLK_TCK')

results = {}
for name, (proc, port) in servers.items():  # warm-up (JIT tiering for the .NET server)
    uri = f'nbd://127.0.0.1:{port}/bench' if name != 'nbdkit' else f'nbd://127.0.0.1:{port}/'
    for rw, bs in (('randread', '4k'), ('randwrite', '4k'), ('read', '1M')):
        subprocess.run(['fio', '--name=w', '--ioengine=nbd', f'--uri={uri}', f'--rw={rw}', f'--bs={bs}', '--iodepth=8',
                        '--runtime=1', '--time_based'], capture_output=True)
try:
    for r in range(ROUNDS):
        for label, rw, bs, qd in jobs:
            for name, (proc, port) in servers.items():
                uri = f'nbd://127.0.0.1:{port}/bench' if name != 'nbdkit' else f'nbd://127.0.0.1:{port}/'
                c0 = cpu(proc.pid)
                out = subprocess.run(['fio', '--name=b', '--ioengine=nbd', f'--uri={uri}', f'--rw={rw}', f'--bs={bs}',
                                      f'--iodepth={qd}', f'--runtime={SECS}', '--time_based', '--output-format=json'],
                                     capture_output=True, text=True)
                c1 = cpu(proc.pid)
                if out.returncode != 0: print(name, label, out.stderr); continue
                j = json.loads(out.stdout[out.stdout.index('{'):])['jobs'][0]
                d = j['read'] if 'read' in rw else j['write']
                ios = d['total_ios'] or 1
                results.setdefault(label, {}).setdefault(name, []).append((d['iops'], d['bw_bytes'], (c1 - c0) / ios * 1e6))
finally:
    for proc, _ in servers.values(): proc.terminate()

print(f'{"workload":20} ' + ' '.join(f'{n:>26}' for n in servers))
for label, per in results.items():
    cells = []
    for n in servers:
        v = per.get(n, [])
        if not v: cells.append(f'{"-":>26}'); continue
        iops = statistics.median(x[0] for x in v); bw = statistics.median(x[1] for x in v); us = statistics.median(x[2] for x in v)
        cells.append(f'{iops/1000:8.1f}k {bw/2**30:5.2f}GiB/s {us:6.1f}us')
    print(f'{label:20} ' + ' '.join(cells))
