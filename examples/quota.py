"""Volumes with a size quota: an ext4 image file each, loop-mounted while in use.

    python3 docker_volume_plugin.py serve --name quota --driver examples/quota.py:QuotaVolumes
    docker volume create -d quota -o size=1G db

Built on docker_volume_plugin.Driver, which keeps the records, counts mounts
per ID, locks each volume and undoes what a crash cut short: this file is only
the storage. Needs root, mkfs.ext4 and loop devices.
"""

import os

import docker_volume_plugin as dvp


class QuotaVolumes(dvp.Driver):
    """Each volume is ``IMAGES/NAME.ext4`` of ``size`` bytes, mounted on ``MOUNTS/NAME``."""

    options = {"size": dvp.Option(dvp.size_option, required=True)}
    smallest = 8 << 20

    def __init__(self, root="/var/lib/quota-volumes"):
        self.images = os.path.join(root, "images")
        self.mounts = os.path.join(root, "mnt")
        for directory in (self.images, self.mounts):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        dvp.Driver.__init__(self, os.path.join(root, "state"))

    def exists(self, name, options):  # an image without a record is refused, never reformatted
        return os.path.lexists(self._image(name))

    def provision(self, name, options):
        if options["size"] < self.smallest:
            raise dvp.PluginError("option size must be at least 8M, e.g. -o size=1G")
        with open(self._image(name), "xb") as image:  # never over an image that is there
            image.truncate(options["size"])  # sparse: blocks are taken as they are written
        self.run("mkfs.ext4", "-q", "-F", "-m", "0", self._image(name))

    def attach(self, name, options):
        path = os.path.join(self.mounts, name)
        os.makedirs(path, mode=0o755, exist_ok=True)
        if not os.path.ismount(path):  # already mounted if a crash came before the count
            self.run("mount", "-o", "loop", self._image(name), path)
        return path

    def detach(self, name, options, mountpoint):
        mountpoint = mountpoint or os.path.join(self.mounts, name)  # None: a crash in attach
        if os.path.ismount(mountpoint):
            self.run("umount", mountpoint)

    def destroy(self, name, options):
        self.detach(name, options, os.path.join(self.mounts, name))
        for path, remove in ((os.path.join(self.mounts, name), os.rmdir),
                             (self._image(name), os.unlink)):
            if os.path.lexists(path):
                remove(path)

    def status(self, name, options):
        st = os.stat(self._image(name))
        return {"size": st.st_size, "allocated": st.st_blocks * 512}

    def _image(self, name):
        return os.path.join(self.images, name + ".ext4")
