#!/usr/bin/env python3
"""Benchmark docker_volume_plugin against a hand-written http.server plugin.

Standard library only. Both servers run as subprocesses with the same
in-memory driver; the two are measured alternately, round after round, so
that machine drift cancels out, and the table shows medians over the rounds
and the ratio of ours to the baseline. Usage:

    python3 benchmarks/bench.py [--rounds 5] [--seconds 2] [--no-engine] [--metrics]

``--metrics`` measures ours with ``serve --metrics`` on: every call counted.

The Docker command timings run when DOCKER_HOST names an engine with the
busybox:local image (see .ci/engine) and we are root.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
MODULE = os.path.join(TOP, "docker_volume_plugin.py")
PYTHON = sys.executable
CLOCK_TICK = 1.0 / os.sysconf("SC_CLK_TCK")
_LENGTH = re.compile(br"content-length: *(\d+)", re.IGNORECASE)


def docker_request(method, payload):
    """The bytes a 20.10 engine sends (PROTOCOL 1.5)."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    return (b"POST /%s HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n"
            b"Content-Length: %d\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n"
            % (method.encode(), len(body)) + body)


def exchange(sock, request, buffer=b""):
    """Send one request on a keep-alive socket and read one whole reply.

    Kept lean: on two cores the load generator competes with the server.
    """
    sock.sendall(request)
    recv = sock.recv
    if not buffer:
        buffer = recv(1 << 20)
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            total = end + 4 + int(_LENGTH.search(buffer, 0, end).group(1))
            if len(buffer) >= total:
                return buffer[:total], buffer[total:]
        data = recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        buffer += data


def worker(path, method, payload_json, start_at, seconds):
    """Client process: one keep-alive connection, requests back to back."""
    request = docker_request(method, json.loads(payload_json))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reply, rest = exchange(sock, request)  # warm the connection
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    time.sleep(max(0.0, start_at - time.time()))
    latencies = []
    clock = time.perf_counter
    end = clock() + seconds
    while True:
        started = clock()
        if started >= end:
            break
        reply, rest = exchange(sock, request, rest)
        latencies.append(clock() - started)
    sock.close()
    json.dump([round(x * 1e6, 1) for x in latencies], sys.stdout)


#: Where compiled copies of the module live, as an installed module would.
INSTALLED = tempfile.mkdtemp(prefix="dvp-bench-lib-")


def install_module():
    """Copy the module and compile it: pip installs bytecode with it."""
    import py_compile
    shutil.copy(MODULE, INSTALLED)
    py_compile.compile(os.path.join(INSTALLED, "docker_volume_plugin.py"),
                       cfile=importlib.util.cache_from_source(
                           os.path.join(INSTALLED, "docker_volume_plugin.py")))


#: Extra ``serve`` arguments for ours (``--metrics``).
SERVE_EXTRA = []


def server_command(kind, path, volumes):
    if kind == "baseline":
        return [PYTHON, os.path.join(HERE, "baseline_plugin.py"), path, str(volumes)]
    # The command line, with its default logging: as an installed module
    # ("ours") or as the file run as a script, compiled at every start.
    start = [PYTHON, "-m", "docker_volume_plugin"] if kind == "ours" else [PYTHON, MODULE]
    return start + ["serve", "--socket", path,
                    "--driver", os.path.join(HERE, "memory_driver.py") + ":Driver"] + SERVE_EXTRA


class Server(object):
    """One plugin server process, with the kernel's accounting of it."""

    def __init__(self, kind, path, volumes=0):
        self.kind, self.path = kind, path
        env = dict(os.environ, BENCH_VOLUMES=str(volumes), PYTHONPATH=INSTALLED)
        args = server_command(kind, path, volumes)
        self.started = time.perf_counter()
        # cwd: never the checkout, whose uncompiled copy would shadow the installed one
        self.proc = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL, cwd=INSTALLED)
        self.ready_after = wait_for_activate(path, self.proc)
        self.rss_at_start_kib = self.status_kib("VmRSS:")

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.proc.pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * CLOCK_TICK

    def peak_rss_kib(self):
        return self.status_kib("VmHWM:")

    def status_kib(self, field):
        with open("/proc/%d/status" % self.proc.pid) as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        if os.path.exists(self.path):
            os.unlink(self.path)


