#!/usr/bin/env python3
"""Where the gateway's resident memory is, on issue 10's workload
(BENCHMARKS.md §22).

For each --tags value: starts a store (victoria-metrics), the register
banks and the gateway as scripts/bench_reference.py does (10 machines,
100 ms polls, the benchmark's model), waits --seconds, and prints the
resident set from /proc/PID/smaps by mapping: libtorch's own libraries,
the binary's text and data, the heap, other anonymous memory (the other
threads' malloc arenas, stacks), other libraries.

With --heaptrack the gateway runs under heaptrack instead and is stopped
with SIGKILL, so that what heaptrack reports as leaked is the heap that was
live at that moment; it is printed by owner: libtorch, async-opcua's core
namespace (ns=0, loaded at start), then by the innermost frame of ours or
async-opcua's. Given two --tags values it also prints the difference per
extra tag (given two --machines values instead, per extra machine); and,
for each run, the live heap at its highest after half of --seconds
(start-up left out), by owner: what a tick's buffers add.
heaptrack is Debian's `heaptrack` package (and `zstd` to read its
recording).

With --malloc-info it also asks glibc, through gdb attached to the running
gateway, what each malloc arena holds: its size, how much of it is free
(kept by the allocator, not in use) and in which chunk sizes, and the
blocks mapped on their own.

Usage: scripts/memory_split.py [--machines 10 [--machines 210]] [--tags 62 [--tags 1000]]
       [--seconds 20] [--heaptrack [--keep DIR]] [--malloc-info] [--binary PATH]
Needs the release binaries (scripts/bench-reference.sh builds them) and
`source scripts/env.sh`.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_reference as br  # noqa: E402
from bench_e2e import free_port, stop_processes  # noqa: E402

ROOT = br.ROOT


def readable(symbol):
    """A Rust symbol without its hash and with its escapes undone."""
    symbol = re.sub(r"::h[0-9a-f]{16}$", "", symbol)
    for escaped, plain in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$u7b$", "{"),
                           ("$u7d$", "}"), ("$RF$", "&"), ("$C$", ","), ("..", "::")):
        symbol = symbol.replace(escaped, plain)
    return symbol.removeprefix("_")[:110]


def owner(frames):
    """Who owns an allocation, from its stack, innermost frame first."""
    stack = ";".join(frames)
    if any(m in stack for m in ("c10::", "torch::", "at::", "dnnl")):
        return "libtorch"
    if "CoreNodeManager" in stack or "import_node_set" in stack:
        return "async-opcua: the core namespace (ns=0)"
    return next((readable(f) for f in frames if "ironbridge" in f or "opcua" in f), "other")


def live_heap_by_owner(recording, tmp):
    """Bytes live at the end of a heaptrack recording, by owner."""
    stacks = os.path.join(tmp, "stacks.txt")
    subprocess.run(["heaptrack_print", "-f", recording, "--print-peaks", "0",
                    "--print-allocators", "0", "--print-temporary", "0", "--print-leaks", "0",
                    "-F", stacks, "--flamegraph-cost-type", "leaked"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    owners = collections.Counter()
    with open(stacks) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            owners[owner(list(reversed(stack.split(";"))))] += int(n)
    return owners


def steady_peak_by_owner(recording, after_s):
    """The live heap at its highest after `after_s` seconds (start-up's
    parse trees left out), by owner, and its total: from heaptrack's
    recording itself, which heaptrack_print only reports at the process's
    highest, that is during start-up. Needs the `zstd` command."""
    text = subprocess.run(["zstd", "-dc", recording], check=True,
                          capture_output=True, text=True).stdout.split("\n")
    strings, ips, traces, allocs = [""], [None], [(0, 0)], []
    for ln in text:
        kind, _, rest = ln.partition(" ")
        if kind == "s":
            strings.append(rest.partition(" ")[2])
        elif kind == "i":
            ips.append([int(x, 16) for x in rest.split()])
        elif kind == "t":
            traces.append(tuple(int(x, 16) for x in rest.split()))
        elif kind == "a":
            allocs.append(tuple(int(x, 16) for x in rest.split()))

    def replay(stop_ms=None):
        live, total, best = collections.Counter(), 0, (0, 0)
        for ln in text:
            kind, _, rest = ln.partition(" ")
            if kind in "+-" and rest:
                size, trace = allocs[int(rest, 16)]
                sign = 1 if kind == "+" else -1
                live[trace] += sign * size
                total += sign * size
            elif kind == "c":
                ms = int(rest, 16)
                if stop_ms is not None and ms >= stop_ms:
                    break
                if ms >= after_s * 1000 and total > best[1]:
                    best = (ms, total)
        return live, total, best

    _, _, (peak_ms, _) = replay()
    live, total, _ = replay(peak_ms)
    owners = collections.Counter()
    for trace, n in live.items():
        frames = []
        while trace:
            ip_index, trace = traces[trace]
            ip = ips[ip_index]
            # ip, module, then function, file, line of each (inlined) frame
            frames += [strings[ip[j]] or "?" for j in range(2, len(ip), 3)]
        owners[owner(frames)] += n
    return owners, total


def malloc_info(pid, tmp):
    """glibc's malloc_info of a running process, parsed: one dict per arena
    (system bytes, free bytes, free bytes by chunk size), and the mmapped
    blocks. Calls into the process through gdb."""
    out = os.path.join(tmp, "malloc-info.xml")
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-nx",
         "-ex", f'set $f = (void*)((void*(*)(char*,char*))fopen)("{out}", "w")',
         "-ex", "call (int)malloc_info(0, $f)",
         "-ex", "call (int)((int(*)(void*))fclose)($f)"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    xml = open(out).read()
    arenas = []
    for heap in re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S):
        sizes = [(int(a), int(b), int(t)) for a, b, t in
                 re.findall(r'<size from="(\d+)" to="(\d+)" total="(\d+)" count="\d+"/>', heap)]
        free = sum(int(n) for n in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"/>', heap))
        system = int(re.search(r'<system type="current" size="(\d+)"/>', heap).group(1))
        arenas.append({"system": system, "free": free, "sizes": sizes})
    mmap = re.search(r'</heap>\s*<total type="fast".*?<total type="mmap" count="(\d+)" size="(\d+)"/>',
                     xml, re.S)
    return arenas, (int(mmap.group(1)), int(mmap.group(2))) if mmap else (0, 0)


def print_malloc_info(arenas, mmap):
    print("\nmalloc arenas (glibc's malloc_info):")
    print("| arena | size MiB | free MiB | free, the largest chunk sizes (KiB: MiB) |\n|---|---:|---:|---|")
    for i, a in enumerate(arenas):
        top = sorted(a["sizes"], key=lambda s: -s[2])[:4]
        sizes = ", ".join(f"{lo // 1024}-{hi // 1024}: {t / 2**20:.1f}" for lo, hi, t in top)
        print(f"| {i} | {a['system'] / 2**20:.1f} | {a['free'] / 2**20:.1f} | {sizes} |")
    print(f"| mmapped blocks | {mmap[1] / 2**20:.1f} ({mmap[0]}) | | |")


def run(args, machines, tags, tmp):
    procs = []
    try:
        env = br.start_workload(tmp, machines, tags, procs)
        vm, devices, names, models = env["vm"], env["devices"], env["names"], env["models"]
        ua, http = free_port(), free_port()
        config = br.gateway_config(tmp, vm, devices, names, 100, "memory", ua, http, models, tags)
        recording = os.path.join(tmp, "gateway")
        wrapper = ["heaptrack", "-o", recording] if args.heaptrack else []
        log = os.path.join(tmp, "gateway.log")
        gateway = subprocess.Popen(
            wrapper + [args.binary, "run", "--config", config],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"),
            env={**os.environ, "RUST_LOG": "warn"})
        procs.append(gateway)
        br.wait_port(ua, timeout=120, proc=gateway, log=log)
        time.sleep(args.seconds)
        pid = gateway.pid
        if args.heaptrack:
            # heaptrack's child is the gateway.
            children = open(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read().split()
            pid = int(children[-1]) if children else gateway.pid
        split = br.smaps_split(pid)
        if args.malloc_info:
            print_malloc_info(*malloc_info(pid, tmp))
        if not args.heaptrack:
            return split, None
        os.kill(pid, 9)
        gateway.wait(120)
        live = live_heap_by_owner(recording + ".zst", tmp)
        peak, total = steady_peak_by_owner(recording + ".zst", args.seconds / 2)
        print(f"\n{machines} machines x {tags} tags: the live heap at its highest after "
              f"{args.seconds / 2:.0f} s, {total / 1e6:.1f} MB, the largest owners:")
        print("| owner | MB |\n|---|---:|")
        for who, n in peak.most_common(12):
            print(f"| `{who}` | {n / 1e6:.2f} |")
        return split, live
    finally:
        stop_processes(procs, timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, action="append",
                    help="machines; repeat for a difference per machine (default 10)")
    ap.add_argument("--tags", type=int, action="append",
                    help="f32 tags per machine; repeat for a difference per tag (default 62)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--binary", default=f"{ROOT}/target/release/ironbridge",
                    help="the gateway binary to measure (default: the release build)")
    ap.add_argument("--heaptrack", action="store_true",
                    help="run the gateway under heaptrack and print its live heap by owner")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy heaptrack's recordings here (gateway-<machines>x<tags>.zst) for heaptrack_gui "
                         "or heaptrack_print, instead of deleting them")
    ap.add_argument("--malloc-info", action="store_true",
                    help="print what each glibc malloc arena holds and keeps free (needs gdb)")
    args = ap.parse_args()
    tags = args.tags or [br.F32]
    machines = args.machines or [10]
    if len(tags) > 1 and len(machines) > 1:
        ap.error("repeat --tags or --machines, not both")
    if args.keep and not args.heaptrack:
        ap.error("--keep keeps heaptrack's recordings: it needs --heaptrack")
    if args.heaptrack and not (shutil.which("heaptrack") and shutil.which("zstd")):
        raise SystemExit("heaptrack or zstd is missing (Debian: apt-get install heaptrack zstd)")
    if args.malloc_info and not shutil.which("gdb"):
        raise SystemExit("gdb is missing (Debian: apt-get install gdb)")
    results = []
    for m, t in [(m, t) for m in machines for t in tags]:
        tmp = tempfile.mkdtemp(prefix="ironbridge-memory-")
        split, heap = run(args, m, t, tmp)
        results.append((m * t, split, heap))
        print(f"\n{m} machines x {t} tags{' (under heaptrack)' if heap else ''}:")
        print("| resident | MiB |\n|---|---:|")
        for kind, kib in split.most_common():
            print(f"| {kind} | {kib / 1024:.1f} |")
        total = sum(split.values())
        print(f"| **all** | **{total / 1024:.1f}** |")
        torch_libs = split["libtorch's libraries"]
        print(f"| without libtorch's libraries | {(total - torch_libs) / 1024:.1f} |")
        if heap:
            print(f"\nlive heap, {sum(heap.values()) / 1e6:.1f} MB, the largest owners:")
            print("| owner | MB |\n|---|---:|")
            for owner, n in heap.most_common(15):
                print(f"| `{owner}` | {n / 1e6:.2f} |")
        recording = os.path.join(tmp, "gateway.zst")
        if args.keep and os.path.exists(recording):
            os.makedirs(args.keep, exist_ok=True)
            shutil.copy(recording, os.path.join(args.keep, f"gateway-{m}x{t}.zst"))
        shutil.rmtree(tmp, ignore_errors=True)
    if len(results) >= 2:
        (n0, s0, h0), (n1, s1, h1) = results[0], results[-1]
        # Per extra machine (with its tags), or per extra tag of a machine.
        if len(machines) > 1:
            extra = machines[-1] - machines[0]
            what = f"machine ({machines[0]} -> {machines[-1]} machines of {tags[0]} tags)"
        else:
            extra = n1 - n0
            what = f"tag ({tags[0]} -> {tags[-1]} tags a machine, {machines[0]} machines)"
        if extra:
            print(f"\nper extra {what}:")
            if not (h0 and h1):
                # Under heaptrack the resident set has heaptrack's own in it.
                print(f"resident set: {(sum(s1.values()) - sum(s0.values())) * 1024 / extra:,.0f} bytes")
            if h0 and h1:
                print(f"live heap: {(sum(h1.values()) - sum(h0.values())) / extra:,.0f} bytes, of which")
                print(f"| owner | bytes per {what.split()[0]} |\n|---|---:|")
                delta = collections.Counter({k: h1[k] - h0[k] for k in set(h0) | set(h1)})
                for owner, n in delta.most_common(12):
                    print(f"| `{owner}` | {n / extra:,.0f} |")


if __name__ == "__main__":
    main()
