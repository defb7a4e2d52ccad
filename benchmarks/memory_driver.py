"""A trivial in-memory driver for the benchmark, served by the command line:
    python3 docker_volume_plugin.py serve --socket S --driver benchmarks/memory_driver.py:Driver
BENCH_VOLUMES preloads that many volumes.
"""
import os


class Driver(object):
    def __init__(self):
        self.volumes = {}
        for i in range(int(os.environ.get("BENCH_VOLUMES", "0"))):
            self.volumes["vol%d" % i] = {"Name": "vol%d" % i, "Mountpoint": "/mnt/vol%d" % i}

    def create(self, name, options):
        self.volumes[name] = {"Name": name, "Mountpoint": "/mnt/" + name}

    def remove(self, name):
        self.volumes.pop(name, None)

    def mount(self, name, mount_id):
        return "/mnt/" + name

    def unmount(self, name, mount_id):
        pass

    def get(self, name):
        return self.volumes.get(name)

    def list(self):
        return list(self.volumes.values())