def wait_for_activate(path, proc):
    """Seconds from process start until the socket answers Plugin.Activate."""
    started = time.perf_counter()
    request = docker_request("Plugin.Activate", None)
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                reply, _ = exchange(sock, request)
            finally:
                sock.close()
            if reply.startswith(b"HTTP/1.1 200"):
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.0005)


def load(server, method, payload, connections, seconds):
    """Drive ``server`` from ``connections`` client processes; return figures."""
    start_at = time.time() + 0.3 + 0.05 * connections
    workers = [subprocess.Popen([PYTHON, __file__, "--worker", server.path, method, json.dumps(payload),
                                 repr(start_at), repr(seconds)], stdout=subprocess.PIPE)
               for _ in range(connections)]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = server.cpu_seconds()
    latencies = []
    for proc in workers:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError("load worker failed")
        latencies.extend(json.loads(out.decode()))
    cpu = server.cpu_seconds() - cpu_before
    latencies.sort()
    count = len(latencies)
    return {"rps": count / seconds, "p50": latencies[count // 2], "p99": latencies[int(count * 0.99)],
            "cpu_us": cpu / count * 1e6}


def wall(args, repeat):
    """Median wall time of a command, in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def median_of(rows, key):
    return statistics.median(row[key] for row in rows)


def print_row(label, base, ours, unit, higher_is_better):
    ratio = ours / base if base else float("nan")
    better = "better" if (ratio > 1) == higher_is_better and ratio != 1 else ""
    print("%-44s %12.1f %12.1f %8.2fx  %s %s" % (label, base, ours, ratio, unit, better))


def server_benchmarks(rounds, seconds, workdir):
    scenarios = [
        ("Get, 1 connection", "VolumeDriver.Get", {"Name": "vol1"}, 1, 100),
        ("Get, 8 connections", "VolumeDriver.Get", {"Name": "vol1"}, 8, 100),
        ("List of 1,000 volumes, 1 connection", "VolumeDriver.List", {}, 1, 1000),
        ("List of 10,000 volumes, 1 connection", "VolumeDriver.List", {}, 1, 10000),
    ]
    results = {}
    peak = {"baseline": [], "ours": []}
    at_start = {"baseline": [], "ours": []}  # right after Activate, with 100 volumes
    for round_number in range(rounds):
        for label, method, payload, connections, volumes in scenarios:
            kinds = ("baseline", "ours") if round_number % 2 == 0 else ("ours", "baseline")
            for kind in kinds:
                server = Server(kind, os.path.join(workdir, kind + ".sock"), volumes)
                try:
                    figures = load(server, method, payload, connections, seconds)
                    peak[kind].append(server.peak_rss_kib())
                    if volumes == 100:
                        at_start[kind].append(server.rss_at_start_kib)
                finally:
                    server.stop()
                results.setdefault((label, kind), []).append(figures)
        sys.stderr.write("round %d/%d done\n" % (round_number + 1, rounds))
    print("%-44s %12s %12s %9s" % ("", "baseline", "ours", "ours/base"))
    for label, _, _, _, _ in scenarios:
        base, ours = results[(label, "baseline")], results[(label, "ours")]
        print(label)
        print_row("  requests per second", median_of(base, "rps"), median_of(ours, "rps"), "req/s", True)
        print_row("  p50 latency", median_of(base, "p50"), median_of(ours, "p50"), "us", False)
        print_row("  p99 latency", median_of(base, "p99"), median_of(ours, "p99"), "us", False)
        print_row("  server CPU per request", median_of(base, "cpu_us"), median_of(ours, "cpu_us"),
                  "us", False)
    print_row("RSS of the server at start (median)", statistics.median(at_start["baseline"]),
              statistics.median(at_start["ours"]), "KiB", False)
    print_row("peak RSS of the server (largest run)", max(peak["baseline"]), max(peak["ours"]), "KiB", False)


def startup_benchmarks(repeat, workdir):
    env = dict(os.environ, PYTHONPATH=INSTALLED)
    times, rss = {}, {}
    for index in range(repeat):
        for kind in ("baseline", "ours", "script"):
            server = Server(kind, os.path.join(workdir, "start.sock"))
            try:
                times.setdefault(kind, []).append(server.ready_after * 1000)
                rss.setdefault(kind, []).append(server.rss_at_start_kib)
            finally:
                server.stop()
        for kind, code in (("reference", "import http.server, json"),
                           ("import", "import docker_volume_plugin"), ("bare", "pass")):
            started = time.perf_counter()
            subprocess.run([PYTHON, "-c", code], env=env, check=True, cwd=INSTALLED)
            times.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    reference = median["reference"]
    print()
    print("start-up, median of %d runs                      ms   vs python3 -c 'import http.server, json'"
          % repeat)
    for label, kind in (("python3 -c pass", "bare"),
                        ("python3 -c 'import http.server, json'", "reference"),
                        ("python3 -c 'import docker_volume_plugin'", "import"),
                        ("baseline: start until Activate answers", "baseline"),
                        ("ours (-m, bytecode cached): until Activate", "ours"),
                        ("ours (the .py run as a script): until Activate", "script")):
        print("  %-48s %7.1f  %5.2fx" % (label, median[kind], median[kind] / reference))
    print("RSS at start, median of %d runs                  KiB  vs the baseline" % repeat)
    base = statistics.median(rss["baseline"])
    for label, kind in (("baseline", "baseline"), ("ours (-m, bytecode cached)", "ours"),
                        ("ours (the .py run as a script)", "script")):
        print("  %-48s %7d  %5.2fx" % (label, statistics.median(rss[kind]),
                                       statistics.median(rss[kind]) / base))


def engine_benchmarks(rounds):
    docker = os.environ.get("DVP_DOCKER_CLI") or "docker"
    if os.geteuid() != 0 or not os.environ.get("DOCKER_HOST"):
        print("\nDocker commands: skipped (needs root and DOCKER_HOST; see .ci/engine)")
        return
    root = tempfile.mkdtemp(prefix="dvp-bench-")
    name = "dvpbench%d" % os.getpid()
    sock = "/run/docker/plugins/%s.sock" % name
    proc = subprocess.Popen([PYTHON, MODULE, "serve", "--name", name, "--root", root],
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_activate(sock, proc)
        timings = {}
        for round_number in range(rounds):
            for driver in ((name, "local") if round_number % 2 == 0 else ("local", name)):
                volume = "bench-%s-%d" % (driver.replace(":", ""), round_number)
                steps = [("volume create", ["volume", "create", "-d", driver, volume]),
                         ("volume inspect", ["volume", "inspect", volume]),
                         ("run --rm -v VOL:/d busybox true",
                          ["run", "--rm", "-v", volume + ":/d", "busybox:local", "true"]),
                         ("volume rm", ["volume", "rm", volume])]
                for label, args in steps:
                    started = time.perf_counter()
                    subprocess.run([docker] + args, check=True, stdout=subprocess.DEVNULL)
                    timings.setdefault((label, driver == "local"), []).append(
                        (time.perf_counter() - started) * 1000)
        print()
        print("%-44s %12s %12s %9s" % ("Docker commands, median ms", "local", "ours", "ours/local"))
        for label in ("volume create", "volume inspect", "run --rm -v VOL:/d busybox true", "volume rm"):
            print_row("  docker " + label, statistics.median(timings[(label, True)]),
                      statistics.median(timings[(label, False)]), "ms", False)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(root, True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, method, payload, start_at, seconds = sys.argv[2:7]
        worker(path, method, payload, float(start_at), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per figure")
    parser.add_argument("--seconds", type=float, default=2.0, help="load per measurement")
    parser.add_argument("--no-engine", action="store_true", help="skip the Docker commands")
    parser.add_argument("--metrics", action="store_true",
                        help="ours with the metrics on (serve --metrics 127.0.0.1:0)")
    args = parser.parse_args()
    if args.metrics:
        SERVE_EXTRA.extend(["--metrics", "127.0.0.1:0"])
    print("docker_volume_plugin benchmark: %s, Python %s, %d CPUs, %d rounds of %gs"
          % (time.strftime("%Y-%m-%d"), sys.version.split()[0], os.cpu_count(), args.rounds, args.seconds))
    workdir = tempfile.mkdtemp(prefix="dvp-bench-")
    install_module()
    try:
        server_benchmarks(args.rounds, args.seconds, workdir)
        startup_benchmarks(max(10, args.rounds * 4), workdir)
        if not args.no_engine:
            engine_benchmarks(max(15, args.rounds * 3))
    finally:
        shutil.rmtree(workdir, True)
        shutil.rmtree(INSTALLED, True)


if __name__ == "__main__":
    main()
