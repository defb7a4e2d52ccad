#!/usr/bin/env python3
"""How the built-in directory driver's calls cost as the volume count grows.

Standard library only; run as root or not. For each volume count it fills a
root with that many volumes (written as the driver writes them, to save the
minutes of fsyncs a real create of each would take), starts the plugin from
the command line, and times round trips the way the engine makes them:
median milliseconds of create, mount, unmount and remove over --calls new
volumes, List, and Get. Then 16 connections mount and unmount 16 volumes at
once, against one connection doing the same. Usage:

    python3 benchmarks/scaling.py [--counts 200,1000,10000,50000] [--calls 30]
        [--before OLD_MODULE.py]

--before runs the same table against another copy of the module, such as
version 0.1 (``git show 69c5d3e:docker_volume_plugin.py > /tmp/v01.py``),
whose state is one JSON file for all volumes, in the same run.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
import docker_volume_plugin as dvp  # noqa: E402  (the client; the server runs apart)


def fill(root, count, layout):
    """A root holding ``count`` volumes, in the state layout of that version."""
    os.makedirs(root, 0o700)
    names = ["vol%06d" % i for i in range(count)]
    for name in names:
        os.mkdir(os.path.join(root, name), 0o755)
    created = "2026-01-01T00:00:00Z"
    if layout == "records":
        records = os.path.join(root, ".docker-volume-plugin")
        os.mkdir(records, 0o700)
        data = json.dumps({"version": 2, "phase": "ready", "options": {}, "created_at": created})
        for name in names:
            with open(os.path.join(records, name + ".json"), "w") as f:
                f.write(data)
    else:
        volumes = dict((name, {"created_at": created, "options": {}, "mounts": {}}) for name in names)
        with open(os.path.join(root, ".docker-volume-plugin.json"), "w") as f:
            json.dump({"version": 1, "volumes": volumes}, f)


def serve(module, root, sock):
    proc = subprocess.Popen([sys.executable, module, "serve", "--root", root, "--socket", sock,
                             "--log-level", "WARNING"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with dvp.PluginClient(sock, timeout=5) as client:
                client.activate()
                return proc
        except dvp.PluginCallError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("plugin did not start")


def timed(call, *args):
    started = time.perf_counter()
    call(*args)
    return (time.perf_counter() - started) * 1000.0


def measure(module, layout, count, calls, base):
    root, sock = os.path.join(base, "root%d-%s" % (count, layout)), os.path.join(base, "p.sock")
    fill(root, count, layout)
    os.sync()  # else the first fsyncs measured would flush the filling too
    proc = serve(module, root, sock)
    try:
        with dvp.PluginClient(sock, timeout=300) as client:
            for _ in range(5):  # warm up: first calls pay for caches and imports
                client.create("warm", {})
                client.remove("warm")
            names = ["new%04d" % i for i in range(calls)]
            row = {}
            row["create"] = statistics.median(timed(client.create, n, {}) for n in names)
            row["mount"] = statistics.median(timed(client.mount, n, "a" * 64) for n in names)
            row["unmount"] = statistics.median(timed(client.unmount, n, "a" * 64) for n in names)
            row["remove"] = statistics.median(timed(client.remove, n) for n in names)
            row["List"] = statistics.median(timed(client.list) for _ in range(5))
            row["Get"] = statistics.median(timed(client.get, "vol000000") for _ in range(calls))
        row["pairs/s x1"], row["pairs/s x16"] = parallel(sock, 1), parallel(sock, 16)
        return row
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(root, True)


def parallel(sock, connections, seconds=2.0):
    """Mount+unmount pairs per second, each connection on a volume of its own."""
    counts = [0] * connections
    stop = time.time() + seconds

    def work(index):
        name = "par%02d" % index
        with dvp.PluginClient(sock, timeout=60) as client:
            client.create(name, {})
            while time.time() < stop:
                client.mount(name, "b" * 64)
                client.unmount(name, "b" * 64)
                counts[index] += 1
            client.remove(name)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def table(label, rows):
    columns = ["create", "mount", "unmount", "remove", "List", "Get"]
    print("\n%s: median ms per round trip (ratio to the first row)" % label)
    print("%8s" % "volumes" + "".join("%16s" % c for c in columns) + "%13s%13s"
          % ("pairs/s x1", "pairs/s x16"))
    first = rows[0][1]
    for count, row in rows:
        cells = "".join("%9.2f %5.2fx" % (row[c], row[c] / first[c]) for c in columns)
        print("%8d%s%13.0f%13.0f" % (count, cells, row["pairs/s x1"], row["pairs/s x16"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="200,1000,10000,50000")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--before", metavar="OLD_MODULE.py")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    base = tempfile.mkdtemp(prefix="dvp-scaling-")
    os.chmod(base, 0o700)
    try:
        runs = [("this version", os.path.join(TOP, "docker_volume_plugin.py"), "records")]
        if args.before:
            runs.append(("before (%s)" % args.before, args.before, "single-file"))
        for label, module, layout in runs:
            rows = []
            for count in counts:
                rows.append((count, measure(module, layout, count, args.calls, base)))
                sys.stderr.write("%s: %d volumes done\n" % (label, count))
            table(label, rows)
    finally:
        shutil.rmtree(base, True)


if __name__ == "__main__":
    main()
