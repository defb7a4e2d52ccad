"""Volumes that are remote directories, mounted over SSH with sshfs while in use.

    python3 docker_volume_plugin.py serve --name sshfs --driver examples/sshfs.py:SSHFSVolumes
    docker volume create -d sshfs -o sshcmd=user@host:/srv/data \\
        -o IdentityFile=/root/.ssh/id_ed25519 data

The options of vieux/sshfs: ``sshcmd`` (``[user@]host:[path]``), ``port``,
``password`` (or ``IdentityFile``), and the ssh and sshfs options of
``PASSED_ON``, given to sshfs as ``-o``. Host keys are checked as ssh checks
them: put the server's in root's ``~/.ssh/known_hosts``, give
``-o UserKnownHostsFile=...``, or ``-o StrictHostKeyChecking=accept-new`` to
trust the first one seen. ``password`` is read by sshfs from its stdin, never
from its command line, and shown as ``****`` (but Docker shows the options
it was given in ``docker volume inspect``); after a reconnection a password
cannot be given again, so prefer a key. A volume whose sshfs died (a
managed plugin's upgrade kills it) is mounted anew for the next container.
Needs root, sshfs and /dev/fuse.
"""

import errno
import os
import re
import tempfile

import docker_volume_plugin as dvp

# [user@]host:[path], the host a name or an address in brackets; never a
# leading "-", which sshfs would read as an option.
_SSHCMD = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?"
                     r"(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[^\0\n]*$")


def _sshcmd(value):
    if not _SSHCMD.match(value):
        raise ValueError("must be [user@]host:[path], e.g. backup@files.example:/srv/data")
    return value


def _word(value):
    """A value for sshfs's -o list: no comma (it would start another option)."""
    if not value or re.search(r"[,\s]", value):
        raise ValueError("must be one word, without commas or spaces")
    return value


def _password(value):
    """Any password sshfs can read from its stdin: one line."""
    if not value or "\n" in value:
        raise ValueError("must be one line, not empty")
    return value


def _umask(value):
    if not re.match(r"^0?[0-7]{3}$", value):
        raise ValueError("must be octal, such as 022")
    return value


def _choice(*choices):
    def parse(value):
        if value not in choices:
            raise ValueError("must be one of %s" % ", ".join(choices))
        return value
    return parse


def _flag(value):
    """``-o allow_other`` (Docker sends an empty value), ``yes`` or ``no``."""
    if value not in ("", "yes", "no"):
        raise ValueError("takes no value, or yes or no")
    return value != "no"


def _path(value):
    if not os.path.isabs(value):
        raise ValueError("must be an absolute path")
    return _word(value)


class SSHFSVolumes(dvp.Driver):
    """Each volume is ``sshcmd`` mounted on ``ROOT/mnt/NAME`` from its first
    mount to its last unmount."""

    #: Options given to sshfs as ``-o NAME=VALUE`` (``-o NAME`` for flags).
    PASSED_ON = {
        "IdentityFile": _path, "UserKnownHostsFile": _path,
        "StrictHostKeyChecking": _choice("yes", "no", "accept-new"),
        "ConnectTimeout": dvp.uint_option, "ServerAliveInterval": dvp.uint_option,
        "ServerAliveCountMax": dvp.uint_option, "Compression": _choice("yes", "no"),
        "uid": dvp.uint_option, "gid": dvp.uint_option, "umask": _umask,
        "idmap": _choice("none", "user"), "cache": _choice("yes", "no"),
        "reconnect": _flag, "allow_other": _flag, "default_permissions": _flag,
        "follow_symlinks": _flag,
    }
    options = dict(PASSED_ON, sshcmd=dvp.Option(_sshcmd, required=True),
                   port=dvp.Option(dvp.uint_option, default="22"), password=_password,
                   # containers run as any user; a dead server is noticed
                   allow_other=dvp.Option(_flag, default="yes"),
                   reconnect=dvp.Option(_flag, default="yes"),
                   ConnectTimeout=dvp.Option(dvp.uint_option, default="10"),
                   ServerAliveInterval=dvp.Option(dvp.uint_option, default="15"))

    def __init__(self, root="/var/lib/sshfs-volumes"):
        self.mounts = os.path.join(root, "mnt")
        os.makedirs(self.mounts, mode=0o700, exist_ok=True)
        dvp.Driver.__init__(self, os.path.join(root, "state"))

    def attach(self, name, options):
        path = os.path.join(self.mounts, name)
        if _mounted(path):
            if _connected(path):  # mounted already if a crash came before the count
                return path
            # Its sshfs is gone (a managed plugin's upgrade): the containers
            # that had it keep the dead mount, new ones get a new one.
            self.run("fusermount3", "-u", "-z", path)
        os.makedirs(path, mode=0o755, exist_ok=True)
        # sshfs says only "read: Connection reset by peer" when ssh fails:
        # ssh's own message (refused, login denied, host key) goes to a log.
        fd, ssh_log = tempfile.mkstemp(prefix="sshfs-")
        os.close(fd)
        try:
            self.run("sshfs", *self._arguments(options, ssh_log) + [options["sshcmd"], path],
                     input=options.get("password"))
        except dvp.PluginError as exc:
            with open(ssh_log, errors="replace") as f:
                said = " ".join(f.read().split())
            raise dvp.PluginError("%s%s" % (exc, " (%s)" % said if said else ""))
        finally:
            os.unlink(ssh_log)
        return path

    def detach(self, name, options, mountpoint):
        mountpoint = mountpoint or os.path.join(self.mounts, name)  # None: a crash in attach
        if _mounted(mountpoint):  # also when sshfs is gone ("not connected")
            self.run("fusermount3", "-u", mountpoint)

    def destroy(self, name, options):
        path = os.path.join(self.mounts, name)
        self.detach(name, options, path)
        if os.path.lexists(path):
            os.rmdir(path)  # empty once unmounted: the data stays on the server

    def is_attached(self, name, options, mountpoint):
        return _mounted(mountpoint) and _connected(mountpoint)

    def status(self, name, options):
        return {"mounted": _mounted(os.path.join(self.mounts, name))}

    def _arguments(self, options, ssh_log):
        arguments = ["-p", str(options["port"])]
        passed = ["ssh_command=ssh -E " + ssh_log]
        if options.get("password") is not None:
            passed += ["password_stdin", "PubkeyAuthentication=no"]
        for key, value in sorted(options.items()):
            if key in self.PASSED_ON and value is not False:
                passed.append(key if value is True else "%s=%s" % (key, value))
        return arguments + ["-o", ",".join(passed)]


def _connected(path):
    """False once the sshfs of a mount is gone; a server that does not
    answer now (EIO) is sshfs's to reconnect to."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno != errno.ENOTCONN  # "Transport endpoint is not connected"
    return True


def _mounted(path):
    """Whether ``path`` is a mount point, even one whose sshfs is gone (where
    os.path.ismount fails: "Transport endpoint is not connected")."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return path in [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
                    for point in points]
