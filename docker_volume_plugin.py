# MIT License
#
# Copyright (c) 2026 The docker-volume-plugin authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in
# all copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""Docker volume plugins in one standard-library file.

Give any object with ``create``, ``remove``, ``mount``, ``unmount``, ``get``
and ``list`` methods to :func:`serve`, and the Docker engine can use it as a
volume driver::

    import docker_volume_plugin as dvp
    dvp.serve(MyDriver(), name="mydriver")   # /run/docker/plugins/mydriver.sock

Or subclass :class:`Driver`, which keeps crash-safe records, counts mounts
per ID, locks each volume and checks names and options, and write only the
storage part; or run the built-in directory driver without writing any code::

    python3 docker_volume_plugin.py serve --name dirs --root /srv/volumes

Runs unchanged on CPython 3.6 to 3.13, with Docker and with Podman.
Importing it has no side effects. Copy the file into your project if you
like; keep this header with it.

Contents, in the order of the file (each section under its banner); a driver
author can stop reading after section 3:

1. Errors and shared helpers: ``PluginError``, ``VolumeNotFound``,
   ``PluginCallError``, ``format_rfc3339``, JSON as Go reads it, atomic
   files and lock files.
2. Protocol: ``Plugin``, the endpoints over any driver object.
3. Drivers: the option parsers, ``Driver``, which keeps the state, and
   ``DirectoryDriver`` on it.
4. HTTP: ``PluginRequestHandler`` on ``http.server``.
5. Servers: the threaded ``UnixPluginServer`` and ``TCPPluginServer`` and
   their limits, ``server_tls_context``, ``write_spec_file`` and
   ``write_json_spec_file``.
6. systemd: socket activation, readiness and the watchdog.
7. Observing: Prometheus metrics, the call trace, journald's priorities.
8. ``serve``: the servers until a signal.
9. Client and lookup: ``PluginClient``, ``find_plugin``, as the engines do it.
10. Checker: ``check_plugin``, the engines' call sequences and rules.
11. Tap: a recording proxy in front of any running plugin.
12. Command line: ``serve``, ``mounts``, ``check``, ``tap``, ``plugin-config``.
"""

__version__ = "0.2.0"

__all__ = [  # what README's Reference section lists, and nothing else
    "PluginError", "VolumeNotFound", "format_rfc3339",
    "Plugin", "PluginRequestHandler", "UnixPluginServer", "TCPPluginServer", "serve",
    "server_tls_context", "write_spec_file", "write_json_spec_file",
    "PLUGIN_SOCKET_DIR", "PLUGIN_SPEC_DIR",
    "Driver", "DirectoryDriver", "Option", "uint_option", "mode_option", "size_option",
    "PluginClient", "PluginCallError", "find_plugin", "PluginLookup", "check_plugin", "main",
]

import bisect
import contextlib
import datetime
import errno
import json
import logging
import os
import re
import select
import signal
import socket
import socketserver
import ssl
import stat
import sys
import threading
import time
import http.client
import http.server
import itertools
import struct

# Type hints are written as strings and the typing names imported only for type
# checkers: importing ``typing`` would cost up to 4 ms of every start-up, and
# plugin start-up sits in front of ``docker run`` after every reboot.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import io  # noqa: F401
    from typing import (  # noqa: F401
        Any, Callable, Dict, Iterable, Iterator, List, NoReturn, Optional, Tuple)

###############################################################################
# Errors and shared helpers ###################################################
###############################################################################

_monotonic = time.monotonic
_UTC = datetime.timezone.utc
log = logging.getLogger("docker_volume_plugin")

#: Where the engine looks for plugin sockets; fixed in moby (pkg/plugins/discovery.go).
PLUGIN_SOCKET_DIR = "/run/docker/plugins"
#: The first directory the engine searches for ``.spec``/``.json`` files.
PLUGIN_SPEC_DIR = "/etc/docker/plugins"
#: The Accept value the engine sends and the media type we answer with.
_PLUGIN_MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"

_DIGITS = re.compile(r"[0-9]+\Z")

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z")

# NaN and Infinity are not JSON: Go's decoder, and so the engine, fails on them.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

#: Flags for every file the plugin creates: never through a symbolic link
#: another user planted, never inherited by a child process.
_CREATE_FLAGS = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class PluginError(Exception):
    """An expected failure: Docker gets the message as ``{"Err": message}``.

    Raise it from a driver for anything the user should read (``no space
    left``, ``volume is in use``): it is logged on one line, without a
    traceback, and the ``docker`` command prints the message. Any other
    exception also reaches Docker, but is logged with its traceback.
    """

    #: The HTTP status of the reply. Any error must be a non-200: Podman looks
    #: only at the status and takes a 200 as success even with an ``Err``
    #: (libpod/plugin/volume_api.go ``handleErrorResponse``); Docker reads the
    #: ``Err`` of a non-200 and shows ``VolumeDriver.Create: <message>``
    #: (moby pkg/plugins/client.go). 500 is what go-plugins-helpers sends.
    status = 500


class VolumeNotFound(PluginError):
    """The named volume does not exist (logged quietly: Docker probes a lot)."""


class _BadRequest(PluginError):
    status = 400


class _HTTPError(PluginError):
    """A request that cannot be framed; the reply closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        PluginError.__init__(self, message)
        self.status = status


class PluginCallError(Exception):
    """A call that Docker would count as failed: transport, status or Err."""

    def __init__(self, message: str, status: "Optional[int]" = None) -> None:
        Exception.__init__(self, message)
        self.status = status


def format_rfc3339(value: "Any") -> "Optional[str]":
    """Return ``value`` as an RFC 3339 UTC timestamp Docker can decode, or None.

    Accepts an aware or naive :class:`datetime.datetime` (naive means local
    time, as everywhere in Python), seconds since the epoch, or an RFC 3339
    string with a timezone. Anything else gives None: Docker fails to decode a
    reply with a bad ``CreatedAt`` and then treats the volume as missing
    (moby volume/drivers/adapter.go, volume/service/store.go), so a bad value must be dropped, never sent.
    """
    try:
        if isinstance(value, datetime.datetime):
            moment = value if value.tzinfo is not None else value.astimezone()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            moment = datetime.datetime.fromtimestamp(value, _UTC)
        elif isinstance(value, str):
            m = _RFC3339.match(value)
            if m is None:
                return None
            year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
            micro = int((m.group(7) or "0").ljust(6, "0")[:6])
            if m.group(8):
                zone = _UTC
            else:
                offset = datetime.timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
                zone = datetime.timezone(-offset if m.group(9) == "-" else offset)
            moment = datetime.datetime(year, month, day, hour, minute, second, micro, zone)
        else:
            return None
        moment = moment.astimezone(_UTC)
    except (ValueError, OverflowError, OSError):
        return None
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    if moment.microsecond:
        text += ".%06d" % moment.microsecond
    return text + "Z"


def _encode_json(payload: "Any") -> bytes:
    return _JSON_ENCODER.encode(payload).encode("ascii")


def _error_body(message: str) -> bytes:
    """The body of every error reply: ``{"Err": message}``, as both engines read it."""
    return _encode_json({"Err": message})


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, PluginError):
        return str(exc) or type(exc).__name__
    # An OSError without its file names: a reply must not show the plugin's
    # paths (temporary files and the like); the log has them.
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_atomically(path: str, data: bytes, mode: int = 0o644,
                           durable: bool = True) -> None:
    """Replace ``path`` so that a reader, or a crash, never sees half a file.

    ``durable`` also makes it survive power loss (fsync of the file and its
    directory); without, it survives the process being killed.
    The temporary file is created new (``O_EXCL``, ``O_NOFOLLOW``): whatever
    stands at its name (a crash's leftover, a planted link) is unlinked, never
    written through.
    """
    directory = os.path.dirname(path) or "."
    tmp = "%s.tmp-%d-%d" % (path, os.getpid(), threading.get_ident())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_EXCL | _CREATE_FLAGS, mode)
    except FileExistsError:
        os.unlink(tmp)  # unlink does not follow a link: the link itself goes
        fd = os.open(tmp, os.O_WRONLY | os.O_EXCL | _CREATE_FLAGS, mode)
    try:
        try:
            view = memoryview(data)
            while view:  # a large write may be partial
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_directory(directory)


def _read_regular(path: str, follow_links: bool = False) -> bytes:
    """The bytes of the regular file ``path``: never through a link (unless
    ``follow_links``), and never waiting on a FIFO or a device planted in
    its place, which would hold up a start or a stop for ever (OSError)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_links else flags | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as regular:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "%s is not a regular file" % path)
        return regular.read()


def _foreign_link(path: str) -> "Optional[str]":
    """Why a symbolic link on the way to ``path`` is not to be followed, or None.

    A link another user owns could point anywhere (an ``/etc`` that the
    plugin would then make private and write in), and be turned elsewhere
    later: such a link is never followed, as ``fs.protected_symlinks`` does in
    sticky directories. Links that root or we own are followed.
    """
    allowed = (0, os.geteuid())
    current = ""
    for part in os.path.abspath(path).split(os.sep)[1:]:
        current += os.sep + part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None  # nothing below is made yet
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in allowed:
            return "%s is a symbolic link that uid %d owns: it could point anywhere" % (
                current, st.st_uid)
    return None


def _make_directories(path: str, mode: int) -> None:
    """``os.makedirs`` with ``mode`` for every directory it creates, whatever the
    umask; never through a link another user owns (PermissionError)."""
    planted = _foreign_link(path)
    if planted is not None:
        raise PermissionError(errno.EPERM, "refusing %s: %s" % (path, planted))
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _make_directories(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)  # mkdir's mode is cut by the umask


def _unsafe_directory(path: str) -> "Optional[str]":
    """Why another user could plant or swap files in ``path``, or None.

    ``path`` and every directory above it must belong to root or to us and
    be writable by no other user; a directory that others may write but with
    the sticky bit (``/tmp``) is safe above an entry that is ours.
    """
    planted = _foreign_link(path)
    if planted is not None:
        return planted
    allowed = (0, os.geteuid())
    current, below = os.path.realpath(path), None  # type: str, Optional[str]
    while True:
        st = os.stat(current)
        if st.st_uid not in allowed:
            return "%s belongs to uid %d, who could replace what is in it" % (current, st.st_uid)
        shared = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0)
        if shared and not (below is not None and st.st_mode & stat.S_ISVTX):
            return ("%s is writable by other users (mode %04o), who could plant links or "
                    "files in it" % (current, stat.S_IMODE(st.st_mode)))
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current, below = parent, current


def _hold_lock(lock_path: str, busy: str) -> int:
    """Create and flock ``lock_path`` (0600, never through a link); OSError
    saying ``busy`` if another process holds it."""
    import fcntl  # Unix only
    while True:
        fd = os.open(lock_path, os.O_RDWR | _CREATE_FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                return fd
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, busy)
        except FileNotFoundError:
            pass  # its last holder removed it as we took it: take the new one
        os.close(fd)


def _release_lock(lock_path: str, fd: int) -> None:
    """Remove a lock file we hold (nobody else can be using it), then let go."""
    try:
        if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
            os.unlink(lock_path)
    except OSError:
        pass
    os.close(fd)

###############################################################################
# Protocol: Plugin, the endpoints over any driver object ######################
###############################################################################

#: The Scopes the engine accepts in Capabilities (moby volume/drivers/adapter.go).
_SCOPES = ("local", "global")
#: Methods a volume driver must have; ``path`` and ``capabilities`` are optional.
_REQUIRED_METHODS = ("create", "remove", "mount", "unmount", "get", "list")
#: Endpoint -> (Plugin method, read-only). Read-only calls are the engine's
#: constant polling and are logged at DEBUG (moby volume/service/store.go).
_VOLUME_ROUTES = (
    ("/VolumeDriver.Create", "_volume_create", False),
    ("/VolumeDriver.Remove", "_volume_remove", False),
    ("/VolumeDriver.Mount", "_volume_mount", False),
    ("/VolumeDriver.Unmount", "_volume_unmount", False),
    ("/VolumeDriver.Get", "_volume_get", True),
    ("/VolumeDriver.List", "_volume_list", True),
    ("/VolumeDriver.Path", "_volume_path", True),
    ("/VolumeDriver.Capabilities", "_volume_capabilities", True),
)
#: Calls whose successful reply, if it cannot be delivered, :meth:`Plugin.undo` undoes.
_UNDO_IF_UNDELIVERED = frozenset(["/VolumeDriver.Mount"])
#: Longest string accepted in each request field, in characters: Docker's
#: names (its anonymous ones are 64 hex characters) and both engines' 64-hex
#: mount IDs fit well inside, and no file system takes a longer file name.
_FIELD_LIMITS = {"Name": 255, "ID": 128}

_quote_json = json.encoder.encode_basestring_ascii  # the C version where there is one
_LIST_ENTRY = '{"Name":%s,"Mountpoint":%s}'


def _decode_json_object(body: bytes) -> "Dict[str, Any]":
    """Decode a request body; an empty one (Activate, retries) is ``{}``."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadRequest("request body is not UTF-8")
    except ValueError as exc:
        raise _BadRequest("request body is not valid JSON: %s" % exc)
    except RecursionError:
        raise _BadRequest("request body is nested too deeply")
    if not isinstance(value, dict):
        raise _BadRequest("request body must be a JSON object, not %s" % type(value).__name__)
    return value


def _string_field(request: "Dict[str, Any]", field: str) -> str:
    value = request.get(field)
    if value is None:
        raise _BadRequest(
            "request has no %s (Docker resends a request with an empty body when "
            "a connection broke after sending it)" % field)
    if not isinstance(value, str):
        raise _BadRequest("%s must be a string, not %s" % (field, type(value).__name__))
    if not value:
        raise _BadRequest("%s is empty" % field)
    if len(value) > _FIELD_LIMITS[field]:
        raise _BadRequest("%s is %d characters long, over the limit of %d"
                          % (field, len(value), _FIELD_LIMITS[field]))
    return value


def _options_field(request: "Dict[str, Any]") -> "Dict[str, str]":
    opts = request.get("Opts")
    if opts is None:  # docker run -v and --mount send null (moby daemon/volumes.go)
        return {}
    if not isinstance(opts, dict):
        raise _BadRequest("Opts must be an object of strings, not %s" % type(opts).__name__)
    for key, value in opts.items():
        if not isinstance(value, str):
            raise _BadRequest("option %r must be a string, not %s" % (key, type(value).__name__))
    return opts


def _volume_reply(volume: "Any", name: str) -> "Dict[str, Any]":
    """Check a driver's volume mapping and shape it as Docker decodes it.

    The reply echoes the requested name (Docker uses the returned one). A bad
    optional field is dropped with an error in the log rather than sent: a
    reply Docker cannot decode makes it forget the volume (moby volume/drivers/adapter.go).
    """
    if not hasattr(volume, "get"):
        raise TypeError("driver's get(%r) returned %r, not a mapping" % (name, volume))
    reply = {"Name": name}  # type: Dict[str, Any]
    mountpoint = volume.get("Mountpoint")
    if isinstance(mountpoint, str):
        reply["Mountpoint"] = mountpoint
    elif mountpoint is not None:
        log.error("volume %r: dropping Mountpoint %r, not a string", name, mountpoint)
    created = volume.get("CreatedAt")
    if created is not None:
        text = format_rfc3339(created)
        if text is None:
            log.error("volume %r: dropping CreatedAt %r, not an RFC 3339 time with a timezone "
                      "(Docker would treat the volume as missing)", name, created)
        else:
            reply["CreatedAt"] = text
    status = volume.get("Status")
    if status is not None:
        try:
            _encode_json(status)
            if not isinstance(status, dict):
                raise TypeError("not an object")
            reply["Status"] = status
        except (TypeError, ValueError) as exc:
            log.error("volume %r: dropping Status %r: %s", name, status, exc)
    return reply


class Plugin(object):
    """Docker's plugin protocol: endpoint paths routed to Python callables.

    ``Plugin(driver)`` serves ``/Plugin.Activate`` and every
    ``/VolumeDriver.*`` endpoint for a duck-typed volume driver. A driver must
    have ``create(name, options)``, ``remove(name)``, ``mount(name, mount_id)``
    returning an absolute path, ``unmount(name, mount_id)``, ``get(name)``
    returning a volume mapping or None, and ``list()``. It may have
    ``path(name)`` (default: the ``Mountpoint`` from ``get``),
    ``capabilities()`` (default: ``{"Scope": "local"}``) and ``start()``,
    called here, before any call is served (:class:`Driver` loads its state
    in it).

    Serve more beside it without editing this file::

        plugin.add_route("/AuthZPlugin.AuthZReq", authz_request)
        plugin.implements.append("authz")

    A route handler takes the decoded request object and returns the reply
    object (or the reply already encoded as JSON bytes); a
    :class:`PluginError` it raises becomes ``{"Err": message}``.
    """

    def __init__(self, driver: "Any" = None) -> None:
        #: What ``Plugin.Activate`` announces.
        self.implements = []  # type: List[str]
        #: How many times ``Plugin.Activate`` was called.
        self.activations = 0
        #: ``"local"`` or ``"global"`` to announce whatever the driver's
        #: ``capabilities()`` say (``serve --scope``).
        self.scope = None  # type: Optional[str]
        self.driver = None  # type: Any
        self._outcomes = threading.local()  # each thread's last call's, for _take_outcome()
        self._routes = {}  # type: Dict[str, Tuple[Callable[[Dict[str, Any]], Dict[str, Any]], bool]]
        self.add_route("/Plugin.Activate", self._activate, read_only=False)
        if driver is not None:
            self.add_volume_driver(driver)

    def add_route(self, path: str, handler: "Callable[[Dict[str, Any]], Dict[str, Any]]",
                  read_only: bool = False) -> None:
        """Serve ``POST path`` with ``handler``; read-only calls log at DEBUG."""
        if not path.startswith("/"):
            path = "/" + path  # the engine prepends one too (moby pkg/plugins/client.go)
        self._routes[path] = (handler, read_only)

    def has_route(self, path: str) -> bool:
        """Whether ``POST path`` is served."""
        return path in self._routes

    def add_volume_driver(self, driver: "Any") -> None:
        """Serve the ``VolumeDriver`` interface with ``driver``.

        Raises TypeError, naming what is missing, unless ``driver`` has every
        required method: better now than at the engine's first call.
        """
        missing = [m for m in _REQUIRED_METHODS if not callable(getattr(driver, m, None))]
        missing += [m for m in ("path", "capabilities", "start")
                    if getattr(driver, m, None) is not None and not callable(getattr(driver, m))]
        if missing:
            raise TypeError("volume driver %r lacks method(s): %s" % (driver, ", ".join(missing)))
        if callable(getattr(driver, "start", None)):
            driver.start()
        self.driver = driver
        for path, method, read_only in _VOLUME_ROUTES:
            self.add_route(path, getattr(self, method), read_only)
        if "VolumeDriver" not in self.implements:
            self.implements.append("VolumeDriver")

    # -- dispatch -----------------------------------------------------------

    def handle(self, path: str, body: bytes) -> "Tuple[int, bytes]":
        """Answer one call: return the HTTP status and the JSON reply body.

        Every failure, from a malformed body to a driver's exception, becomes
        ``{"Err": message}``. Each call is logged on one line.
        """
        route = self._routes.get(path)
        if route is None:
            log.warning("%r: unknown endpoint", path)
            self._outcomes.last = "unknown_endpoint"
            return 404, _error_body("unknown endpoint %r; this plugin implements %s"
                                    % (path, ", ".join(self.implements) or "nothing"))
        handler, read_only = route
        if path == "/Plugin.Activate":
            # Docker activates once per engine lifetime, Podman in every
            # command it runs (libpod/plugin/volume_api.go): log the first.
            read_only, self.activations = self.activations > 0, self.activations + 1
        started = _monotonic()
        request = {}  # type: Dict[str, Any]
        try:
            request = _decode_json_object(body)
            reply = handler(request)
            encoded = reply if isinstance(reply, bytes) else _encode_json(reply)
        except Exception as exc:
            status = exc.status if isinstance(exc, PluginError) else 500
            self._log_call(path, request, started, exc, read_only)
            self._outcomes.last = ("not_found" if isinstance(exc, VolumeNotFound) else
                                   "refused" if isinstance(exc, PluginError) else "exception")
            return status, _error_body(_error_text(exc))
        self._log_call(path, request, started, None, read_only)
        self._outcomes.last = "ok"
        return 200, encoded

    def _take_outcome(self, status: int) -> str:
        """The outcome of the call :meth:`handle` just answered in this thread,
        for the metrics: ``ok``, ``not_found`` (the engines' probing),
        ``refused`` (a PluginError), ``exception`` (any other: a bug),
        ``unknown_endpoint``; by the status if an override never said."""
        outcome = self._outcomes.__dict__.pop("last", None)
        return outcome or ("ok" if status == 200 else "refused")

    @staticmethod
    def undoes(path: str) -> bool:
        """Whether a call to ``path`` is undone when its reply is not delivered."""
        return path in _UNDO_IF_UNDELIVERED

    def undo(self, path: str, body: bytes) -> None:
        """Undo a call whose successful reply could not be delivered.

        The server calls this when the client hung up before the reply was
        sent. Only a Mount needs it (:meth:`undoes`): the engine saw it fail,
        so it never sends the Unmount, and the volume would stay mounted for good.
        """
        if self.undoes(path):
            request = _decode_json_object(body)
            self._undo_mount(request["Name"], request["ID"],
                             "the client hung up before the reply (Podman waits 5 s, Docker 2 min)")

    def _undo_mount(self, name: str, mount_id: str, why: str) -> None:
        log.warning("VolumeDriver.Mount name=%r id=%r undone: %s", name, mount_id, why)
        try:
            self.driver.unmount(name, mount_id)
        except Exception:
            log.exception("undoing the mount of %r failed", name)

    @staticmethod
    def _log_call(path: str, request: "Dict[str, Any]", started: float,
                  exc: "Optional[BaseException]", read_only: bool) -> None:
        if exc is None:
            level, outcome = (logging.DEBUG if read_only else logging.INFO), "ok"
        elif isinstance(exc, VolumeNotFound) and read_only:
            level, outcome = logging.DEBUG, "not found"  # the engine's probing
        elif isinstance(exc, PluginError):
            level, outcome = logging.WARNING, "failed: %s" % _error_text(exc)
        else:
            level, outcome = logging.ERROR, "failed: %s" % _error_text(exc)
        if not log.isEnabledFor(level):
            return
        details = ""
        # At most 200 characters of each: a refused name can be a megabyte.
        if "Name" in request:
            details += " name=%.200r" % (request["Name"],)
        if "ID" in request:
            details += " id=%.200r" % (request["ID"],)
        log.log(level, "%s%s %.1fms %s", path.lstrip("/"), details,
                (_monotonic() - started) * 1000.0, outcome,
                exc_info=exc if level == logging.ERROR else None)

    # -- Plugin.Activate and VolumeDriver.* (moby volume/drivers/proxy.go) -----

    def _activate(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        return {"Implements": list(self.implements)}

    def _volume_create(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        self.driver.create(_string_field(request, "Name"), dict(_options_field(request)))
        return {}

    def _volume_remove(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        self.driver.remove(_string_field(request, "Name"))
        return {}

    def _volume_mount(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        name, mount_id = _string_field(request, "Name"), _string_field(request, "ID")
        mountpoint = self.driver.mount(name, mount_id)
        if not isinstance(mountpoint, str) or not os.path.isabs(mountpoint):
            # Docker stores whatever comes back and fails the container later,
            # and sends no Unmount after a failed Mount (moby
            # volume/drivers/adapter.go, volume/mounts/mounts.go): undo it.
            self._undo_mount(name, mount_id, "the driver returned no absolute path")
            raise PluginError("driver returned %r as the mountpoint of %r; it must be an "
                              "absolute path" % (mountpoint, name))
        return {"Mountpoint": mountpoint}

    def _volume_unmount(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        self.driver.unmount(_string_field(request, "Name"), _string_field(request, "ID"))
        return {}

    def _volume_get(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        name = _string_field(request, "Name")
        volume = self.driver.get(name)
        if volume is None:
            raise VolumeNotFound("no such volume: %r" % name)
        return {"Volume": _volume_reply(volume, name)}

    def _volume_list(self, request: "Dict[str, Any]") -> "Any":
        # Docker keeps only Name and Mountpoint of list entries, yet a bad
        # CreatedAt would fail the whole decode (moby volume/drivers/adapter.go): send just those.
        listing = self.driver.list()
        if not isinstance(listing, list):
            listing = list(listing)
        try:
            # Every entry a mapping with a string Name and Mountpoint (or
            # none): encoded in C loops, which keeps a List of 1,000 volumes
            # at 1.3x the requests a hand-written http.server plugin answers
            # (0.7x in a Python loop; benchmarks/bench.py). _quote_json raises
            # TypeError on a non-string; the loop below then sorts it out.
            names = [volume["Name"] for volume in listing]
            mountpoints = [volume.get("Mountpoint") or "" for volume in listing]
            if "" in names:
                raise ValueError("empty name")
            entries = map(_LIST_ENTRY.__mod__, zip(map(_quote_json, names),
                                                    map(_quote_json, mountpoints)))
            return ('{"Volumes":[%s]}' % ",".join(entries)).encode("ascii")
        except (KeyError, TypeError, AttributeError, ValueError):
            pass
        volumes = []  # the same entries, one at a time, dropping what is wrong
        for volume in listing:
            name = volume.get("Name") if hasattr(volume, "get") else None
            if not isinstance(name, str) or not name:
                log.error("driver listed a volume without a Name: %r", volume)
                continue
            mountpoint = volume.get("Mountpoint") or ""
            if not isinstance(mountpoint, str):
                log.error("volume %r: dropping Mountpoint %r, not a string", name, mountpoint)
                mountpoint = ""
            volumes.append({"Name": name, "Mountpoint": mountpoint})
        return {"Volumes": volumes}

    def _volume_path(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        name = _string_field(request, "Name")
        path_method = getattr(self.driver, "path", None)
        if path_method is not None:
            mountpoint = path_method(name)
        else:
            volume = self.driver.get(name)
            if volume is None:
                raise VolumeNotFound("no such volume: %r" % name)
            mountpoint = volume.get("Mountpoint")
        if mountpoint is not None and not isinstance(mountpoint, str):
            raise PluginError("driver returned %r as the path of %r" % (mountpoint, name))
        return {"Mountpoint": mountpoint or ""}

    def _volume_capabilities(self, request: "Dict[str, Any]") -> "Dict[str, Any]":
        method = getattr(self.driver, "capabilities", None)
        capabilities = dict(method()) if method is not None else {}
        if self.scope is not None:
            capabilities["Scope"] = self.scope
        scope = capabilities.setdefault("Scope", "local")
        if scope not in _SCOPES:
            raise PluginError("driver capabilities give Scope %r; Docker accepts 'local' or "
                              "'global'" % (scope,))
        return {"Capabilities": capabilities}

###############################################################################
# Drivers: option parsers, Driver, DirectoryDriver ############################
###############################################################################

#: The names Docker's own ``local`` driver accepts (moby volume/local/local.go);
#: they cover the 64-hex anonymous names. The engines pass plugin volume names
#: unchecked (moby volume/mounts/linux_parser.go), so a driver must check them.
_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
#: Longest volume name, in characters: a file name must fit NAME_MAX.
_MAX_VOLUME_NAME = 200
#: Digits accepted in a number option: 4294967294 has ten.
_MAX_ID_DIGITS = 10
#: Octal permissions, the sticky bit at most: setuid and setgid are refused.
_MODE = re.compile(r"0?1?[0-7]{1,3}\Z")
_SIZE = re.compile(r"([0-9]{1,15})([kKmMgGtT]?)[bB]?\Z")

_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_RECORD_VERSION = 2
#: A record's phases: being created, whole, being removed.
_PHASES = ("creating", "ready", "removing")
#: A volume's mount state when nothing mounts it: its count file holds
#: ``mounts`` (mount ID -> count), the ``mountpoint`` attach() gave, and
#: ``pending``, "attach" or "detach" while one is under way or has failed.
_NO_MOUNTS = {"mounts": {}, "mountpoint": None, "pending": None}  # type: Dict[str, Any]
_PENDING = (None, "attach", "detach")
#: Where boot-scoped state (mount counts, the lock) lives when run as root.
_RUN_DIR = "/run/docker-volume-plugin"
#: Set by ``plugin-config`` to a managed plugin's propagated mount, the one
#: place of its own that ``docker plugin upgrade`` keeps (it replaces the
#: rootfs, /run included: moby plugin/manager.go ``Upgrade``). A
#: :class:`Driver` then keeps its mount counts in ``_MANAGED_RUN_DIR`` there,
#: and refuses records in the rootfs.
_PROPAGATED_MOUNT_VARIABLE = "DVP_PROPAGATED_MOUNT"
_MANAGED_RUN_DIR = ".docker-volume-plugin-run"

#: In a shared state directory: each node's mount counts, and the lock all share.
_NODES_DIR = "nodes"
_SHARED_LOCK = "lock"

_STATE_DIR = ".docker-volume-plugin"
_V1_STATE_FILE = ".docker-volume-plugin.json"
_V1_LOCK_FILE = ".docker-volume-plugin.lock"
_TRASH_PREFIX = ".removing-"


def uint_option(value: str) -> int:
    """An option parser: a whole number from 0 to 4294967294 (a uid, a gid)."""
    if not _DIGITS.match(value) or len(value) > _MAX_ID_DIGITS or int(value) > 0xFFFFFFFE:
        raise ValueError("must be a number from 0 to 4294967294")
    return int(value)


def mode_option(value: str) -> int:
    """An option parser: octal permissions from 0 to 1777 (setuid and setgid refused)."""
    if not _MODE.match(value):
        raise ValueError("must be octal permissions from 0 to 1777, such as 0755 (setuid and "
                         "setgid are refused)")
    return int(value, 8)


def size_option(value: str) -> int:
    """An option parser: a size in bytes, with an optional K, M, G or T (powers of 1024)."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError("must be a size such as 512M or 10G")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


class Option(object):
    """An entry of :attr:`Driver.options` with more than a parser.

    ``Option(size_option, required=True)`` refuses a create without it;
    ``Option(str, default="ext4")`` gives it that value when it is not given.
    The values a volume was created with, defaults included, are recorded
    with it (so ``inspect`` shows them, and a default changed later never
    changes an existing volume). Called, it parses like its ``parser``.
    """

    def __init__(self, parser: "Callable[[str], Any]" = str, default: "Optional[str]" = None,
                 required: bool = False) -> None:
        self.parser, self.default, self.required = parser, default, required

    def __call__(self, value: str) -> "Any":
        return self.parser(value)


def _format_options(options: "Dict[str, str]") -> str:
    return ", ".join("%s=%s" % item for item in sorted(options.items())) or "(none)"


def _boot_id() -> "Optional[str]":
    try:
        with open(_BOOT_ID_FILE) as boot_id:
            return boot_id.read().strip()
    except OSError:
        return None


def _private_directory(path: str, what: str) -> str:
    """Make ``path`` 0700 (made if it is missing, tightened if it is not) and
    return it resolved, once: a link in it cannot be turned elsewhere later.
    One that another user could write is refused: the plugin runs as root,
    and they could plant links where it writes."""
    _make_directories(os.path.abspath(path), 0o700)
    real = os.path.realpath(path)
    unsafe = _unsafe_directory(real)
    if unsafe is not None:
        raise PermissionError(errno.EPERM, "refusing to keep %s in %s: %s. The plugin runs as "
                              "root; give it a directory no other user can write"
                              % (what, real, unsafe))
    if stat.S_IMODE(os.stat(real).st_mode) & 0o077:
        log.info("%s: taking away other users' access to the %s", real, what)
        try:
            os.chmod(real, 0o700)
        except OSError as exc:
            log.warning("cannot make %s private: %s", real, exc.strerror)
    return real


def _default_run_dir(state_dir: str) -> str:
    """A boot-scoped directory of our own for ``state_dir``'s mount counts."""
    import hashlib
    key = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:16]
    propagated_mount = os.environ.get(_PROPAGATED_MOUNT_VARIABLE)
    if propagated_mount:
        return os.path.join(propagated_mount, _MANAGED_RUN_DIR, key)
    if os.geteuid() == 0:
        return os.path.join(_RUN_DIR, key)
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        "/tmp", "docker-volume-plugin-%d" % os.geteuid())
    return os.path.join(base, "docker-volume-plugin", key)


def _mount_point_of(path: str) -> str:
    """The mount point of the file system ``path`` is on, from
    /proc/self/mountinfo: os.path.ismount misses a bind mount of a directory
    of the same file system, which is what Docker makes of a plugin's
    propagated mount and rootfs alike."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo", "rb") as mountinfo:
        points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                         os.fsdecode(line.split()[4])) for line in mountinfo]
    return max((point for point in points
                if path == point or path.startswith(point.rstrip("/") + "/")), key=len,
               default="/")


def _refuse_state_in_rootfs(state_dir: str) -> None:
    """In a managed plugin, records on the rootfs would be forgotten by the
    next ``docker plugin upgrade``, with every volume they describe."""
    propagated_mount = os.environ.get(_PROPAGATED_MOUNT_VARIABLE)
    if propagated_mount and _mount_point_of(state_dir) == "/":
        raise PluginError("refusing to keep volume records in %s, on the plugin's root file "
                          "system: docker plugin upgrade replaces it, and every volume would "
                          "be forgotten. Keep them under the propagated mount, %s (or a "
                          "mount of the host's)" % (state_dir, propagated_mount))


def _node_run_dir(state_dir: str, node: str) -> str:
    """Where one node counts its mounts of a shared ``state_dir``."""
    if not _VOLUME_NAME.match(node):
        raise ValueError("host name %r cannot name this node's mount counts" % node)
    return os.path.join(state_dir, _NODES_DIR, node)


def _storage_error(exc: OSError, directory: str) -> Exception:
    """A full or read-only file system, said plainly; other errors as they
    are. The reply names no path of the plugin's: the log does."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        log.error("%s: %s", directory, exc.strerror)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PluginError("no space left on the plugin's file system: free some, then try "
                           "again (mounting existing volumes still works)")
    if exc.errno == errno.EROFS:
        return PluginError("the plugin's file system is read-only: volumes cannot be created "
                           "or removed (mounting existing ones still works)")
    return exc


def _read_json(path: str, what: str) -> "Dict[str, Any]":
    """A state file, never through a link; a damaged one stops the start."""
    try:
        raw = _read_regular(path)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise ValueError("%s %s is not a regular file (a FIFO or a device put there?); not "
                         "starting. Move it away." % (what, path))
    try:
        value = json.loads(raw.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as exc:
        # Written atomically, so this is damage from outside: going on
        # without it would make the engines forget the volume.
        raise ValueError("%s %s is damaged (%s); not starting. Repair or move it away." % (
            what, path, "nested too deeply" if isinstance(exc, RecursionError) else exc))
    return value


def _is_string_map(value: "Any") -> bool:
    """Options as recorded: a JSON object of strings."""
    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(each, str) for key, each in value.items())


def _is_counts(value: "Any") -> bool:
    """Mount counts as recorded: a JSON object of mount IDs to positive whole numbers."""
    return isinstance(value, dict) and all(
        isinstance(key, str) and type(count) is int and count > 0 for key, count in value.items())


def _load_record(path: str) -> "Dict[str, Any]":
    """A volume record from disk, every field checked once.

    A version or phase this code does not know raises ValueError naming the
    file, which stops the start: such a record is never taken for a cut-short
    create or remove, whose storage is destroyed. Other damage (options that
    are not strings, a bad creation time) is described in ``damage``: the
    volume is still answered by Get and List, which the engines take for
    "no such volume" when they fail, but never mounted or removed.
    """
    record = _read_json(path, "volume record")
    version, phase = record.get("version"), record.get("phase")
    if version != _RECORD_VERSION or phase not in _PHASES:
        raise ValueError("volume record %s has version %.20r and phase %.20r; this version reads "
                         "version %d in phase %s: not starting, and not touching the volume. "
                         "Repair the record or move it away." % (
                             path, version, phase, _RECORD_VERSION, ", ".join(_PHASES)))
    problems = []
    options = record.get("options")
    if not _is_string_map(options):
        problems.append("its options %.80r are not an object of strings" % (options,))
        options = {}
    created_at = record.get("created_at")
    if created_at is not None and format_rfc3339(created_at) is None:
        problems.append("its created_at %.40r is not an RFC 3339 time" % (created_at,))
        created_at = None
    loaded = dict(record, options=options, created_at=created_at)
    if problems:
        loaded["damage"] = "volume record %s is damaged: %s" % (path, "; ".join(problems))
    return loaded


def _load_mounts(path: str) -> "Tuple[Dict[str, Any], Optional[str]]":
    """A mount count file from disk: its state, and what is damaged in it or None."""
    state = _read_json(path, "mount count file")
    mounts, mountpoint = state.get("mounts"), state.get("mountpoint")
    if not _is_counts(mounts):
        return state, "mount count file %s is damaged: its mounts %.80r are not counts" % (
            path, mounts)
    if mountpoint is not None and not (isinstance(mountpoint, str) and os.path.isabs(mountpoint)):
        return state, "mount count file %s is damaged: its mountpoint %.80r is not a path" % (
            path, mountpoint)
    if state.get("pending") not in _PENDING:
        return state, "mount count file %s is damaged: its pending %.40r is not %s" % (
            path, state.get("pending"), " or ".join(map(str, _PENDING[1:])))
    return state, None


def _nodes_mounting(state_dir: str, run_dir: str, name: str) -> "List[str]":
    """The nodes of a shared ``state_dir``, but the one of ``run_dir``, that
    count a mount of ``name``."""
    nodes_dir = os.path.join(state_dir, _NODES_DIR)
    if not os.path.isdir(nodes_dir):
        return []
    nodes = []
    for node in sorted(os.listdir(nodes_dir)):
        path = os.path.join(nodes_dir, node, name + ".json")
        if os.path.realpath(os.path.dirname(path)) != os.path.realpath(run_dir) and \
                os.path.exists(path):
            try:
                counts = _read_json(path, "mount count file")
                if counts.get("mounts") or counts.get("pending"):
                    nodes.append(node)
            except (OSError, ValueError):
                nodes.append(node)  # unreadable: take it as mounted
    return nodes


#: Words that make an option a secret, whose value is never shown or logged.
_SECRET_WORDS = ("password", "secret", "token", "key")


def _has_secret_word(option: str, words: "Iterable[str]" = _SECRET_WORDS) -> bool:
    """Whether an option is a secret: its name holds one of ``words``. What a
    trace hides of a driver that is no :class:`Driver`."""
    return any(word in option.lower() for word in words)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove %s: %s", path, exc.strerror)


class Driver(object):
    """A volume driver with the bookkeeping done: write only the storage part.

    Subclass it and override the hooks that your storage needs; each is
    called with that volume's lock held, never concurrently for one volume,
    while calls for other volumes run in parallel:

    ``exists(name, options) -> bool``
        Whether the storage of ``name`` is there already. Asked before a new
        volume is recorded: storage with no record (a restored backup, a
        state directory wiped by mistake) is refused and left as it is, so a
        create only ever undoes storage that it made itself. Default: False;
        define it whenever your storage can outlive its record.
    ``provision(name, options)``
        Make the storage of a new volume. ``options`` holds the parsed values.
        When it raises, or a crash cuts the create short, ``destroy`` removes
        what it made, so the create starts over: a volume exists with all its
        options or not at all. Never overwrite what is there: raise
        FileExistsError instead (``open(path, "xb")``, ``os.mkdir``), and it
        is left as it is.
    ``attach(name, options) -> str``
        Make the volume available on its first mount and return the absolute
        path that containers get. Default: :meth:`mountpoint`.
    ``detach(name, options, mountpoint)``
        After its last unmount. Default: nothing. When it raises (``umount:
        target is busy``), the unmount stands all the same, as the engine
        believes it: the detach is pending, logged at WARNING, and tried again
        at the volume's next mount (which uses the storage as it is if it is
        still attached), at its removal (refused until it succeeds), at the
        next start and every ``detach_retry_interval`` seconds. ``mountpoint``
        is None when a crash came during ``attach``: undo whatever it made.
    ``is_attached(name, options, mountpoint) -> bool``
        Whether storage attached earlier is still there, asked at each mount
        of a volume that is mounted already. When False, ``attach`` is called
        again, the mounts held kept (if it raises, that mount fails and
        nothing changes). Default: True. Define it when the storage can die
        while containers use it: a FUSE mount whose process was the plugin's
        (``docker plugin disable -f`` and ``upgrade`` stop it, and the engine
        unmounts it from the propagated mount), a network block device.
    ``destroy(name, options)``
        Delete the storage; never called while the volume is mounted. Must
        succeed for storage that is half made or already gone.
    ``mountpoint(name, options) -> Optional[str]``
        The path shown while the volume is not mounted. Default: None.
    ``status(name, options) -> dict``
        Extra fields for the volume's ``Status``. Default: none.

    Class attributes that may be overridden: ``options`` maps each accepted
    option to a parser, which takes the string and returns the value or raises
    ValueError saying what is expected (:func:`uint_option`,
    :func:`mode_option`, :func:`size_option`, or ``str``), or to an
    :class:`Option` with a default or required; an option not listed is
    refused. ``run(*argv, input=None)`` runs a program, its stderr the error.
    ``secret_words``: an option whose name contains one is a secret, never
    shown or logged. ``scope``: ``"local"``, or ``"global"`` for storage
    every node sees. ``name_pattern`` and ``max_name_length``: the names accepted.

    What it does for you: each volume is a record in ``state_dir``, one JSON
    file readable by root alone, replaced atomically and fsynced, so a create
    or remove that was answered survives ``kill -9`` and power loss. Mounts
    are counted per mount ID, ``docker cp`` reusing one, and kept in
    ``run_dir`` (boot-scoped, under ``/run`` by default): replaced atomically,
    so they survive ``kill -9``, but not fsynced, since no container survives a
    reboot. A volume with mounts left cannot be removed. A lock file keeps a
    second process off the same state. Mount and unmount write only to
    ``run_dir``, so they work when ``state_dir``'s file system is full or
    read-only; create and remove then fail saying so.

    ``shared`` (default: ``scope == "global"``) is for a ``state_dir`` that
    several nodes see, on a shared file system: every call reads the records
    from disk instead of memory, each node counts its mounts in
    ``state_dir/nodes/HOSTNAME/`` (its ``run_dir``), create, remove, mount
    and unmount take a lock on ``state_dir`` that all nodes share (so one node's
    change waits for another's), and a volume mounted on any node cannot be
    removed. Node host names must differ.
    """

    options = {}  # type: Dict[str, Callable[[str], Any]]
    #: Seconds between tries of a detach that failed.
    detach_retry_interval = 30.0
    #: Seconds a call waits for the lock on shared state (scope global)
    #: before it fails, naming the node that holds it: a node stopped while
    #: holding it (SIGSTOP, a hung NFS client) must not hang every node.
    #: Under Docker's 60 s deadline for Remove and Unmount.
    shared_lock_timeout = 30.0
    secret_words = _SECRET_WORDS
    scope = "local"
    name_pattern = _VOLUME_NAME
    max_name_length = _MAX_VOLUME_NAME

    def __init__(self, state_dir: str, run_dir: "Optional[str]" = None,
                 shared: "Optional[bool]" = None) -> None:
        self.shared = self.scope == "global" if shared is None else shared
        self.state_dir = _private_directory(state_dir, "volume state")
        _refuse_state_in_rootfs(self.state_dir)
        if run_dir is None:
            run_dir = (_node_run_dir(self.state_dir, socket.gethostname()) if self.shared
                       else _default_run_dir(self.state_dir))
        self.run_dir = _private_directory(run_dir, "mount counts")
        # Readable by root alone: anyone who could open it could flock it
        # and keep the plugin from starting.
        self._lock_fd = _hold_lock(os.path.join(self.run_dir, "lock"), "another process "
                                   "serves the volumes of %s" % self.state_dir)
        self._boot_id = _boot_id()
        self._locks_lock = threading.Lock()
        # name -> [lock, users]: kept only while a call holds or waits for it,
        # so names that do not exist leave nothing behind.
        self._volume_locks = {}  # type: Dict[str, List[Any]]
        # name -> record; name -> {"mounts": {id: n}, "mountpoint"}. Their
        # values are replaced, never changed in place, and the tables change
        # under _tables_lock, so Get reads one without a lock and List copies
        # one under it: no call waits for another volume's slow work.
        self._tables_lock = threading.Lock()
        self._volumes = {}  # type: Dict[str, Dict[str, Any]]
        self._parsed_options = {}  # type: Dict[str, Tuple[Dict[str, Any], Dict[str, Any]]]
        self._mounts = {}  # type: Dict[str, Dict[str, Any]]
        self._closing = threading.Event()
        self._retrier = None  # type: Optional[threading.Thread]  # tries pending detaches
        # Shared: one lock for all nodes, and one holder at a time in this
        # process (a flock belongs to the open file, not to a thread).
        self._shared_mutex = threading.Lock()
        self._shared_fd = -1
        self._start_lock = threading.Lock()
        self._started = False
        try:
            if self.shared:
                self._shared_fd = os.open(os.path.join(self.state_dir, _SHARED_LOCK),
                                          os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                          0o600)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Load the records and finish, or undo, what a crash cut short.

        Done once, after the subclass's own ``__init__`` (the hooks it runs,
        ``destroy`` and ``detach``, find their attributes): :class:`Plugin`,
        and so every server and :func:`serve`, calls it before the first
        call, and the first call does if nobody did. A state it cannot read
        raises (ValueError, OSError) and closes the driver.
        """
        with self._start_lock:
            if self._started:
                return
            with self._shared_lock():  # waited for in vain: not closed, tried again
                try:
                    self._start()
                except BaseException:
                    self.close()
                    raise
            self._started = True

    def close(self) -> None:
        """Release the lock on the state; tidy ``run_dir`` if no mount is left."""
        self._closing.set()
        if self._shared_fd >= 0:
            os.close(self._shared_fd)
            self._shared_fd = -1
        if self._lock_fd >= 0:
            try:
                only_lock = os.listdir(self.run_dir) == ["lock"]
            except OSError:  # removed under us: nothing to tidy
                only_lock = False
            if only_lock:
                _release_lock(os.path.join(self.run_dir, "lock"), self._lock_fd)
                try:
                    os.rmdir(self.run_dir)
                except OSError:
                    pass  # a successor's files arrived meanwhile
            else:
                os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the hooks ------------------------------------------------------------

    def exists(self, name: str, options: "Dict[str, Any]") -> bool:
        return False

    def provision(self, name: str, options: "Dict[str, Any]") -> None:
        pass

    def attach(self, name: str, options: "Dict[str, Any]") -> str:
        path = self.mountpoint(name, options)
        if path is None:
            raise NotImplementedError("%s must define attach() or mountpoint()"
                                      % type(self).__name__)
        return path

    def detach(self, name: str, options: "Dict[str, Any]", mountpoint: str) -> None:
        pass

    def is_attached(self, name: str, options: "Dict[str, Any]", mountpoint: str) -> bool:
        return True

    def destroy(self, name: str, options: "Dict[str, Any]") -> None:
        pass

    def mountpoint(self, name: str, options: "Dict[str, Any]") -> "Optional[str]":
        return None

    def status(self, name: str, options: "Dict[str, Any]") -> "Dict[str, Any]":
        return {}

    # -- the volume driver contract (see Plugin) ------------------------------

    def create(self, name: str, options: "Dict[str, str]") -> None:
        self.check_name(name)
        options = self.complete_options(options)
        parsed = self.parse_options(options)
        with self._volume_lock(name):
            existing = self._lookup(name)
            if existing is not None:
                self._intact_record(name, "create")
                if existing["options"] == options:
                    return  # a retried create: already done
                raise PluginError("volume %r already exists with options %s"
                                  % (name, self.format_options(existing["options"])))
            # Storage with no record is not ours to undo. Shared, a record in
            # the making is another node's create or remove that a crash cut
            # short (we hold every node's lock): its storage is half made or
            # half gone, and finished as that node's start would.
            if self.exists(name, parsed):
                if not (self.shared and os.path.lexists(self._record_path(name))):
                    raise PluginError("cannot create volume %r: its storage is there already, "
                                      "with no record: it is not a volume, and is left as it "
                                      "is. Move it away first" % name)
                try:
                    cut_short = _load_record(self._record_path(name))
                except ValueError as exc:  # never destroyed on doubt
                    log.error("volume %r: %s", name, exc)
                    raise PluginError("cannot create volume %r: its state is damaged (see the "
                                      "plugin's log)" % name)
                log.warning("volume %r: another node's %s was cut short; finishing it first",
                            name, "create" if cut_short["phase"] == "creating" else "remove")
                self.destroy(name, self._parsed(name, cut_short))
            record = {"version": _RECORD_VERSION, "phase": "creating", "options": dict(options),
                      "created_at": format_rfc3339(datetime.datetime.now(_UTC))}
            self._write_record(name, record)  # a crash from here on is undone at start
            try:
                self.provision(name, parsed)
                record = dict(record, phase="ready")
                self._write_record(name, record)
            except FileExistsError:  # what is there is not this create's to undo
                self._delete_record(name)
                raise PluginError("cannot create volume %r: its storage appeared while it was "
                                  "being made, and is left as it is" % name)
            except BaseException:
                self._undo_create(name, parsed)
                raise
            self._set(self._volumes, name, record)

    def remove(self, name: str) -> None:
        with self._volume_lock(name):
            record = self._intact_record(name, "remove")
            state = self._mounts.get(name) or _NO_MOUNTS
            if state["mounts"]:
                # Never the mount IDs: whoever can call Unmount could release them.
                raise PluginError("volume %r is in use: mounted %d time(s)"
                                  % (name, sum(state["mounts"].values())))
            if state["pending"] and not self._detach_again(
                    name, self._parsed(name, record), state):
                # destroy() never runs under attached storage.
                raise PluginError("volume %r is still attached: detaching it after its last "
                                  "unmount failed, and is tried again every %gs (see the "
                                  "plugin's log)" % (name, self.detach_retry_interval))
            nodes = self._nodes_mounting(name)
            if nodes:
                raise PluginError("volume %r is in use: mounted on node %s"
                                  % (name, ", ".join(nodes)))
            self._write_record(name, dict(record, phase="removing"))
            try:
                self.destroy(name, self._parsed(name, record))
            except BaseException:
                self._write_record(name, record)
                raise
            self._delete_record(name)

    def mount(self, name: str, mount_id: str) -> str:
        with self._volume_lock(name):
            record = self._intact_record(name, "mount")
            options = self._parsed(name, record)
            state = self._mounts.get(name) or _NO_MOUNTS
            if state["pending"] == "detach" and self._detach_again(name, options, state):
                state = _NO_MOUNTS
            mounts, path = dict(state["mounts"]), state["mountpoint"]
            # Still attached when its detach failed: used as it is.
            first = not mounts and state["pending"] != "detach"
            if first:
                # Recorded first: storage that a crash in attach() leaves is
                # detached at the next start, never forgotten.
                self._write_mounts(name, dict(_NO_MOUNTS, pending="attach"))
                try:
                    path = self.attach(name, options)
                except BaseException:
                    self._write_mounts(name, _NO_MOUNTS)
                    raise
            elif not self.is_attached(name, options, path):
                # The mounts held stay recorded as they are: a crash in this
                # attach leaves the next mount to ask again.
                log.warning("volume %r: its storage at %s is gone under %d mount(s); "
                            "attaching it again", name, path, sum(mounts.values()))
                path = self.attach(name, options)
            mounts[mount_id] = mounts.get(mount_id, 0) + 1  # docker cp reuses an ID
            try:
                self._write_mounts(name, {"mounts": mounts, "mountpoint": path, "pending": None})
            except BaseException:
                if first:
                    self.detach(name, options, path)
                raise
            return path

    def unmount(self, name: str, mount_id: str) -> None:
        with self._volume_lock(name):
            record = self._record(name)
            state = self._mounts.get(name) or _NO_MOUNTS
            mounts = dict(state["mounts"])
            count = mounts.pop(mount_id, 0)
            if count == 0:
                # Docker 20.10 can unmount more than it mounted (moby
                # volume/mounts/mounts.go); an unknown ID releases nothing.
                log.warning("volume %r: unmount of unknown mount ID %r ignored", name, mount_id)
                return
            if count > 1:
                mounts[mount_id] = count - 1
            # The engine has forgotten this mount whatever comes next: its
            # count goes. After the last, the detach is recorded as pending
            # first, so that neither a crash nor a failure in it strands the
            # storage attached and forgotten.
            self._write_mounts(name, {"mounts": mounts, "mountpoint": state["mountpoint"],
                                      "pending": None if mounts else "detach"})
            if not mounts:
                self._detach_again(name, self._parsed(name, record), self._mounts[name],
                                   retry=False)

    def get(self, name: str) -> "Optional[Dict[str, Any]]":
        record = self._lookup(name)
        if record is None:
            return None
        options = self._parsed(name, record)
        state = self._mounts.get(name) or _NO_MOUNTS
        status = {"options": self.redact(record["options"]),
                  "mounts": sum(state["mounts"].values())}  # type: Dict[str, Any]
        if state["pending"]:
            status["detach pending"] = True
        path = state["mountpoint"]
        try:
            status.update(self.status(name, options))
            path = path or self.mountpoint(name, options)
        except Exception as exc:
            # Never an error from Get for a volume that exists: the engine
            # would forget its labels and options (moby volume/service/store.go).
            log.exception("volume %r: describing it failed", name)
            status["problem"] = _error_text(exc)
        if "damage" in record:  # answered all the same, for the same reason
            status["problem"] = record["damage"]
        volume = {"Name": name, "CreatedAt": record["created_at"], "Status": status}
        if path:
            volume["Mountpoint"] = path
        return volume

    def list(self) -> "List[Dict[str, Any]]":
        return [{"Name": name, "Mountpoint": self._listed_mountpoint(name, record)}
                for name, record in self._snapshot()]

    def path(self, name: str) -> str:
        volume = self.get(name)
        if volume is None:
            raise VolumeNotFound("no such volume: %r" % name)
        return volume.get("Mountpoint") or ""

    def capabilities(self) -> "Dict[str, Any]":
        return {"Scope": self.scope}

    # -- helpers a subclass may use -------------------------------------------

    def check_name(self, name: str) -> None:
        """Refuse a name that is not ``name_pattern`` or too long."""
        if not self._is_volume_name(name):
            raise PluginError(
                "invalid volume name %r: use 1-%d letters, digits, '_', '.' or '-', starting "
                "with a letter or digit" % (name[:self.max_name_length + 20], self.max_name_length))

    def complete_options(self, options: "Dict[str, str]") -> "Dict[str, str]":
        """``options`` with the declared defaults added; a clear PluginError
        for a required one that is missing. What a new volume records."""
        completed = dict(options)
        for key, declared in sorted(self.options.items()):
            if key in completed or not isinstance(declared, Option):
                continue
            if declared.required:
                raise PluginError("option %s is required (-o %s=...)" % (key, key))
            if declared.default is not None:
                completed[key] = declared.default
        return completed

    def parse_options(self, options: "Dict[str, str]") -> "Dict[str, Any]":
        """The options' values, parsed; a clear PluginError for a bad one."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PluginError("unknown option(s) %s; known options: %s"
                              % (", ".join(map(repr, unknown)), ", ".join(sorted(self.options))
                                 or "none"))
        parsed = {}
        for key, value in options.items():
            try:
                parsed[key] = self.options[key](value)
            except ValueError as exc:
                shown = "****" if self.is_secret(key) else value[:20]
                raise PluginError("option %s=%s %s" % (key, shown, exc))
        return parsed

    def is_secret(self, option: str) -> bool:
        return _has_secret_word(option, self.secret_words)

    def redact(self, options: "Dict[str, str]") -> "Dict[str, str]":
        """``options`` with every secret's value hidden."""
        return dict((k, "****" if self.is_secret(k) else v) for k, v in options.items())

    def format_options(self, options: "Dict[str, str]") -> str:
        return _format_options(self.redact(options))

    @staticmethod
    def run(*argv: str, timeout: "Optional[float]" = 60.0, input: "Optional[str]" = None) -> str:
        """Run a program and return its output; a PluginError with its own
        message (its stderr) when it fails, is missing or takes too long.
        ``input`` is written to its stdin (a password: never on its command
        line, where any user sees it); otherwise stdin is /dev/null."""
        import subprocess  # only drivers that call programs need it
        # 3.6's run() refuses a stdin beside input, even None
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        try:
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    timeout=timeout, universal_newlines=True, **stdin)
        except FileNotFoundError:
            raise PluginError("%s: no such program (in a managed plugin: is it in its root "
                              "file system?)" % argv[0])
        except subprocess.TimeoutExpired as exc:
            raise PluginError("%s took over %gs; stopped" % (argv[0], exc.timeout))
        if result.returncode != 0:
            raise PluginError("%s failed: %s" % (argv[0], result.stderr.strip() or
                                                 "exit status %d" % result.returncode))
        return result.stdout

    def volumes(self) -> "Dict[str, Dict[str, Any]]":
        """Every volume: name -> {"options", "created_at", "mounts": {id: count}}."""
        return dict((name, {"options": record["options"], "created_at": record["created_at"],
                            "mounts": dict((self._mounts.get(name) or {}).get("mounts", {}))})
                    for name, record in self._snapshot())

    # -- internals ------------------------------------------------------------

    def _is_volume_name(self, name: str) -> bool:
        return bool(self.name_pattern.match(name)) and len(name) <= self.max_name_length and \
            "/" not in name and not name.startswith(".")

    def _set(self, table: "Dict[str, Any]", name: str, value: "Any") -> None:
        """Set (or, for None, remove) one entry of a table."""
        with self._tables_lock:
            if value is None:
                table.pop(name, None)
            else:
                table[name] = value

    def _snapshot(self) -> "List[Tuple[str, Dict[str, Any]]]":
        if not self._started:
            self.start()
        if self.shared:
            names = sorted(e[:-len(".json")] for e in os.listdir(self.state_dir)
                           if e.endswith(".json"))
            return [(name, record) for name, record in
                    ((name, self._lookup(name)) for name in names) if record is not None]
        with self._tables_lock:
            return list(self._volumes.items())

    def _lookup(self, name: str) -> "Optional[Dict[str, Any]]":
        """The record of a volume that exists, or None. Shared, from disk:
        another node may have made or removed it; written atomically, a
        record is read whole. Every call comes through here: a name that
        Create would refuse is no volume, and never part of a path."""
        if not self._is_volume_name(name):
            return None
        if not self._started:
            self.start()
        if not self.shared:
            return self._volumes.get(name)
        try:
            record = _load_record(self._record_path(name))
        except FileNotFoundError:
            return None
        except ValueError as exc:  # still answered, never mounted or removed
            log.error("volume %r: %s", name, exc)
            return {"version": _RECORD_VERSION, "phase": "ready", "options": {},
                    "created_at": None, "damage": str(exc)}
        return record if record["phase"] == "ready" else None

    def _listed_mountpoint(self, name: str, record: "Dict[str, Any]") -> str:
        state = self._mounts.get(name)
        if state and state["mountpoint"]:
            return state["mountpoint"]
        return self.mountpoint(name, self._parsed(name, record)) or ""

    def _parsed(self, name: str, record: "Dict[str, Any]") -> "Dict[str, Any]":
        """A recorded volume's options, parsed; never an error that would make
        the engine take the volume for missing. Kept while the record is the
        same object: List asks for every volume's."""
        cached = self._parsed_options.get(name)
        if cached is not None and cached[0] is record:
            return cached[1]
        try:
            parsed = self.parse_options(record.get("options") or {})
        except PluginError as exc:
            log.error("volume %r: its recorded options no longer parse: %s", name, exc)
            parsed = {}
        self._parsed_options[name] = (record, parsed)
        return parsed

    def _record(self, name: str) -> "Dict[str, Any]":
        record = self._lookup(name)
        if record is None:
            raise VolumeNotFound("no such volume: %r" % name)
        return record

    def _intact_record(self, name: str, action: str) -> "Dict[str, Any]":
        """The record of a volume that exists and is not damaged."""
        record = self._record(name)
        if "damage" in record:
            raise PluginError("cannot %s volume %r: its state is damaged (see the plugin's "
                              "log); repair it, then restart the plugin" % (action, name))
        return record

    @contextlib.contextmanager
    def _volume_lock(self, name: str) -> "Iterator[None]":
        if not self._started:
            self.start()  # before any lock: start() takes the shared one
        with self._locks_lock:
            entry = self._volume_locks.get(name)
            if entry is None:
                entry = self._volume_locks[name] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0], self._shared_lock():
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._volume_locks[name]

    def _record_path(self, name: str) -> str:
        return os.path.join(self.state_dir, name + ".json")

    def _write_record(self, name: str, record: "Dict[str, Any]") -> None:
        try:
            _write_file_atomically(self._record_path(name), _encode_json(record), 0o600)
        except OSError as exc:
            raise _storage_error(exc, self.state_dir)

    def _delete_record(self, name: str) -> None:
        self._set(self._volumes, name, None)
        self._set(self._mounts, name, None)
        self._parsed_options.pop(name, None)
        for path, durable in ((self._record_path(name), True),
                              (os.path.join(self.run_dir, name + ".json"), False)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error(exc, self.state_dir)
            if durable:
                _fsync_directory(self.state_dir)

    def _undo_create(self, name: str, parsed: "Dict[str, Any]") -> None:
        try:
            self.destroy(name, parsed)
            self._delete_record(name)
        except Exception:
            log.exception("volume %r: undoing a failed create failed; it is undone at the next "
                          "start", name)

    def _write_mounts(self, name: str, state: "Dict[str, Any]") -> None:
        path = os.path.join(self.run_dir, name + ".json")
        if state["mounts"] or state["pending"]:
            data = _encode_json({"boot_id": self._boot_id, "mounts": state["mounts"],
                                 "mountpoint": state["mountpoint"], "pending": state["pending"]})
            _write_file_atomically(path, data, 0o600, durable=False)
            self._set(self._mounts, name, state)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self._set(self._mounts, name, None)

    def _detach_again(self, name: str, options: "Dict[str, Any]", state: "Dict[str, Any]",
                      retry: bool = True) -> bool:
        """Detach storage whose detach is pending; True once it is detached.

        Called with the volume's lock held; a failure is logged, and tried
        again every ``detach_retry_interval`` seconds.
        """
        try:
            self.detach(name, options, state["mountpoint"])
        except Exception as exc:
            log.warning("volume %r: detaching it %s failed: %s; trying again at its next mount "
                        "or removal and every %gs", name, "again" if retry else
                        "after its last unmount", _error_text(exc), self.detach_retry_interval)
            self._write_mounts(name, dict(state, pending="detach"))
            with self._tables_lock:
                if self._retrier is None:
                    self._retrier = threading.Thread(target=self._retry_detaches,
                                                     name="docker-volume-plugin-detach")
                    self._retrier.daemon = True
                    self._retrier.start()
            return False
        if retry:
            log.info("volume %r: detached at last", name)
        self._write_mounts(name, _NO_MOUNTS)
        return True

    def _retry_detaches(self) -> None:
        while not self._closing.wait(self.detach_retry_interval):
            with self._tables_lock:
                pending = [name for name, state in self._mounts.items()
                           if state["pending"] == "detach"]
                if not pending:
                    self._retrier = None
                    return
            for name in pending:
                with self._volume_lock(name):
                    state, record = self._mounts.get(name), self._lookup(name)
                    if state is not None and state["pending"] == "detach" and record is not None:
                        self._detach_again(name, self._parsed(name, record), state)

    def _start(self) -> None:
        """Load the records and finish, or undo, what a crash cut short."""
        self._upgrade()
        volumes = {}  # type: Dict[str, Dict[str, Any]]
        for entry in sorted(os.listdir(self.state_dir)):
            path = os.path.join(self.state_dir, entry)
            if ".json.tmp-" in entry:
                _unlink_quietly(path)  # a write cut short; the record itself is whole
                continue
            if not entry.endswith(".json"):
                continue
            name, record = entry[:-len(".json")], _load_record(path)
            if record["phase"] == "ready":
                volumes[name] = record
                if "damage" in record:
                    log.error("volume %r: %s; it is listed, but not mounted or removed until "
                              "repaired", name, record["damage"])
                continue
            # A create or a remove that was never answered: finish it.
            log.warning("volume %r: a %s was cut short; finishing it", name,
                        "create" if record["phase"] == "creating" else "remove")
            try:
                self.destroy(name, self._parsed(name, record))
                _unlink_quietly(path)
            except Exception:
                log.exception("volume %r: could not finish; trying again at the next start", name)
        self._volumes = volumes
        mounts = {}
        for entry in os.listdir(self.run_dir):
            if not entry.endswith(".json"):
                if ".json.tmp-" in entry:
                    _unlink_quietly(os.path.join(self.run_dir, entry))
                continue
            name = entry[:-len(".json")]
            state, damage = _load_mounts(os.path.join(self.run_dir, entry))
            if name in volumes and damage is None:
                damage = self._foreign_mountpoint(name, volumes[name], state.get("mountpoint"))
            if name in volumes and damage is not None:
                # Kept, and the volume with it: it may be mounted.
                log.error("volume %r: %s; it is listed, but not mounted or removed until "
                          "repaired", name, damage)
                volumes[name] = dict(volumes[name], damage=damage)
            elif name in volumes and state.get("boot_id") == self._boot_id and (
                    state["mounts"] or state.get("pending")):
                mounts[name] = {"mounts": state["mounts"], "mountpoint": state.get("mountpoint"),
                                "pending": state.get("pending")}
            else:  # a reboot (no container survived it) or a volume since removed
                _unlink_quietly(os.path.join(self.run_dir, entry))
        self._mounts = mounts
        for name, state in sorted(mounts.items()):
            if state["pending"]:  # a crash during attach or detach, or a detach that failed
                log.warning("volume %r: its %s was cut short or failed; detaching it", name,
                            "attach" if state["pending"] == "attach" else "detach")
                self._detach_again(name, self._parsed(name, volumes[name]),
                                   dict(state, pending="detach"))

    def _upgrade(self) -> None:
        """Convert state of an earlier version; nothing by default."""

    def _tally(self) -> "Tuple[int, int, int]":
        """The volumes, the mounts counted and the detaches pending: the metrics'."""
        with self._tables_lock:
            volumes, states = len(self._volumes), list(self._mounts.values())
        if self.shared:  # the records are on disk, every node's
            volumes = len(self._snapshot())
        return (volumes, sum(sum(state["mounts"].values()) for state in states),
                sum(1 for state in states if state["pending"] == "detach"))

    def _foreign_mountpoint(self, name: str, record: "Dict[str, Any]",
                            stored: "Optional[str]") -> "Optional[str]":
        """Why a count file's mountpoint is not to be handed out, or None: it
        is the path the next Mount returns, so it must be the volume's own
        where the driver can say what that is (``mountpoint()``)."""
        if not stored:
            return None
        try:
            expected = self.mountpoint(name, self._parsed(name, record))
        except Exception:
            return None  # only known at attach: nothing to compare with
        if expected and os.path.normpath(expected) != os.path.normpath(stored):
            return ("mount count file of %r is damaged: its mountpoint %.80r is not the "
                    "volume's, %s" % (name, stored, expected))
        return None

    # -- shared state (scope global): every node's mounts, one lock for all ---

    def _nodes_mounting(self, name: str) -> "List[str]":
        """The other nodes that count a mount of ``name`` (shared state only)."""
        return _nodes_mounting(self.state_dir, self.run_dir, name) if self.shared else []

    @contextlib.contextmanager
    def _shared_lock(self) -> "Iterator[None]":
        """All nodes' lock on shared state; nothing when not shared.

        Waits at most ``shared_lock_timeout`` (flock itself has no timeout:
        it is tried every 50 ms), then fails naming the holder, which each
        holder writes in the lock file.
        """
        if self._shared_fd < 0:
            yield
            return
        import fcntl
        deadline = _monotonic() + self.shared_lock_timeout
        if not self._shared_mutex.acquire(timeout=self.shared_lock_timeout):
            raise PluginError("another call of this node has held the lock on shared state "
                              "for over %gs; try again" % self.shared_lock_timeout)
        try:
            while True:
                try:
                    fcntl.flock(self._shared_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if _monotonic() >= deadline:
                        holder = os.pread(self._shared_fd, 200, 0).decode("utf-8", "replace")
                        raise PluginError("the lock on shared state has been held for over "
                                          "%gs by %s: is that node stopped or cut off? Try "
                                          "again" % (self.shared_lock_timeout, holder.strip()
                                                     or "another node"))
                    time.sleep(0.05)
            os.ftruncate(self._shared_fd, 0)
            os.pwrite(self._shared_fd, ("node %s (pid %d) since %s\n" % (
                os.path.basename(self.run_dir), os.getpid(),
                format_rfc3339(datetime.datetime.now(_UTC)))).encode("utf-8"), 0)
            try:
                yield
            finally:
                if self._shared_fd >= 0:  # close() in a failed start closes it
                    fcntl.flock(self._shared_fd, fcntl.LOCK_UN)
        finally:
            self._shared_mutex.release()


def _is_real_directory(path: str) -> bool:
    """A directory, not a symlink to one: we never follow a link out of the root."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove_tree(path: str) -> None:
    import shutil
    try:
        if _is_real_directory(path):
            shutil.rmtree(path)  # does not follow symlinks inside the tree
        else:
            os.unlink(path)
    except OSError as exc:
        log.error("could not remove %s: %s (it is removed at the next start)", path, exc)


class DirectoryDriver(Driver):
    """Each volume is a directory under ``root``; built on :class:`Driver`.

    Options: ``uid``, ``gid`` (numbers) and ``mode`` (octal, 0 to 1777,
    default 0755) of the volume's directory. Records live in
    ``root/.docker-volume-plugin/``. The root is made private (0700); one
    another user could write is refused. A volume whose directory has
    vanished is reported in its ``Status`` and never mounted, rather than
    handed to a container empty; a directory under the root with no record
    is not a volume and is left alone. A root written by version 0.1 (one
    ``.docker-volume-plugin.json``) is converted at the first start, keeping
    every volume, option, creation time and mount count.
    """

    options = {"uid": uint_option, "gid": uint_option, "mode": mode_option}

    def __init__(self, root: str, run_dir: "Optional[str]" = None,
                 shared: "Optional[bool]" = None) -> None:
        self.root = _private_directory(root, "volumes")
        Driver.__init__(self, os.path.join(self.root, _STATE_DIR), run_dir, shared)

    def exists(self, name: str, options: "Dict[str, Any]") -> bool:
        return os.path.lexists(self._path(name))

    def provision(self, name: str, options: "Dict[str, Any]") -> None:
        path = self._path(name)
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            raise _storage_error(exc, self.root)
        uid, gid = options.get("uid"), options.get("gid")
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(path, options.get("mode", 0o755))

    def attach(self, name: str, options: "Dict[str, Any]") -> str:
        path = self._path(name)
        if not _is_real_directory(path):
            log.error("volume %r: its directory %s is missing", name, path)
            raise PluginError("the directory of volume %r is missing; not mounting an empty "
                              "one in its place" % name)
        return path

    def destroy(self, name: str, options: "Dict[str, Any]") -> None:
        path = self._path(name)
        if _is_real_directory(path):
            trash = os.path.join(self.root, _TRASH_PREFIX + name)
            if os.path.lexists(trash):
                _remove_tree(trash)
            try:
                os.rename(path, trash)  # gone from its name at once, whatever rmtree meets
            except OSError as exc:
                raise _storage_error(exc, self.root)
            _remove_tree(trash)
        elif os.path.lexists(path):
            log.warning("volume %r: %s is not a directory; leaving it", name, path)

    def mountpoint(self, name: str, options: "Dict[str, Any]") -> str:
        return self._path(name)

    def status(self, name: str, options: "Dict[str, Any]") -> "Dict[str, Any]":
        path = self._path(name)
        return {} if _is_real_directory(path) else {"problem": "directory %s is missing" % path}

    def list(self) -> "List[Dict[str, Any]]":
        # Mounted or not, a volume's path is the same: spare List, which the
        # engine sends for every `docker volume ls`, a call per volume.
        root = self.root + os.sep
        return [{"Name": name, "Mountpoint": root + name} for name, _ in self._snapshot()]

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _start(self) -> None:
        for entry in os.listdir(self.root):
            if entry.startswith(_TRASH_PREFIX):
                _remove_tree(os.path.join(self.root, entry))  # a remove cut short
        Driver._start(self)
        for name in self._volumes:
            if not _is_real_directory(self._path(name)):
                log.warning("volume %r: directory %s is missing", name, self._path(name))
        for entry in sorted(os.listdir(self.root)):
            if not entry.startswith(".") and entry not in self._volumes:
                log.warning("%s has no record: not a volume; left alone",
                            os.path.join(self.root, entry))

    #: Seconds between two progress lines of a 0.1 conversion.
    upgrade_report_interval = 5.0

    def _upgrade(self) -> None:
        """Convert a version 0.1 root: one state file for every volume.

        Every entry is checked before anything is written. Interrupted (a
        kill, a systemd start timeout), the next start goes on from where it
        stopped: the old file stays until every record is written, and a
        record already there is kept.
        """
        old = os.path.join(self.root, _V1_STATE_FILE)
        if not os.path.lexists(old):
            return
        state = _read_json(old, "state file")
        if state.get("version") != 1 or not isinstance(state.get("volumes"), dict):
            raise ValueError("state file %s has version %.20r; this version reads 1"
                             % (old, state.get("version")))
        for name, entry in state["volumes"].items():
            problem = ("its name is not a volume name" if not _VOLUME_NAME.match(name) else
                       "it is not an object" if not isinstance(entry, dict) else
                       "its options are not an object of strings"
                       if not _is_string_map(entry.get("options") or {}) else
                       "its created_at is not an RFC 3339 time"
                       if entry.get("created_at") is not None and
                       format_rfc3339(entry["created_at"]) is None else
                       "its mounts are not counts" if not _is_counts(entry.get("mounts") or {})
                       else None)
            if problem:
                raise ValueError("state file %s has a damaged entry %.80r (%s); not starting, "
                                 "nothing converted" % (old, name, problem))
        same_boot = state.get("boot_id") in (None, self._boot_id)
        names = sorted(state["volumes"])
        log.info("converting %d volume(s) from %s", len(names), old)
        started = reported = _monotonic()
        for done, name in enumerate(names):
            entry = state["volumes"][name]
            if not os.path.lexists(self._record_path(name)):  # else: written before a stop
                self._write_record(name, {"version": _RECORD_VERSION, "phase": "ready",
                                          "options": entry.get("options") or {},
                                          "created_at": entry.get("created_at")})
            counts = os.path.join(self.run_dir, name + ".json")
            if same_boot and entry.get("mounts") and not os.path.lexists(counts):
                self._write_mounts(name, {"mounts": entry["mounts"], "mountpoint": self._path(name),
                                          "pending": None})
            now = _monotonic()
            if now - reported >= self.upgrade_report_interval:
                reported = now
                log.info("converting: %d of %d volume(s) done, about %.0fs left", done + 1,
                         len(names), (now - started) / (done + 1) * (len(names) - done - 1))
        os.rename(old, old + ".converted")
        _unlink_quietly(os.path.join(self.root, _V1_LOCK_FILE))
        log.info("converted %d volume(s) from %s in %.1fs (kept as %s.converted)",
                 len(names), old, _monotonic() - started, old)

###############################################################################
# HTTP: PluginRequestHandler on http.server ###################################
###############################################################################

_HEX_DIGITS = re.compile(br"[0-9A-Fa-f]{1,16}\Z")
#: Headers a request may carry once: two lengths or hosts are a smuggling attempt.
_SINGLE_HEADERS = frozenset(["content-length", "transfer-encoding", "host"])
_DATE = [0, ""]  # type: List[Any]  # the Date header's second and text
_CONNECTION_IDS = itertools.count(1)  # next() on it is atomic in CPython


class PluginRequestHandler(http.server.BaseHTTPRequestHandler):
    """The engine's JSON POSTs on a keep-alive connection, on the stdlib's
    HTTP machinery.

    ``BaseHTTPRequestHandler`` reads the request line and headers
    (``parse_request``, with its limits: 64 KiB a line, 100 header lines)
    and dispatches ``do_POST``; what it lacks is added as small hooks:
    the body's framing (``Content-Length``, or ``chunked`` decoded in one
    pass), the server's body limits, JSON error replies (``send_error``) and
    405 for any method but POST. Requests come as the engine sends them: no
    Content-Type, an empty Host, a body ending in a newline, an empty body.

    The socket stays blocking, as the stdlib leaves it: a socket timeout
    costs a poll() before every read and write, and a Get 1.29x the CPU
    (benchmarks/bench.py). The deadlines (a whole request, a reply, an
    idle connection) are kept by the server's loop instead, which asks every
    connection to :meth:`cut_off_if_late` at each turn.

    What it needs of its server, as :class:`UnixPluginServer` and
    :class:`TCPPluginServer` provide it: ``plugin`` (a :class:`Plugin`), the
    limits ``max_body_bytes``, ``max_body_memory``, ``small_body``,
    ``max_chunk_line``, ``request_timeout`` and ``idle_timeout``,
    ``stopping``, ``add_handler``/``remove_handler`` (around each
    connection), ``reserve_body``/``release_body`` (around each body) and
    ``observers``, each told of every call (the metrics, the trace).
    """

    protocol_version = "HTTP/1.1"
    # What a request line too broken to name a version is answered in: the
    # stdlib's default, HTTP/0.9, has no status line, so the error would
    # reach no client.
    default_request_version = "HTTP/1.1"
    server_version = "docker-volume-plugin/" + __version__
    server: "_PluginServerMixin"
    rfile: "io.BufferedReader"

    def setup(self) -> None:
        http.server.BaseHTTPRequestHandler.setup(self)
        # While a request is read or a reply written: when the connection is
        # late. None while idle and while the driver works.
        self._deadline = None  # type: Optional[float]
        # Set once the connection was cut off for being late.
        self._timed_out = False
        # Held while cut_off_if_late() decides, and while this thread moves
        # from reading to the driver's work: so a request read whole is never
        # cut off under the driver (a Mount taken for undelivered would be
        # undone).
        self._clock = threading.Lock()
        self._busy = False  # from a request's first byte until its reply is sent
        self._idle_since = _monotonic()  # when it last began to wait for a request
        self._reserved = 0  # bytes of the server's body memory this request holds
        #: A number for the connection, unique in the process: the trace's ``connection``.
        self.connection_id = next(_CONNECTION_IDS)
        self._peer = None  # type: Optional[Dict[str, Any]]

    def handle(self) -> None:
        self.server.add_handler(self)
        try:
            if hasattr(self.connection, "do_handshake") and not self._handshake():
                return
            http.server.BaseHTTPRequestHandler.handle(self)
        except OSError as exc:  # the client went away mid-reply
            log.debug("connection error: %s", exc)
        finally:
            self.server.remove_handler(self)

    def handle_one_request(self) -> None:
        """Wait for a request (idle), then serve it within the deadline."""
        try:
            waiting = self.rfile.peek(1)
        except OSError:  # reset, or stop() shut it down
            waiting = b""
        if not waiting or not self._begin():  # closed, or idle too long
            self.close_connection = True
            return
        self.replied = False
        # What parse_request() sets, for a reply to a request it never saw.
        self.requestline, self.command, self.path = "", "", ""
        self.request_version = self.default_request_version
        try:
            http.server.BaseHTTPRequestHandler.handle_one_request(self)
            if self._timed_out and not self.replied:
                self.send_error(408)  # cut off in the request line: say why
        finally:
            self._end()
            self.server.release_body(self._reserved)
            self._reserved = 0

    def parse_request(self) -> bool:
        if not http.server.BaseHTTPRequestHandler.parse_request(self):
            return False
        if self._timed_out:  # the headers were cut off: never act on them
            self.send_error(408)
            return False
        if self.headers.defects:  # a line that is no header: nothing after it is trusted
            self.send_error(400, "malformed header block (%s)"
                            % type(self.headers.defects[0]).__name__)
            return False
        seen = set()  # type: set
        for name in self.headers.keys():
            lowered = name.lower()
            if lowered in seen and lowered in _SINGLE_HEADERS:
                self.send_error(400, "duplicate %s header" % name)
                return False
            seen.add(lowered)
        if self.command != "POST":
            self._refuse_method()
            return False
        return True

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except _HTTPError as exc:
            self.send_error(exc.status, str(exc))
            return
        with self._clock:
            self._deadline = None  # the driver may take its time (a network mount)
            late = self._timed_out
        if late:
            self.send_error(408)
            return
        started = _monotonic()
        answer = self._answer(body)
        if answer is None:  # nobody waits for it any more
            self.close_connection = True
            return
        status, reply, outcome = answer
        try:
            outcome = self._deliver(status, reply, body, outcome)
        finally:
            for observer in self.server.observers:
                observer.called(self, body, status, reply, outcome, _monotonic() - started)

    def _answer(self, body: bytes) -> "Optional[Tuple[int, bytes, str]]":
        """The status, reply and outcome of a call: the plugin's answer."""
        plugin = self.server.plugin
        status, reply = plugin.handle(self.path, body)
        return status, reply, plugin._take_outcome(status)

    def _deliver(self, status: int, reply: bytes, body: bytes, outcome: str) -> str:
        """Send the reply; undo a Mount it could not deliver. Returns the
        outcome, ``undelivered`` then."""
        plugin = self.server.plugin
        if status != 200 or not plugin.undoes(self.path):
            self._reply(status, reply)
            return outcome
        # Nobody may be waiting any more: Podman gives up after 5 s, the
        # engine after 2 min, and neither sends an Unmount for a Mount it
        # saw fail (moby volume/mounts/mounts.go; libpod/plugin).
        delivered = not self._client_gone()
        if delivered:
            try:
                self._reply(status, reply)
            except OSError:
                delivered = False
        if delivered:
            return outcome
        plugin.undo(self.path, body)
        self.close_connection = True
        return "undelivered"

    @property
    def peer(self) -> "Dict[str, Any]":
        """Who calls: on a Unix socket the ``pid``, ``uid`` and ``command``
        of the process that connected (SO_PEERCRED: dockerd, podman, ...),
        on TCP its ``address``. Looked up once, when first asked."""
        if self._peer is None:
            if self.connection.family != socket.AF_UNIX:
                self._peer = {"address": "%s:%s" % tuple(self.client_address[:2])}
                return self._peer
            try:
                pid, uid, _ = struct.unpack("3i", self.connection.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            except OSError:
                self._peer = {}
                return self._peer
            self._peer = {"pid": pid, "uid": uid}
            try:  # gone already, or in a PID namespace we cannot see (pid 0)
                with open("/proc/%d/comm" % pid) as comm:
                    self._peer["command"] = comm.read().strip()
            except OSError:
                pass
        return self._peer

    def send_error(self, code: int, message: "Optional[str]" = None,
                   explain: "Optional[str]" = None) -> None:
        """Every error as the engines read one: JSON ``{"Err": ...}``, and the
        connection closed, since where the next request starts is unknown."""
        if self._timed_out:  # whatever the cut-off made of the request
            code, message = 408, "request not received within %gs" % self.server.request_timeout
        message = message or self.responses.get(code, ("error",))[0]
        if explain:
            message = "%s: %s" % (message, explain)
        log.warning("bad request%s: %s", " to %r" % self.path if getattr(self, "path", "")
                    else "", message)
        self.close_connection = True
        self._reply(code, _error_body(message))

    # -- what the server asks of a connection ------------------------------------

    @property
    def busy(self) -> bool:
        """True from a request's first byte until its reply is sent: stop()
        waits for it, and it is never closed to make room."""
        return self._busy

    @property
    def idle_since(self) -> float:
        """When the connection last began to wait for a request (monotonic)."""
        return self._idle_since

    def cut_off_if_late(self, now: float) -> None:
        """Shut the connection down if it is late, by the server's deadlines.

        Late with a request (or with reading our reply), its reads are shut,
        so that it is answered 408, with a deadline of its own; late with
        that too, its writes are shut. Idle for over ``idle_timeout``, it is
        closed.
        """
        with self._clock:
            if self._deadline is not None and now > self._deadline:
                how = socket.SHUT_RDWR if self._timed_out else socket.SHUT_RD
                # The 408 is due by then: its thread may not even have woken
                # before the loop's next turn, a few milliseconds away.
                self._deadline = now + self.server.request_timeout
            elif not self._busy and now - self._idle_since > self.server.idle_timeout:
                how = socket.SHUT_RDWR
            else:
                return
            self._timed_out = True
            self.hang_up(how)

    def hang_up(self, how: int = socket.SHUT_RDWR) -> None:
        """Shut the connection down: its thread wakes and ends."""
        try:
            self.connection.shutdown(how)
        except OSError:
            pass

    # -- the stdlib's hooks -------------------------------------------------------

    def address_string(self) -> str:
        # The stdlib's indexes client_address, which is '' on a Unix socket.
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: "Any") -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code: "Any" = "-", size: "Any" = "-") -> None:
        pass  # Plugin logs every call itself, with its outcome

    def date_time_string(self, timestamp: "Optional[float]" = None) -> str:
        # The Date header changes once a second, and formatting it anew is a
        # tenth of a Get's CPU time: without this, a Get costs 1.14x the CPU
        # of a hand-written http.server plugin's (benchmarks/bench.py).
        if timestamp is not None:
            return http.server.BaseHTTPRequestHandler.date_time_string(self, timestamp)
        now = int(time.time())
        second, text = _DATE
        if second != now:
            text = http.server.BaseHTTPRequestHandler.date_time_string(self, now)
            _DATE[:] = [now, text]
        return text

    # -- the hooks' work ---------------------------------------------------------

    def _refuse_method(self) -> None:
        """405 for a method but POST, to a known endpoint, keeping the
        connection when the request's body can be skipped; 404 elsewhere."""
        if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            try:
                self._read_body()
            except _HTTPError:
                self.close_connection = True
        if not self.server.plugin.has_route(self.path):
            status, reply = self.server.plugin.handle(self.path, b"")
            self._reply(status, reply)
            return
        log.warning("%s %r: only POST is allowed", self.command, self.path)
        self._reply(405, _error_body("method %s not allowed; plugin endpoints take POST"
                                     % self.command), allow="POST")

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if encoding is not None:
            if length is not None:  # RFC 9112 6.1: a smuggling attempt
                raise _HTTPError(400, "both Transfer-Encoding and Content-Length")
            if encoding.strip().lower() != "chunked":
                raise _HTTPError(501, "Transfer-Encoding %r not supported" % encoding[:50])
            return self._read_chunked()
        if length is None:
            raise _HTTPError(411, "Content-Length required (send Content-Length: 0 "
                                  "for no body)")
        length = length.strip()
        if not _DIGITS.match(length):
            raise _HTTPError(400, "bad Content-Length %r" % length[:50])
        # Checked by its digits first: int() of thousands of digits is
        # slow, and refused outright from Python 3.11 on.
        limit = self.server.max_body_bytes
        if len(length) > len(str(limit)) or int(length) > limit:
            raise _HTTPError(413, "request body of %s bytes is over the %d-byte limit"
                             % (length[:20], limit))
        self._reserve(int(length))
        return self._read_exactly(int(length))

    def _read_chunked(self) -> bytes:
        chunks = []  # type: List[bytes]
        total, limit = 0, self.server.max_body_bytes
        while True:
            line = self.rfile.readline(self.server.max_chunk_line + 1)
            if len(line) > self.server.max_chunk_line:
                raise _HTTPError(400, "chunk size line too long")
            size_text = line.split(b";", 1)[0].strip()
            if not _HEX_DIGITS.match(size_text):
                raise _HTTPError(400, "bad chunk size %r" % size_text[:20])
            size = int(size_text, 16)
            if size == 0:
                while self.rfile.readline(self.server.max_chunk_line + 1).strip():
                    pass  # trailer fields, ignored
                return b"".join(chunks)
            total += size
            if total > limit:
                raise _HTTPError(413, "request body is over the %d-byte limit" % limit)
            self._reserve(total)
            chunks.append(self._read_exactly(size))
            if self.rfile.readline(self.server.max_chunk_line + 1).strip():
                raise _HTTPError(400, "chunk data longer than its size")

    def _read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) < size:
            raise _HTTPError(400, "connection closed before the request was complete")
        return data

    def _reserve(self, total: int) -> None:
        """Count a body of ``total`` bytes so far against the server's body memory."""
        need = max(0, total - self.server.small_body) - self._reserved
        if need > 0:
            if not self.server.reserve_body(need):
                raise _HTTPError(503, "the plugin holds %d bytes of request bodies already; "
                                 "try again" % self.server.max_body_memory)
            self._reserved += need

    def _client_gone(self) -> bool:
        """True if the client closed its end while we worked on its request."""
        conn = self.connection
        if not select.select([conn], [], [], 0)[0] and not getattr(conn, "pending", int)():
            return False  # open, and nothing more sent yet
        try:
            if not hasattr(conn, "pending"):
                return conn.recv(1, socket.MSG_PEEK) == b""  # readable: this does not wait
            # TLS takes no recv flags: look through rfile, which keeps what
            # came (a TLS record that holds no data yet would make it wait).
            conn.settimeout(0.1)
            try:
                return self.rfile.peek(1) == b""
            finally:
                conn.settimeout(None)
        except socket.timeout:
            return False
        except OSError:
            return True  # reset

    def _handshake(self) -> bool:
        """Finish a TLS handshake within the request deadline; False if it failed.

        Done here, in the connection's thread, so that a client that never
        finishes its handshake holds up nobody else. Not busy meanwhile: at
        the connection limit, a handshake that has asked nothing yet is
        closed to make room like an idle connection (anyone can open one
        without a certificate).
        """
        with self._clock:
            self._deadline = _monotonic() + self.server.request_timeout
        try:
            self.connection.do_handshake()
            return True
        except (ssl.SSLError, OSError) as exc:
            if self._timed_out:
                log.warning("TLS: %s did not finish its handshake within %gs",
                            self.address_string(), self.server.request_timeout)
            else:
                # A refused certificate is worth a warning; a connection that
                # closed (or that we closed to make room) is not: a flood of
                # them would flood the log.
                closed = isinstance(exc, ssl.SSLEOFError) or not isinstance(exc, ssl.SSLError)
                log.log(logging.DEBUG if closed else logging.WARNING, "TLS handshake with %s "
                        "failed: %s", self.address_string(), getattr(exc, "reason", None) or exc)
        finally:
            self._end()
        return False

    def _begin(self) -> bool:
        """Busy from now, within the request deadline; False if the server
        has cut the connection off already (idle too long)."""
        with self._clock:
            if self._timed_out:
                return False
            self._busy = True  # stop() waits for this request now
            self._deadline = _monotonic() + self.server.request_timeout
            return True

    def _end(self) -> None:
        """Idle from now: no deadline but the idle timeout."""
        with self._clock:
            self._busy = False
            self._deadline = None
            self._idle_since = _monotonic()

    def _reply(self, status: int, body: bytes, allow: "Optional[str]" = None) -> None:
        self.replied = True
        if self.server.stopping:
            self.close_connection = True
        self._deadline = _monotonic() + self.server.request_timeout  # a client that never reads
        self.send_response(status)
        self.send_header("Content-Type", _PLUGIN_MEDIA_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        self.wfile.write(body)

###############################################################################
# Servers: Unix and TCP, with their limits ####################################
###############################################################################

#: The limits a server takes by name.
_LIMITS = ("max_connections", "max_body_memory", "small_body", "max_body_bytes", "max_chunk_line",
           "idle_timeout", "request_timeout", "drain_timeout", "poll_interval")
#: Seconds between two warnings that a connection limit was reached.
_LIMIT_LOG_INTERVAL = 10.0
#: sockaddr_un.sun_path on Linux, in bytes; the engine refuses longer paths.
_MAX_SOCKET_PATH_BYTES = 108


if TYPE_CHECKING:  # pragma: no cover
    _ServerBase = socketserver.BaseServer  # what the mixin is mixed into
else:
    _ServerBase = object


class _PluginServerMixin(_ServerBase):
    """Threads, limits and a clean stop, shared by the Unix and TCP servers.

    The limits are the class attributes below; a server's own are set by
    name when it is made (``UnixPluginServer(path, driver,
    max_connections=512)``) or through :func:`serve`.
    """

    # socketserver's backlog of 5 overflows when the engine restores volumes
    # with concurrent Gets (moby volume/service/restore.go); a full Unix
    # backlog makes the engine's non-blocking connect fail at once with
    # EAGAIN, not wait.
    request_queue_size = socket.SOMAXCONN
    #: Connections served at once, each by a thread. At the limit the
    #: longest-idle connection is closed to make room (the engines reopen one
    #: at need); if every one is busy, new ones wait in the listen backlog,
    #: unanswered rather than refused: the engine takes an error reply to Get
    #: as "no such volume" and forgets the volume's labels, but retries a
    #: connection that does not answer (moby pkg/plugins/client.go).
    max_connections = 256
    #: Bytes of request bodies held at once, over all connections; a body
    #: beyond it is answered 503. The first ``small_body`` bytes of each body
    #: are not counted: the engines' requests are a few hundred bytes.
    max_body_memory = 16 << 20
    small_body = 64 * 1024
    #: Largest request body accepted, in bytes. The engines' are a few hundred.
    max_body_bytes = 1 << 20
    #: Longest chunk-size line of a chunked body, its extensions included, in bytes.
    max_chunk_line = 4096
    #: Seconds a keep-alive connection may sit idle between requests. Docker
    #: keeps idle connections forever (moby pkg/plugins/client.go) and opens
    #: another when we close one.
    idle_timeout = 120.0
    #: Seconds from a request's first byte until all of it has arrived, and
    #: for a reply to be taken or a TLS handshake done: a client that dribbles
    #: or never reads cannot hold a thread. Kept by service_actions().
    request_timeout = 10.0
    #: Seconds stop() waits for calls in flight. Docker's ``plugin disable``
    #: sends SIGKILL 10 s after SIGTERM (moby plugin/manager_linux.go).
    drain_timeout = 8.0
    #: Seconds serve_forever() waits for a connection before it looks again
    #: whether stop() was called (socketserver's default): how long a stop
    #: may wait for the accept loop.
    poll_interval = 0.5

    def _setup_plugin(self, plugin: "Any", limits: "Dict[str, Any]") -> None:
        self.plugin = plugin if isinstance(plugin, Plugin) else Plugin(plugin)
        for name, value in limits.items():
            if name not in _LIMITS:
                raise TypeError("unknown server limit %r; the limits are %s"
                                % (name, ", ".join(_LIMITS)))
            setattr(self, name, value)
        #: Set once the server is stopping: replies then close their connections.
        self.stopping = False
        #: Told of every call: ``observer.called(handler, body, status,
        #: reply, outcome, seconds)`` (the metrics, the trace).
        self.observers = []  # type: List[Any]
        self._thread = None  # type: Optional[threading.Thread]
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)  # a connection ended
        self._ended = 0  # connections ended so far: a wakeup is never missed
        self._handlers = set()  # type: set  # of PluginRequestHandler
        self._connections = 0
        self._body_memory = 0
        #: When serve_forever() last went round its loop.
        self.last_turn = _monotonic()
        self._limit_logged = -_LIMIT_LOG_INTERVAL  # when a limit was last logged

    def get_request(self) -> "Any":
        """Accept a connection when there is room for it (socketserver hook)."""
        while not self._take_slot():
            if self.stopping:
                raise OSError(errno.ESHUTDOWN, "stopping")
            self._make_room("%d connections open, the most allowed (max_connections)"
                            % self.max_connections)
            self.service_actions()  # meanwhile, late connections are still cut off
        try:
            return super(_PluginServerMixin, self).get_request()
        except OSError as exc:
            self._free_slot()
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors below max_connections: the same remedy,
                # and without it the still readable socket would spin.
                self._make_room("cannot accept a connection: %s" % exc.strerror)
            raise

    def _take_slot(self) -> bool:
        with self._lock:
            if self._connections < self.max_connections:
                self._connections += 1
                return True
        return False

    def _make_room(self, why: str) -> None:
        """Close the longest-idle connection and wait until a connection ends.

        Idle means waiting for a request, or for a TLS handshake to finish:
        neither has asked anything yet. Woken as soon as a connection ends,
        so a flood of idle connections queued ahead of the engine's is
        closed at the pace they are accepted, not at one per turn; if every
        connection is busy, this waits (at most 20 looks a second).
        """
        with self._lock:
            ended = self._ended
            idle = [handler for handler in self._handlers if not handler.busy]
            now = _monotonic()
            if now - self._limit_logged >= _LIMIT_LOG_INTERVAL:  # a flood logs no flood
                self._limit_logged = now
                log.warning("%s: %s", why, "closing the longest idle" if idle else
                            "new ones wait until one closes")
        if idle:
            min(idle, key=lambda handler: handler.idle_since).hang_up()  # its slot comes free
        with self._lock:
            if self._ended == ended:  # not already: one may end before we wait
                self._slot_freed.wait(0.05)

    def _free_slot(self) -> None:
        with self._lock:
            self._connections -= 1
            self._ended += 1
            self._slot_freed.notify_all()

    def add_handler(self, handler: "PluginRequestHandler") -> None:
        """A connection's handler begins: cut off when late, waited for by stop()."""
        with self._lock:
            self._handlers.add(handler)

    def remove_handler(self, handler: "PluginRequestHandler") -> None:
        """A connection's handler ends."""
        with self._lock:
            self._handlers.discard(handler)

    def handlers(self) -> "List[PluginRequestHandler]":
        """The handlers of the connections open now."""
        with self._lock:
            return list(self._handlers)

    def reserve_body(self, size: int) -> bool:
        """Count ``size`` bytes of request body against ``max_body_memory``."""
        with self._lock:
            if self._body_memory + size > self.max_body_memory:
                log.warning("request bodies would hold over %d bytes (max_body_memory): "
                            "refusing one of %d bytes", self.max_body_memory, size)
                return False
            self._body_memory += size
            return True

    def release_body(self, size: int) -> None:
        """Give back ``size`` bytes that :meth:`reserve_body` counted."""
        if size:
            with self._lock:
                self._body_memory -= size

    def process_request(self, request: "Any", client_address: "Any") -> None:
        # One thread per connection: a two-minute Mount never holds up
        # another call (the engine calls concurrently: moby volume/service).
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name="docker-volume-plugin-connection")
        thread.daemon = True
        try:
            thread.start()
        except BaseException:
            self._free_slot()
            raise

    def _serve_connection(self, request: "Any", client_address: "Any") -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._free_slot()

    def turning(self) -> bool:
        """Whether serve_forever() went round its loop lately, as it does at
        least every ``poll_interval``: what the systemd watchdog is fed on."""
        return _monotonic() - self.last_turn < 2 * self.poll_interval + 5.0

    def service_actions(self) -> None:
        """Called by serve_forever() at every turn (socketserver hook): the
        watchdog takes it as a sign of life, and the connections that are
        late are cut off."""
        now = self.last_turn = _monotonic()
        for handler in self.handlers():
            handler.cut_off_if_late(now)

    def handle_error(self, request: "Any", client_address: "Any") -> None:
        log.exception("error while serving a connection")

    @property
    def address(self) -> str:
        """The URL the engine would use for this server."""
        raise NotImplementedError

    def start(self) -> "_PluginServerMixin":
        """Serve from a background thread; for tests and embedding."""
        self._thread = threading.Thread(target=self.serve_forever, args=(self.poll_interval,),
                                        name="docker-volume-plugin")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self, drain_timeout: "Optional[float]" = None) -> bool:
        """Stop accepting, let calls in flight finish, remove our files.

        Waits at most ``drain_timeout`` seconds (default: the server's) for
        calls in flight, then closes every connection. Returns False if
        calls were cut off.
        """
        if drain_timeout is None:
            drain_timeout = self.drain_timeout
        self.stopping = True
        if self._thread is not None:  # serve() ran serve_forever() itself
            self.shutdown()
            self._thread.join()
        self.server_close()
        deadline = _monotonic() + drain_timeout
        while True:
            handlers = self.handlers()
            drained = not any(handler.busy for handler in handlers)
            if drained or _monotonic() >= deadline:
                break
            time.sleep(0.01)  # polled: requests need no lock to count themselves
        for handler in handlers:
            handler.hang_up()  # wakes threads waiting idle
        if not drained:
            log.warning("stopped with calls still in flight after %gs", drain_timeout)
        return drained

    def __enter__(self) -> "_PluginServerMixin":
        return self.start()

    def __exit__(self, *exc_info: "Any") -> None:
        self.stop()


def _socket_path_too_long(path: str) -> "Optional[str]":
    """Say so when ``path`` does not fit sockaddr_un (the engine checks too)."""
    size = len(os.fsencode(path))
    if size <= _MAX_SOCKET_PATH_BYTES:
        return None
    return ("socket path %s is %d bytes, over the %d-byte limit of Unix sockets: the engine "
            "refuses it" % (path, size, _MAX_SOCKET_PATH_BYTES))


def _default_socket_path(name: str) -> str:
    return os.path.join(PLUGIN_SOCKET_DIR, name + ".sock")


def _lock_beside(path: str) -> int:
    """Hold ``PATH.lock``, so that two servers starting at once cannot both
    take ``path`` (each would think the other's new socket stale)."""
    return _hold_lock(path + ".lock", "%s is served by another process, or one is starting "
                      "on it; stop it first" % path)


def _unlock_beside(path: str, fd: int) -> None:
    _release_lock(path + ".lock", fd)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "%s exists and is not a socket; not touching it" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nothing listens: a crash left it. The engine would hang ~15 s on it.
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise OSError(errno.EADDRINUSE, "cannot tell whether %s is in use (%s); not "
                      "replacing it" % (path, exc))
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "%s is served by another process; stop it first" % path)


def _group_id(group: "Any") -> int:
    if isinstance(group, int):
        return group
    if str(group).isdigit():
        return int(group)
    import grp  # only needed when a group is given
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError("no such group: %r" % group)


class UnixPluginServer(_PluginServerMixin, socketserver.UnixStreamServer):
    """Threaded server on a Unix socket, where the engine finds v1 plugins.

    The socket gets ``mode`` (0660) and, if given, ``group`` (a name or gid),
    so members of e.g. ``docker`` can use it. A stale socket left by a crash is
    replaced; a socket another process serves, or a path that is not a socket,
    raises OSError and is left alone.
    """

    server_address: str  # the socket's path
    handler_class = PluginRequestHandler

    def __init__(self, path: "Optional[str]", plugin: "Any", mode: int = 0o660,
                 group: "Optional[Any]" = None, sock: "Optional[socket.socket]" = None,
                 **limits: "Any") -> None:
        self._setup_plugin(plugin, limits)
        self.mode = mode
        self.group = group
        self._inode = None  # type: Optional[Tuple[int, int]]
        self._lock_fd = -1
        if sock is not None:  # listening already, and owned by whoever made it
            socketserver.UnixStreamServer.__init__(self, sock.getsockname(), self.handler_class,
                                                   bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            return
        socketserver.UnixStreamServer.__init__(self, os.path.abspath(str(path)),
                                               self.handler_class)

    @property
    def address(self) -> str:
        return "unix://" + self.server_address

    def server_bind(self) -> None:
        path = self.server_address
        too_long = _socket_path_too_long(path)
        if too_long:
            raise OSError(errno.ENAMETOOLONG, too_long)
        directory = os.path.dirname(path)
        _make_directories(directory, 0o755)
        unsafe = _unsafe_directory(directory)
        if unsafe is not None:
            # Another user could swap our socket for one that answers Mount with "/".
            raise PermissionError(errno.EPERM, "refusing to serve on %s: %s" % (path, unsafe))
        self._lock_fd = _lock_beside(path)
        _remove_stale_socket(path)
        gid = _group_id(self.group) if self.group is not None else -1
        self.socket.bind(path)
        # Permissions are set before listen(): until then nobody can connect.
        os.chmod(path, self.mode)
        if gid != -1:
            os.chown(path, -1, gid)
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)

    def server_close(self) -> None:
        socketserver.UnixStreamServer.server_close(self)
        try:
            st = os.stat(self.server_address)
            # Never a successor's socket, nor one systemd passed us (no inode of ours).
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.server_address)
        except OSError:
            pass
        if self._lock_fd >= 0:
            _unlock_beside(self.server_address, self._lock_fd)
            self._lock_fd = -1


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def server_tls_context(cert: str, key: str, ca: "Optional[str]" = None) -> "Any":
    """An :class:`ssl.SSLContext` for a plugin: TLS 1.2 at least, our
    certificate, and with ``ca`` client certificates required and verified
    against it (the engine presents the ``CertFile`` of the spec's TLSConfig)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(ssl, "TLSVersion"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:  # Python 3.6
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    context.load_cert_chain(cert, key)
    mode = stat.S_IMODE(os.stat(key).st_mode)
    if mode & 0o077:
        log.warning("TLS key %s can be read by other users (mode %04o): whoever reads it can "
                    "pose as the plugin; chmod 600 it", key, mode)
    if ca:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _write_spec(directory: str, filename: str, address: str, data: bytes) -> str:
    if "://" not in address:  # the engine fails such a spec with "Unknown protocol"
        raise ValueError("plugin address %r has no scheme such as tcp://" % address)
    _make_directories(directory, 0o755)
    unsafe = _unsafe_directory(directory)
    if unsafe is not None:
        # Another user could swap our spec for one that sends the engine elsewhere.
        raise PermissionError(errno.EPERM, "refusing to write a spec file in %s: %s"
                              % (directory, unsafe))
    path = os.path.join(directory, filename)
    _write_file_atomically(path, data)
    return path


def write_spec_file(name: str, address: str, directory: str = PLUGIN_SPEC_DIR) -> str:
    """Write ``DIRECTORY/NAME.spec`` holding ``address`` (``tcp://host:port``).

    The engine reads the URL from it (moby pkg/plugins/discovery.go); the file is replaced
    atomically. Returns its path.
    """
    return _write_spec(directory, name + ".spec", address, (address + "\n").encode("utf-8"))


def write_json_spec_file(name: str, address: str, directory: str = PLUGIN_SPEC_DIR,
                         tls_config: "Optional[Dict[str, Any]]" = None) -> str:
    """Write ``DIRECTORY/NAME.json`` with ``Addr`` and optional ``TLSConfig``.

    ``tls_config`` takes the engine's keys (``CAFile``, ``CertFile``,
    ``KeyFile``, ``InsecureSkipVerify``). Beware: with a ``TLSConfig`` but no
    ``CAFile`` the engine does not verify the plugin's certificate
    (moby pkg/plugins/discovery.go). Returns the file's path.
    """
    spec = {"Name": name, "Addr": address}  # type: Dict[str, Any]
    if tls_config is not None:
        spec["TLSConfig"] = dict(tls_config)
    return _write_spec(directory, name + ".json", address,
                       json.dumps(spec, indent=2).encode("utf-8") + b"\n")


class _TCPRequestHandler(PluginRequestHandler):
    # Headers and body are two writes: Nagle's algorithm would hold the body
    # back for the peer's delayed ACK (40 ms). socketserver's switch for it.
    disable_nagle_algorithm = True


class TCPPluginServer(_PluginServerMixin, socketserver.TCPServer):
    """Threaded server on TCP, found by the engine through a spec file.

    Binds ``host`` (127.0.0.1 by default: the protocol has no authentication)
    and port (0 picks a free one). With ``tls_context`` (an
    :class:`ssl.SSLContext`, see :func:`server_tls_context`) it speaks HTTPS:
    each handshake is done in the connection's own thread, within the request
    deadline, and a failed one is logged on one line. With ``name``, writes
    ``SPEC_DIR/NAME.spec`` holding ``tcp://host:port``, or, with TLS,
    ``SPEC_DIR/NAME.json`` with ``Addr`` ``https://host:port`` and
    ``spec_tls`` as its ``TLSConfig`` (``CAFile`` for the engine to verify the
    plugin, ``CertFile`` and ``KeyFile`` for the engine to present), once
    bound; it removes the file when the server closes.
    """

    allow_reuse_address = True
    server_address: "Tuple[Any, ...]"  # (host, port), and more on IPv6

    def __init__(self, address: "Optional[Tuple[str, int]]", plugin: "Any",
                 name: "Optional[str]" = None, spec_dir: str = PLUGIN_SPEC_DIR,
                 sock: "Optional[socket.socket]" = None, tls_context: "Any" = None,
                 spec_tls: "Optional[Dict[str, Any]]" = None, **limits: "Any") -> None:
        self._setup_plugin(plugin, limits)
        self.tls_context = tls_context
        if sock is not None:  # listening already
            address = sock.getsockname()[:2]
        if address is None:
            raise TypeError("TCPPluginServer needs an address or a listening socket")
        host = address[0] or "127.0.0.1"
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.spec_path = None  # type: Optional[str]
        socketserver.TCPServer.__init__(self, (host, address[1]), _TCPRequestHandler,
                                        bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket = sock
        # The protocol has no authentication of its own: without TLS client
        # certificates, whoever connects can create, mount and remove volumes.
        if tls_context is not None and tls_context.verify_mode == ssl.CERT_REQUIRED:
            log.info("TLS on %s: clients must present a certificate from the CA", self.address)
        elif tls_context is not None:
            log.warning("TLS on %s without --tls-ca: any client that reaches it controls your "
                        "volumes", self.address)
        elif _is_loopback(host):
            log.warning("listening on plain TCP %s: every local user can reach it and control "
                        "your volumes; prefer the Unix socket", host)
        else:
            log.warning("listening on plain TCP %s: anyone who can reach it controls your "
                        "volumes", host)
        if name is not None:
            if tls_context is None:
                self.spec_path = write_spec_file(name, self.address, spec_dir)
            else:
                self.spec_path = write_json_spec_file(name, self.address, spec_dir, spec_tls)
            self._spec_data = _read_regular(self.spec_path)

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return "%s://%s:%d" % ("https" if self.tls_context is not None else "tcp",
                               "[%s]" % host if ":" in host else host, port)

    def get_request(self) -> "Any":
        request, client_address = _PluginServerMixin.get_request(self)
        if self.tls_context is not None:
            # No handshake here: the accept loop must never wait on a client.
            request = self.tls_context.wrap_socket(request, server_side=True,
                                                   do_handshake_on_connect=False)
        return request, client_address

    def server_close(self) -> None:
        socketserver.TCPServer.server_close(self)
        if self.spec_path is not None:
            try:
                ours = _read_regular(self.spec_path) == self._spec_data
                if ours:  # never remove a spec that another instance rewrote
                    os.unlink(self.spec_path)
            except OSError:
                pass
            self.spec_path = None

###############################################################################
# systemd: socket activation, readiness, the watchdog #########################
###############################################################################


def _systemd_sockets() -> "List[socket.socket]":
    """The listening sockets systemd passed us (sd_listen_fds(3)), or [].

    Honoured only when ``LISTEN_PID`` is this process; the variables are
    removed either way, so a child never takes them for its own. Checked
    like any input: a descriptor that is not a listening stream socket (a
    ``ListenDatagram=``, an unbound or connected socket, a file) raises
    ValueError, since serving it would spin on an accept() that never
    succeeds.
    """
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not _DIGITS.match(count) or len(count) > 4:
        return []
    sockets = []
    for fd in range(3, 3 + int(count)):  # SD_LISTEN_FDS_START
        os.set_inheritable(fd, False)
        try:  # ENOTSOCK for a file or a pipe, here or at the first getsockopt
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, os.dup(fd))
            try:
                family = probe.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_DOMAIN", 39))
                kind = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            finally:
                probe.close()
        except OSError as exc:
            raise ValueError("socket activation: descriptor %d is not a socket (%s)"
                             % (fd, exc.strerror))
        if kind != socket.SOCK_STREAM or not listening or family not in (
                socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            raise ValueError("socket activation: descriptor %d is not a listening stream "
                             "socket (Unix or TCP); give the unit ListenStream=, not "
                             "ListenDatagram= or Accept=yes" % fd)
        sockets.append(socket.socket(family, socket.SOCK_STREAM, 0, fd))
    log.info("socket activation: serving %d socket(s) systemd passed", len(sockets))
    return sockets


class _Systemd(object):
    """sd_notify(3): readiness, status and the watchdog; silent without systemd."""

    #: Seconds between watchdog feeds, at least: half of ``WATCHDOG_USEC``,
    #: but a value under a second (``WATCHDOG_USEC=1``) would have us send
    #: thousands of datagrams a second; systemd's own minimum is 1 s in
    #: practice.
    min_watchdog_interval = 0.5

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@".
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.get("WATCHDOG_PID")
        ours = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self.interval = int(usec) / 2e6 if ours and _DIGITS.match(usec) and len(usec) < 16 else 0
        if 0 < self.interval < self.min_watchdog_interval:
            log.warning("WATCHDOG_USEC=%s is under %gs: feeding the watchdog every %gs instead",
                        usec, 2 * self.min_watchdog_interval, self.min_watchdog_interval)
            self.interval = self.min_watchdog_interval
        self._stop = threading.Event()

    def notify(self, message: str) -> None:
        """Send ``message``; never waits (a full queue drops it, as sd_notify does)."""
        if not self.address:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)  # a reader that never reads must not hold up start or stop
            sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self.address, exc)
        finally:
            sock.close()

    def start_watchdog(self, healthy: "Callable[[], bool]") -> None:
        """Send WATCHDOG=1 every half interval while ``healthy()`` says so."""
        if not self.address or not self.interval:
            return

        def feed() -> None:
            while not self._stop.wait(self.interval):
                if healthy():
                    self.notify("WATCHDOG=1")
                else:
                    log.error("the server loop is stuck: not feeding systemd's watchdog")
        thread = threading.Thread(target=feed, name="docker-volume-plugin-watchdog")
        thread.daemon = True
        thread.start()

    def stop_watchdog(self) -> None:
        self._stop.set()

###############################################################################
# Observing: metrics, the call trace, logs under systemd ######################
###############################################################################

#: Upper bounds of the call-duration histogram, in seconds: past Podman's 5 s
#: deadline (libpod/plugin/volume_api.go) up to Docker's longest, 2 minutes
#: for Create and Mount (moby volume/drivers/proxy.go).
_DURATION_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: The endpoints a metric label names; any other path is counted as
#: ``other``: the client chooses it, and a label must not grow without bound.
_ENDPOINTS = frozenset(["/Plugin.Activate"] + [path for path, _, _ in _VOLUME_ROUTES])
_METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_PREFIX = "docker_volume_plugin_"


def _labels(**labels: "Any") -> str:
    """``{name="value",...}`` in Prometheus's text format, values escaped."""
    return "{%s}" % ",".join('%s="%s"' % (name, str(value).replace("\\", "\\\\")
                                         .replace('"', '\\"').replace("\n", "\\n"))
                             for name, value in sorted(labels.items()))


class _Metrics(object):
    """Counts every call (an observer of the servers) and renders the counts,
    the servers' connections and limits and the driver's volumes in
    Prometheus's text format. No volume name or option is ever a label."""

    def __init__(self, plugin: Plugin, servers: "List[Any]") -> None:
        self.plugin, self.servers = plugin, servers
        self._lock = threading.Lock()
        self._calls = {}  # type: Dict[Tuple[str, str], int]  # (endpoint, outcome) -> calls
        # endpoint -> calls in each bucket (not cumulative), +Inf's, then the sum of seconds
        self._durations = {}  # type: Dict[str, List[float]]
        self._started = time.time()

    def called(self, handler: "Any", body: bytes, status: int, reply: bytes, outcome: str,
               seconds: float) -> None:
        endpoint = handler.path if handler.path in _ENDPOINTS else "other"
        with self._lock:
            key = (endpoint, outcome)
            self._calls[key] = self._calls.get(key, 0) + 1
            histogram = self._durations.get(endpoint)
            if histogram is None:
                histogram = self._durations[endpoint] = [0] * (len(_DURATION_BUCKETS) + 2)
            histogram[bisect.bisect_left(_DURATION_BUCKETS, seconds)] += 1
            histogram[-1] += seconds

    def render(self) -> bytes:
        """Every metric, in Prometheus's text exposition format 0.0.4."""
        lines = []  # type: List[str]

        def family(name: str, kind: str, text: str,
                   samples: "Iterable[Tuple[str, str, Any]]") -> None:
            lines.append("# HELP %s%s %s" % (_METRIC_PREFIX, name, text))
            lines.append("# TYPE %s%s %s" % (_METRIC_PREFIX, name, kind))
            lines.extend("%s%s%s %r" % (_METRIC_PREFIX, sample, labels, value)
                         for sample, labels, value in samples)

        with self._lock:
            calls = sorted(self._calls.items())
            durations = sorted((endpoint, list(counts))
                               for endpoint, counts in self._durations.items())
        family("calls_total", "counter", "Calls answered, by endpoint and outcome (ok, "
               "not_found, refused, exception, undelivered: a reply the client never took, "
               "so a Mount undone).",
               (("calls_total", _labels(endpoint=endpoint, outcome=outcome), count)
                for (endpoint, outcome), count in calls))
        histogram = []  # type: List[Tuple[str, str, Any]]
        for endpoint, counts in durations:
            cumulative = 0  # type: float  # whole calls, kept as int
            for bound, count in zip(_DURATION_BUCKETS + (float("inf"),), counts):
                cumulative += count
                histogram.append(("call_duration_seconds_bucket", _labels(
                    endpoint=endpoint, le="+Inf" if bound == float("inf") else "%g" % bound),
                    cumulative))
            histogram.append(("call_duration_seconds_sum", _labels(endpoint=endpoint),
                              counts[-1]))
            histogram.append(("call_duration_seconds_count", _labels(endpoint=endpoint),
                              cumulative))
        family("call_duration_seconds", "histogram", "Seconds from a request read whole to "
               "its reply sent, by endpoint.", histogram)
        handlers = [(server, server.handlers()) for server in self.servers]
        family("calls_in_flight", "gauge", "Requests being read or answered now.",
               [("calls_in_flight", "", sum(each.busy for _, ones in handlers for each in ones))])
        family("connections", "gauge", "Connections open now, by listener.",
               (("connections", _labels(listener=server.address), len(ones))
                for server, ones in handlers))
        family("limit", "gauge", "The limits the listener holds connections to "
               "(serve --limit).", (("limit", _labels(listener=server.address, limit=name),
                                     getattr(server, name))
                                    for server in self.servers for name in _LIMITS))
        if isinstance(self.plugin.driver, Driver):
            volumes, mounts, pending = self.plugin.driver._tally()
            for name, value, text in (
                    ("volumes", volumes, "Volumes the driver keeps."),
                    ("mounts", mounts, "Mounts counted, over all volumes and mount IDs."),
                    ("pending_detaches", pending, "Volumes unmounted whose detach failed and "
                     "is tried again.")):
                family(name, "gauge", text, [(name, "", value)])
        family("build_info", "gauge", "The library's version and the Python running it.",
               [("build_info", _labels(version=__version__,
                                       python=".".join(map(str, sys.version_info[:3]))), 1)])
        family("start_time_seconds", "gauge", "When the plugin started, in seconds since "
               "the epoch.", [("start_time_seconds", "", self._started)])
        return ("\n".join(lines) + "\n").encode("utf-8")


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    """``GET /metrics``, and a 404 for anything else."""

    server: "_MetricsServer"
    #: Seconds a scrape's socket may wait, so a stalled client holds no thread for ever.
    timeout = 10.0

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "the metrics are at /metrics")
            return
        body = self.server.metrics.render()
        self.send_response(200)
        self.send_header("Content-Type", _METRICS_MEDIA_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: "Any") -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class _MetricsServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The metrics on a listener of their own (``serve --metrics``): a
    scrape never waits behind the engine's calls, nor they behind it."""

    allow_reuse_address = True
    daemon_threads = True
    server_address: "Tuple[Any, ...]"  # (host, port), and more on IPv6

    def __init__(self, address: "Tuple[str, int]", metrics: _Metrics) -> None:
        host = address[0] or "127.0.0.1"
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.metrics = metrics
        socketserver.TCPServer.__init__(self, (host, address[1]), _MetricsHandler)

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return "http://%s:%d/metrics" % ("[%s]" % host if ":" in host else host, port)


class _MetricsFile(object):
    """The metrics written to a file every ``interval`` seconds, for a plugin
    nobody can scrape: node_exporter's textfile collector reads ``*.prom``
    files, each replaced atomically (its temporary name ends otherwise)."""

    #: Seconds between two writes.
    interval = 5.0

    def __init__(self, path: str, metrics: _Metrics) -> None:
        if not path.endswith(".prom"):
            raise ValueError("metrics file %s: node_exporter's textfile collector reads only "
                             "files named *.prom" % path)
        self.path, self.metrics = os.path.abspath(path), metrics
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="docker-volume-plugin-metrics")
        self._thread.daemon = True

    def start(self) -> None:
        self.write()
        self._thread.start()

    def stop(self) -> None:
        if self._thread.ident is not None:  # started
            self._stopped.set()
            self._thread.join()
            self.write()

    def write(self) -> None:
        try:
            _write_file_atomically(self.path, self.metrics.render(), 0o644, durable=False)
        except OSError as exc:
            log.warning("cannot write the metrics to %s: %s", self.path, exc.strerror or exc)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.write()


class _Trace(object):
    """One JSON line per call (an observer of the servers): when, which
    connection, which process (:attr:`PluginRequestHandler.peer`), the
    endpoint, the request and the reply with every secret option's value
    hidden, the status, the outcome and the milliseconds taken. Written to
    ``path``, readable by its owner alone, or to ``stream``."""

    #: Bytes the file may reach; it is then renamed ``PATH.1``, replacing the
    #: one before, and begun anew: a trace takes at most twice this.
    max_bytes = 64 << 20
    #: Longest body traced whole, in bytes; a longer one is traced as its size.
    max_body = 64 * 1024

    def __init__(self, path: "Optional[str]", is_secret: "Callable[[str], bool]",
                 stream: "Any" = None) -> None:
        self.path, self.is_secret = path, is_secret
        self._lock = threading.Lock()
        self._file = stream
        self._size = 0
        if path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | _CREATE_FLAGS, 0o600)
        self._size = os.fstat(fd).st_size
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self.path is not None:
                self._file.close()
            self._file = None

    def called(self, handler: "Any", body: bytes, status: int, reply: bytes, outcome: str,
               seconds: float) -> None:
        line = _encode_json({
            "time": datetime.datetime.now(_UTC).isoformat(),
            "connection": handler.connection_id, "peer": handler.peer,
            "endpoint": handler.path, "request": self._body(body), "status": status,
            "reply": self._body(reply), "outcome": outcome,
            "duration_ms": round(seconds * 1000.0, 3)}).decode("ascii") + "\n"
        with self._lock:
            if self._file is None:
                return
            try:
                if self.path is not None and self._size and self._size + len(line) > self.max_bytes:
                    self._file.close()
                    os.replace(self.path, self.path + ".1")
                    self._open()
                self._file.write(line)
                self._file.flush()
                self._size += len(line)
            except (OSError, ValueError) as exc:  # full, or closed under us
                log.warning("trace: cannot write to %s: %s", self.path or "the output", exc)

    def _body(self, data: bytes) -> "Any":
        """A body as JSON where it is, as text where not; Opts' secrets hidden."""
        if len(data) > self.max_body:
            return {"bytes": len(data)}
        try:
            value = json.loads(data.decode("utf-8")) if data.strip() else None
        except ValueError:  # UnicodeDecodeError too
            return data.decode("utf-8", "replace")
        if isinstance(value, dict) and isinstance(value.get("Opts"), dict):
            value["Opts"] = dict((key, "****" if self.is_secret(str(key)) else option)
                                 for key, option in value["Opts"].items())
        return value


def _switch_trace(servers: "List[Any]", path: str, is_secret: "Callable[[str], bool]") -> None:
    """Start tracing every call to ``path``, or stop if a trace runs (SIGUSR2)."""
    running = [each for each in servers[0].observers if isinstance(each, _Trace)]
    if running:
        for server in servers:
            server.observers = [each for each in server.observers if each is not running[0]]
        running[0].close()
        log.info("trace stopped; it is in %s", path)
        return
    try:
        _make_directories(os.path.dirname(os.path.abspath(path)), 0o700)
        trace = _Trace(path, is_secret)
    except OSError as exc:
        log.error("cannot trace to %s: %s", path, exc.strerror or exc)
        return
    for server in servers:
        server.observers = server.observers + [trace]
    log.info("tracing every call to %s (SIGUSR2 stops it)", path)


#: journald's priority for each logging level, highest level first (sd-daemon(3)).
_JOURNAL_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                       (logging.INFO, 6))


class _JournalFormatter(logging.Formatter):
    """Every line prefixed with its priority, ``<2>`` to ``<7>``, as journald
    reads a service's stderr (sd-daemon(3)): ``journalctl -p warning`` then
    finds the warnings. journald adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((value for level, value in _JOURNAL_PRIORITIES
                         if record.levelno >= level), 7)
        return "\n".join("<%d>%s" % (priority, line)
                         for line in logging.Formatter.format(self, record).split("\n"))


def _stderr_is_the_journal() -> bool:
    """Whether stderr is the journal: systemd then sets JOURNAL_STREAM to its
    device and inode (systemd.exec(5)); a redirection would change them."""
    expected = os.environ.get("JOURNAL_STREAM")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):  # no stderr at all
        return False
    return expected == "%d:%d" % (st.st_dev, st.st_ino)


def _configure_logging(level: str) -> None:
    """Log to stderr at ``level``: with priorities for journald under systemd,
    with the time otherwise."""
    handler = logging.StreamHandler()
    if _stderr_is_the_journal():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])

###############################################################################
# serve(): the servers until a signal #########################################
###############################################################################


def _raise_descriptor_limit() -> None:
    """Raise the soft limit on open files to the hard one: one per connection."""
    import resource  # Unix only
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit from %d: %s", soft, exc)


def _refuse_plain_tcp(tcp_address: "Tuple[str, int]", tls_context: "Any",
                      insecure_tcp: bool) -> None:
    """Refuse plain TCP on an address other than loopback, unless ``insecure_tcp``."""
    if tls_context is None and not insecure_tcp and not _is_loopback(tcp_address[0] or
                                                                       "127.0.0.1"):
        raise ValueError("refusing plain TCP on %s: anyone who can reach it could create, "
                         "mount and remove volumes as root. Serve TLS with client "
                         "certificates (--tls-cert, --tls-key, --tls-ca), or say "
                         "--insecure-tcp" % tcp_address[0])


def _describe(plugin: Plugin, servers: "List[Any]") -> str:
    """What is served where: the driver, its root, its volumes, the addresses."""
    driver = plugin.driver
    details = [type(driver).__name__] if driver is not None else []
    where = getattr(driver, "root", None) or getattr(driver, "state_dir", None)
    if where:
        details.append("root %s" % where)
    if driver is not None:
        try:
            details.append("%d volume(s)" % len(driver.list()))
        except Exception:
            pass
    return "%s%s on %s" % (", ".join(plugin.implements) or "nothing",
                           " (%s)" % ", ".join(details) if details else "",
                           ", ".join(each.address for each in servers))


#: The signals that would end the process: each stops it cleanly instead.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class _SignalStop(object):
    """Stops a server on a signal that would end the process, so that it
    removes its socket: one left behind makes Docker hang 15 s on each
    ``volume ls``. Handled from before the server exists: a signal that
    comes before :meth:`watch` stops the server as soon as it is watched."""

    def __init__(self) -> None:
        self.server = None  # type: Any
        self.received = None  # type: Optional[int]

    def __call__(self, signum: int, frame: "Any") -> None:
        log.info("signal %d received: stopping", signum)
        self.received = signum
        if self.server is not None:
            self._stop()

    def watch(self, server: "Any") -> None:
        self.server = server
        if self.received is not None:
            self._stop()

    def _stop(self) -> None:
        if not self.server.stopping:  # the handler may have run inside watch()
            self.server.stopping = True
            # shutdown() waits for serve_forever(), which runs in this very
            # thread; called first, it makes serve_forever() return at once.
            threading.Thread(target=self.server.shutdown).start()


@contextlib.contextmanager
def _stopped_by_signals() -> "Iterator[_SignalStop]":
    """Every signal of :data:`_STOP_SIGNALS` to a :class:`_SignalStop`, until the end."""
    stop = _SignalStop()
    previous = dict((sig, signal.signal(sig, stop)) for sig in _STOP_SIGNALS)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(driver: "Any", name: str = "docker-volume-plugin", socket_path: "Optional[str]" = None,
          tcp_address: "Optional[Tuple[str, int]]" = None, spec_dir: str = PLUGIN_SPEC_DIR,
          group: "Optional[Any]" = None, tls_context: "Any" = None,
          spec_tls: "Optional[Dict[str, Any]]" = None, insecure_tcp: bool = False,
          scope: "Optional[str]" = None, metrics_address: "Optional[Tuple[str, int]]" = None,
          metrics_file: "Optional[str]" = None, trace: "Optional[str]" = None,
          **limits: "Any") -> None:
    """Serve ``driver`` (a driver or a :class:`Plugin`) until SIGTERM or SIGINT.

    Listens on ``socket_path`` (default ``/run/docker/plugins/NAME.sock``), or
    on ``tcp_address`` with a spec file in ``spec_dir``: with ``tls_context``
    over HTTPS and a ``.json`` spec whose TLSConfig is ``spec_tls`` (see
    :class:`TCPPluginServer`). Plain TCP on an address other than loopback
    is refused unless ``insecure_tcp``: anyone who reaches it could create,
    mount and remove volumes as root. ``scope`` (``"local"`` or ``"global"``)
    overrides what the driver's capabilities announce. Started by systemd
    socket activation, on the sockets it passed instead (``LISTEN_FDS``),
    which it never removes. ``limits`` set the servers' limits by name
    (``max_connections=512``, ``request_timeout=30.0``, ...: the class
    attributes of :class:`UnixPluginServer`). On SIGTERM, SIGINT, SIGHUP or
    SIGQUIT it stops accepting, lets calls in flight finish for up to
    ``drain_timeout`` seconds, removes its socket or spec file and returns.
    Handling SIGTERM explicitly also makes it stop as PID 1 in a container.
    Under systemd it reports readiness, status and stopping, and keeps the
    watchdog fed while it serves (sd_notify(3)). Must be called from the main
    thread.

    Observing it: ``metrics_address`` (host, port) serves Prometheus's
    ``GET /metrics`` there, on loopback unless ``insecure_tcp``;
    ``metrics_file`` writes the same text to a ``*.prom`` file every few
    seconds; ``trace`` writes a JSON line per call to that file. SIGUSR2
    starts a trace, or stops the one that runs (to ``trace``, by default
    ``/run/docker-volume-plugin/NAME.trace``).
    """
    plugin = driver if isinstance(driver, Plugin) else Plugin(driver)
    if scope is not None:
        if scope not in _SCOPES:
            raise ValueError("scope must be 'local' or 'global', not %r" % scope)
        plugin.scope = scope
    if metrics_address is not None and not insecure_tcp and \
            not _is_loopback(metrics_address[0] or "127.0.0.1"):
        raise ValueError("refusing the metrics on %s: anyone who can reach it could watch what "
                         "the plugin does. Scrape it on loopback, or say --insecure-tcp"
                         % metrics_address[0])
    is_secret = getattr(plugin.driver, "is_secret", None) or _has_secret_word
    trace_path = trace or os.path.join(_RUN_DIR, name + ".trace")
    servers = []  # type: List[Any]
    metrics = None  # type: Optional[_Metrics]
    metrics_server = None  # type: Optional[_MetricsServer]
    metrics_thread = None  # type: Optional[threading.Thread]
    metrics_writer = None  # type: Optional[_MetricsFile]
    _raise_descriptor_limit()
    systemd = _Systemd()
    previous_usr2 = signal.getsignal(signal.SIGUSR2)
    with _stopped_by_signals() as stop:
        try:
            if metrics_address is not None or metrics_file is not None:
                metrics = _Metrics(plugin, servers)  # of the servers made below
                if metrics_file is not None:
                    metrics_writer = _MetricsFile(metrics_file, metrics)
                if metrics_address is not None:
                    metrics_server = _MetricsServer(metrics_address, metrics)
            for sock in _systemd_sockets():
                if sock.family == socket.AF_UNIX:
                    servers.append(UnixPluginServer(None, plugin, sock=sock, **limits))
                else:
                    # The same rule as for --tcp: systemd's ListenStream=8080 is 0.0.0.0.
                    _refuse_plain_tcp(sock.getsockname()[:2], tls_context, insecure_tcp)
                    servers.append(TCPPluginServer(None, plugin, name=name, spec_dir=spec_dir,
                                                   sock=sock, tls_context=tls_context,
                                                   spec_tls=spec_tls, **limits))
            if not servers and tcp_address is not None:
                _refuse_plain_tcp(tcp_address, tls_context, insecure_tcp)
                servers.append(TCPPluginServer(tcp_address, plugin, name=name, spec_dir=spec_dir,
                                               tls_context=tls_context, spec_tls=spec_tls,
                                               **limits))
            elif not servers:
                servers.append(UnixPluginServer(socket_path or _default_socket_path(name), plugin,
                                                group=group, **limits))
            server = servers[0]
            stop.watch(server)
            if trace is not None:
                tracer = _Trace(trace, is_secret)
                for each in servers:
                    each.observers.append(tracer)
            signal.signal(signal.SIGUSR2, lambda signum, frame: _switch_trace(
                servers, trace_path, is_secret))
            if metrics is not None:
                for each in servers:
                    each.observers.append(metrics)
            if metrics_server is not None:
                metrics_thread = threading.Thread(target=metrics_server.serve_forever,
                                                  name="docker-volume-plugin-metrics")
                metrics_thread.daemon = True
                metrics_thread.start()
                log.info("metrics on %s", metrics_server.address)
            if metrics_writer is not None:
                metrics_writer.start()
            for other in servers[1:]:
                other.start()
            description = _describe(plugin, servers)
            log.info("serving %s", description)
            systemd.notify("READY=1\nSTATUS=serving " + description)
            systemd.start_watchdog(server.turning)
            server.serve_forever(server.poll_interval)
        finally:
            systemd.notify("STOPPING=1")
            systemd.stop_watchdog()
            signal.signal(signal.SIGUSR2, previous_usr2)
            for each in servers:
                each.stopping = True
                each.stop()
            if metrics_server is not None:
                if metrics_thread is not None:
                    metrics_server.shutdown()
                metrics_server.server_close()
            if metrics_writer is not None:
                metrics_writer.stop()
            for observer in servers[0].observers if servers else ():
                if isinstance(observer, _Trace):
                    observer.close()
    log.info("stopped")

###############################################################################
# Client and lookup: a plugin found and called as the engines do ##############
###############################################################################

#: Spec directories in the engine's search order on Unix
#: (moby pkg/plugins/discovery_unix.go).
_PLUGIN_SPEC_DIRS = (PLUGIN_SPEC_DIR, "/usr/lib/docker/plugins")
#: Per-call deadlines Docker applies, in seconds: 2 minutes for Create and
#: Mount, 1 for the rest, none for Activate (moby volume/drivers/proxy.go).
_CALL_DEADLINES = {"VolumeDriver.Create": 120.0, "VolumeDriver.Mount": 120.0}
_DEFAULT_DEADLINE = 60.0
#: Podman's deadline for every call, Activate included, in seconds: its
#: ``volume_plugin_timeout`` default (libpod/plugin/volume_api.go).
_PODMAN_DEADLINE = 5.0

#: Where Podman reads ``[engine.volume_plugins]``, lowest priority first, when
#: ``CONTAINERS_CONF`` is not set (containers.conf(5)); each file's
#: ``containers.conf.d`` drop-ins are read after it.
_PODMAN_CONFIG_FILES = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
#: The Content-Type Podman sends; it sends no Accept (libpod/plugin).
_PODMAN_MEDIA_TYPE = "application/vnd.docker.plugins.v1.1+json"
_ENGINES = ("docker", "podman")
#: The Host of a newer Docker on a Unix socket; 20.10.24's is empty.
_DOCKER_UNIX_HOST = "plugin.moby.localhost"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        http.client.HTTPConnection.__init__(self, "localhost")
        self.unix_path = path

    def connect(self) -> None:
        too_long = _socket_path_too_long(self.unix_path)
        if too_long:
            raise OSError(errno.ENAMETOOLONG, too_long)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class PluginLookup(object):
    """Where an engine would find a plugin, and what looks wrong on the way:
    what :func:`find_plugin` returns."""

    def __init__(self) -> None:
        #: The address the engine would call (``unix:///...``, ``tcp://``,
        #: ``https://``), or None when it would find nothing usable.
        self.address = None  # type: Optional[str]
        #: The TLSConfig of a ``.json`` spec, ``{}`` for a ``.spec`` (the
        #: engine then skips verification), None for a socket.
        self.tls = None  # type: Optional[Dict[str, Any]]
        #: Whose configuration gave the address: Docker's plugin directories
        #: or a Podman containers.conf file.
        self.source = ""
        #: Why the engine would fail, in its terms.
        self.problems = []  # type: List[str]
        #: Files the winner shadows, and files the engine ignores.
        self.notes = []  # type: List[str]


def _read_spec(path: str) -> "Tuple[Optional[str], Optional[Dict[str, Any]], Optional[str]]":
    """Return (address, TLS config, problem) for a .spec or .json file."""
    try:
        text = _read_regular(path, follow_links=True).decode("utf-8", "replace")
    except OSError as exc:
        return None, None, "cannot read spec file %s: %s" % (path, exc.strerror)
    tls = {}  # type: Optional[Dict[str, Any]]  # a .spec: the engine skips verification
    if path.endswith(".json"):
        try:
            data = json.loads(text)
            address = data["Addr"]
            tls = data.get("TLSConfig")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None, None, "spec file %s is not a JSON object with an Addr" % path
    else:
        address = text.strip()
    if not isinstance(address, str) or "://" not in address:
        return None, None, ("spec file %s holds %r, an address without a scheme such as tcp://: "
                            "the engine fails with 'Unknown protocol'" % (path, address))
    return address, tls, None


def _podman_config_files(configs: "Optional[Iterable[str]]" = None) -> "List[str]":
    """Podman's containers.conf files that exist, lowest priority first."""
    if configs is None:
        env = os.environ.get("CONTAINERS_CONF")
        configs = [env] if env else _PODMAN_CONFIG_FILES
    files = []
    for config in configs:
        if os.path.isfile(config):
            files.append(config)
        drop_ins = config + ".d"
        if os.path.isdir(drop_ins):
            files += [os.path.join(drop_ins, f) for f in sorted(os.listdir(drop_ins))
                      if f.endswith(".conf")]
    return files


def _podman_plugin(name: str, configs: "Optional[Iterable[str]]" = None
                   ) -> "Tuple[Optional[str], Optional[str]]":
    """Podman's socket for plugin ``name`` and the file that set it, or (None, None).

    Reads only the ``[engine.volume_plugins]`` table of each file (TOML
    ``name = "path"`` lines); a later file overrides an earlier one.
    """
    result = None, None  # type: Tuple[Optional[str], Optional[str]]
    for config in _podman_config_files(configs):
        try:
            with open(config, encoding="utf-8", errors="replace") as conf:
                lines = conf.read().splitlines()
        except OSError:
            continue
        table = ""
        for line in lines:
            line = line.strip()
            if line.startswith("["):
                table = line.strip("[] ").replace(" ", "")
                continue
            key, sep, value = line.partition("=")
            if table == "engine.volume_plugins" and sep:
                key, value = key.strip().strip("\"'"), value.split("#")[0].strip()
                if key == name and len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
                    result = value[1:-1], config
    return result


def find_plugin(name: str, socket_dir: str = PLUGIN_SOCKET_DIR,
                spec_dirs: "Iterable[str]" = _PLUGIN_SPEC_DIRS,
                podman_configs: "Optional[Iterable[str]]" = None) -> PluginLookup:
    """Resolve a plugin name the way Docker does, then the way Podman does.

    Docker (moby pkg/plugins/discovery.go): sockets ``NAME.sock`` and
    ``NAME/NAME.sock`` first, then in each spec directory ``NAME.spec``,
    ``NAME/NAME.spec``, ``NAME.json``, ``NAME/NAME.json``; the first that
    exists wins, valid or not. If Docker would find nothing, Podman's
    ``[engine.volume_plugins]`` in its containers.conf files
    (``podman_configs``, default: ``CONTAINERS_CONF`` or the standard ones).
    Returns a lookup whose ``address`` is None when both would fail, with
    ``problems`` saying why in the engines' terms, ``notes`` on files that the
    winner shadows and ``source`` naming the configuration used.
    """
    lookup = PluginLookup()
    managed = _managed_plugin(name, socket_dir)
    if managed is not None:
        lookup.address, problem, lookup.source = managed
        if problem:
            lookup.problems.append(problem)
        return lookup
    # (file, address, TLSConfig, problem) of each file the engine would look at, in order
    found = []  # type: List[Tuple[str, Optional[str], Optional[Dict[str, Any]], Optional[str]]]
    for path in (os.path.join(socket_dir, name + ".sock"),
                 os.path.join(socket_dir, name, name + ".sock")):
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            lookup.problems.append("cannot look at %s: %s" % (path, exc.strerror))
            continue
        if not is_socket:
            lookup.notes.append("%s is not a socket, so the engine ignores it" % path)
        else:
            found.append((path, "unix://" + path, None, _socket_path_too_long(path)))
    for directory in spec_dirs:
        for relative in (name + ".spec", os.path.join(name, name + ".spec"),
                         name + ".json", os.path.join(name, name + ".json")):
            path = os.path.join(directory, relative)
            if os.path.exists(path):
                found.append((path,) + _read_spec(path))
    if found:
        winner, address, tls, problem = found[0]
        lookup.address = None if problem else address
        lookup.tls, lookup.source = tls, "Docker's plugin directories (%s)" % winner
        if problem:
            lookup.problems.append(problem)
        for shadowed in found[1:]:
            lookup.notes.append("%s is shadowed by %s, which comes first in the engine's "
                                "search order" % (shadowed[0], winner))
        return lookup
    socket_path, config = _podman_plugin(name, podman_configs)
    if socket_path is not None:
        lookup.address = "unix://" + socket_path
        lookup.source = "Podman's %s" % config
        return lookup
    lookup.problems.append(
        "no socket %s.sock in %s and no spec file %s.spec or %s.json in %s: Docker retries for "
        "about 15 s, then says the plugin is not found; no %s in [engine.volume_plugins] of "
        "Podman's %s either. Is the plugin running, under that name?"
        % (name, socket_dir, name, name, " or ".join(spec_dirs), name,
           " or ".join(_podman_config_files(podman_configs)) or "containers.conf"))
    return lookup


def _managed_plugin(name: str, socket_dir: str
                    ) -> "Optional[Tuple[Optional[str], Optional[str], str]]":
    """(address, problem, source) of the local Docker's managed plugin
    ``name``, or None if it has none. Docker resolves a managed plugin first,
    a bare name as ``NAME:latest``; a disabled one fails the lookup, with no
    fallback (moby plugin/store.go ``Get``). It dials
    ``socket_dir/ID/SOCKET`` (moby plugin/v2/plugin_linux.go)."""
    plugins = _docker_api("/plugins")
    if not isinstance(plugins, list):
        return None
    wanted = (name, name + ":latest") if ":" not in name.rpartition("/")[2] else (name,)
    for plugin in plugins:
        if not isinstance(plugin, dict) or plugin.get("Name") not in wanted:
            continue
        source = "the engine's managed plugin %s (%s)" % (plugin.get("Name"),
                                                            str(plugin.get("Id"))[:12])
        interface = (plugin.get("Config") or {}).get("Interface") or {}
        # The API gives each type as its string (moby api/types/plugin_responses.go).
        if "docker.volumedriver/1.0" not in (interface.get("Types") or []):
            return None, "%s is not a volume plugin" % source, source
        if not plugin.get("Enabled"):
            return None, ("%s is disabled: the engine fails the lookup (docker plugin enable "
                          "%s)" % (source, name)), source
        path = os.path.join(socket_dir, str(plugin.get("Id")), str(interface.get("Socket")))
        return "unix://" + path, _socket_path_too_long(path), source
    return None


def _resolve(target: str, socket_dir: str = PLUGIN_SOCKET_DIR,
             spec_dirs: "Iterable[str]" = _PLUGIN_SPEC_DIRS) -> PluginLookup:
    """An address as it is, or a plugin name found as the engines find it."""
    if "://" in target or target.startswith("/"):
        lookup = PluginLookup()
        lookup.address, lookup.source = target, "the address given"
        return lookup
    return find_plugin(target, socket_dir, spec_dirs)


def _refuse_constant(name: str) -> None:
    raise ValueError("%s is not JSON" % name)


#: Go's decoder: NaN and Infinity, which Python's accepts, are errors.
_GO_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _parse_reply(raw: bytes) -> "Any":
    """Decode one JSON value as Go does; None when there is none."""
    try:
        return _GO_DECODER.raw_decode(raw.decode("utf-8").lstrip())[0]
    except ValueError:  # also UnicodeDecodeError
        return None


def _tls_context(tls: "Optional[Dict[str, Any]]") -> "Any":
    """An SSL context following the engine's rules for a spec's TLSConfig."""
    if tls is None:  # an https address given directly: verify as Go would
        return ssl.create_default_context()
    context = ssl.create_default_context(cafile=tls.get("CAFile") or None)
    if not tls.get("CAFile") or tls.get("InsecureSkipVerify"):
        # The engine skips verification for .spec files and for a TLSConfig
        # without a CAFile (moby pkg/plugins/discovery.go).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.get("CertFile"):
        context.load_cert_chain(tls["CertFile"], tls.get("KeyFile") or None)
    return context


def _address_parts(address: str) -> "Tuple[str, str]":
    """The scheme of a plugin address and the rest; a bare path is ``unix``."""
    scheme, _, rest = address.partition("://") if "://" in address else ("unix", "", address)
    return scheme, rest


def _connection_for(address: str, tls: "Optional[Dict[str, Any]]") -> "Tuple[Any, str]":
    """An HTTP connection to a plugin's address, and the Host header an
    engine sends there (an empty one on a Unix socket, as a 20.10 engine)."""
    scheme, rest = _address_parts(address)
    if scheme == "unix":
        return _UnixHTTPConnection(rest), ""
    host = rest.rstrip("/")
    if scheme in ("tcp", "http"):
        return http.client.HTTPConnection(host), host
    if scheme == "https":
        return http.client.HTTPSConnection(host, context=_tls_context(tls)), host
    raise ValueError("unsupported plugin address %r" % address)


class PluginClient(object):
    """Talks to a plugin exactly as an engine does: Docker's or Podman's.

    ``target`` is an address (``unix:///path``, a socket path,
    ``tcp://host:port``, ``http://``, ``https://``) or a plugin name, found
    as the engines find it (:func:`find_plugin`); ``tls`` takes the keys of a
    ``.json`` spec's ``TLSConfig`` and defaults to the spec's own.

    With ``engine="docker"`` requests are POSTs with only Docker's headers
    (``Accept``, ``Content-Length``, ``User-Agent``, an empty ``Host`` on a
    Unix socket), compact JSON bodies ending in a newline, and Docker's
    deadlines (2 minutes for Create and Mount, 1 for the rest, none for
    Activate); only a 200 without ``Err`` is success (moby pkg/plugins).
    With ``engine="podman"`` they carry Podman's headers (``Host: plugin``,
    a ``Content-Type``, no ``Accept``), bodies without a newline, no body for
    Activate and List, no ``Opts`` key in a Create without options, a 5 s
    deadline, and, as in Podman, any 200 is success, even with an ``Err``.
    ``timeout`` overrides the deadlines. Failures raise
    :class:`PluginCallError`. One client serves one thread at a time, over
    one keep-alive connection.
    """

    def __init__(self, target: str, timeout: "Optional[float]" = None,
                 socket_dir: str = PLUGIN_SOCKET_DIR,
                 spec_dirs: "Iterable[str]" = _PLUGIN_SPEC_DIRS,
                 engine: str = "docker", tls: "Optional[Dict[str, Any]]" = None) -> None:
        if engine not in _ENGINES:
            raise ValueError("engine must be one of %s, not %r" % (", ".join(_ENGINES), engine))
        lookup = _resolve(target, socket_dir, spec_dirs)
        if lookup.address is None:
            raise PluginCallError("plugin %r: %s" % (target, "; ".join(lookup.problems)))
        target, tls = lookup.address, tls if tls is not None else lookup.tls
        self.address = target
        self.engine = engine
        #: Overrides the engine's deadlines for every call when set.
        self.timeout = timeout
        self._connection, self._host = _connection_for(target, tls)
        if engine == "podman":
            self._host = "plugin"

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "PluginClient":
        return self

    def __exit__(self, *exc_info: "Any") -> None:
        self.close()

    def exchange(self, method: str, payload: "Optional[Dict[str, Any]]" = None
                 ) -> "Tuple[int, bytes]":
        """POST ``/METHOD`` and return the HTTP status and the raw reply body.

        Raises :class:`PluginCallError` only for transport failures.
        """
        podman = self.engine == "podman"
        if payload is None or (podman and method in ("Plugin.Activate", "VolumeDriver.List")):
            body = b""  # Activate has no body at all (moby pkg/plugins/plugins.go)
        else:
            if podman and method == "VolumeDriver.Create" and not payload.get("Opts"):
                payload = dict(payload)
                payload.pop("Opts", None)  # Podman's Opts is omitempty
            # Go's encoding/json: compact, <>& escaped; Docker's Encoder adds a newline.
            text = json.dumps(payload, separators=(",", ":"))
            body = (text.replace("<", "\\u003c").replace(">", "\\u003e")
                    .replace("&", "\\u0026") + ("" if podman else "\n")).encode("utf-8")
        conn = self._connection
        if self.timeout is not None:
            conn.timeout = self.timeout
        elif podman:
            conn.timeout = _PODMAN_DEADLINE
        else:
            conn.timeout = (None if method == "Plugin.Activate"
                            else _CALL_DEADLINES.get(method, _DEFAULT_DEADLINE))
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        try:
            conn.putrequest("POST", "/" + method, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self._host)
            conn.putheader("User-Agent", "Go-http-client/1.1")
            conn.putheader("Content-Length", str(len(body)))
            if podman:
                conn.putheader("Content-Type", _PODMAN_MEDIA_TYPE)
            else:
                conn.putheader("Accept", _PLUGIN_MEDIA_TYPE)
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise PluginCallError("%s: %s" % (method, _error_text(exc)))

    def call(self, method: str, payload: "Optional[Dict[str, Any]]" = None) -> "Dict[str, Any]":
        """POST ``/METHOD`` and return the reply object, or raise as the engine fails."""
        status, raw = self.exchange(method, payload)
        reply = _parse_reply(raw)
        err = reply.get("Err") if isinstance(reply, dict) else None
        if status != 200:
            raise PluginCallError("%s: %s" % (method, err or raw.decode("utf-8", "replace")), status)
        if not isinstance(reply, dict):
            raise PluginCallError("%s: reply is not a JSON object: %r" % (method, raw[:200]), status)
        if err and self.engine == "docker":
            raise PluginCallError(str(err), status)
        return reply

    def activate(self) -> "List[str]":
        return self.call("Plugin.Activate").get("Implements") or []

    def create(self, name: str, options: "Optional[Dict[str, str]]" = None) -> None:
        self.call("VolumeDriver.Create", {"Name": name, "Opts": options})

    def remove(self, name: str) -> None:
        self.call("VolumeDriver.Remove", {"Name": name})

    def mount(self, name: str, mount_id: str) -> str:
        """The Mountpoint; ``""`` when the reply has none, as Go decodes it."""
        return self._mountpoint("VolumeDriver.Mount", {"Name": name, "ID": mount_id})

    def unmount(self, name: str, mount_id: str) -> None:
        self.call("VolumeDriver.Unmount", {"Name": name, "ID": mount_id})

    def get(self, name: str) -> "Optional[Dict[str, Any]]":
        """The Volume; None for a reply whose Volume is null."""
        return self.call("VolumeDriver.Get", {"Name": name}).get("Volume")

    def list(self) -> "List[Dict[str, Any]]":
        return self.call("VolumeDriver.List", {}).get("Volumes") or []

    def path(self, name: str) -> str:
        """The Mountpoint; ``""`` when the reply has none, as Go decodes it."""
        return self._mountpoint("VolumeDriver.Path", {"Name": name})

    def capabilities(self) -> "Dict[str, Any]":
        return self.call("VolumeDriver.Capabilities", {}).get("Capabilities") or {}

    def _mountpoint(self, method: str, payload: "Dict[str, Any]") -> str:
        mountpoint = self.call(method, payload).get("Mountpoint")
        if mountpoint is None:
            return ""
        if not isinstance(mountpoint, str):  # the engine's decode fails
            raise PluginCallError("%s: Mountpoint %r is not a string" % (method, mountpoint))
        return mountpoint

###############################################################################
# Checker: check_plugin, the engines' call sequences and rules ################
###############################################################################

#: Seconds the concurrency probe waits for a Get while another request is in
#: progress (a shorter ``deadline`` given to the check shortens it).
_PROBE_SECONDS = 5.0
#: A call is "well within" the engines' deadline under this share of it.
_DEADLINE_SHARE = 0.25
#: A Mount quicker than this cannot hold a lock long enough to be measured.
_LOCK_PROBE_MIN_SECONDS = 0.05
#: Names Docker's ``local`` driver refuses (volume/local/local.go) and the
#: engine passes to plugins unchecked (volume/mounts/linux_parser.go).
_UNSAFE_NAMES = ("../%s-up", "%s-a/b", "%s sp")
_NAIVE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?\Z")

#: A managed plugin's socket on the host: Docker makes the directory
#: /run/docker/plugins/ID (moby plugin/v2/plugin_linux.go) and binds it at
#: /run/docker/plugins inside the plugin.
_MANAGED_SOCKET = re.compile(re.escape(PLUGIN_SOCKET_DIR) + r"/[0-9a-f]{64}/")


def _result(rule: str, status: str, detail: str) -> "Dict[str, Any]":
    return {"rule": rule, "status": status, "passed": status != "fail", "detail": detail}


def _random_id() -> str:
    """A mount ID of the engine's form: 64 lower-case hex characters."""
    return os.urandom(32).hex()


def _split_address(address: str) -> "Tuple[int, Any]":
    """Socket family and address for ``unix://``, ``tcp://`` or ``http://``."""
    scheme, rest = _address_parts(address)
    if scheme == "unix":
        return socket.AF_UNIX, rest
    host, _, port = rest.rstrip("/").rpartition(":")
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host.strip("[]"), int(port or 80))


def _connect_problem(address: str) -> "Optional[str]":
    """Why the engine could not connect to ``address``, in its terms, or None."""
    if address.startswith("https://"):
        return None  # checked by the first call
    family, where = _split_address(address)
    if family == socket.AF_UNIX and _socket_path_too_long(where):
        return _socket_path_too_long(where)
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.settimeout(5.0)
    try:
        probe.connect(where)
    except ConnectionRefusedError:
        if family == socket.AF_UNIX:
            return ("stale socket %s: nothing listens on it. Docker hangs about 15 s on "
                    "every `docker volume ls` while it retries: start the plugin or remove "
                    "the socket" % where)
        return ("nothing listens on %s: the engine retries for about 15 s, then fails the "
                "call" % address)
    except PermissionError:
        return ("permission denied on %s: run as root, or serve with --group to give a group "
                "access" % where)
    except OSError as exc:
        return "cannot connect to %s: %s" % (address, _error_text(exc))
    finally:
        probe.close()
    return None


def _serving_pids(path: str) -> "List[int]":
    """The processes that hold the listening Unix socket ``path`` open: the
    plugin (and under socket activation systemd, whose pid SO_PEERCRED gives)."""
    inodes = set()
    try:
        with open("/proc/net/unix") as table:
            for line in table.read().splitlines()[1:]:
                fields = line.split(None, 7)  # Num RefCount Protocol Flags Type St Inode Path
                if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    inodes.add("socket:[%s]" % fields[6])  # __SO_ACCEPTCON: listening
        pids = []
        for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
            try:
                fds = os.listdir("/proc/%s/fd" % pid)
                if any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) in inodes for fd in fds):
                    pids.append(int(pid))
            except OSError:  # gone, or not ours to look at
                continue
    except OSError:
        return []
    return [pid for pid in pids if pid != 1] or pids


def _created_at_problem(value: "Any") -> "Optional[str]":
    if value is None or (isinstance(value, str) and format_rfc3339(value) is not None):
        return None
    if isinstance(value, str) and _NAIVE_TIME.match(value):
        return "CreatedAt %r has no timezone" % value
    return "CreatedAt %r is not an RFC 3339 time" % (value,)


class _Checker(object):
    """One run of :func:`check_plugin` against one address.

    Volume ``a`` is created as Docker creates it and goes through mounts,
    counting and removal; ``b`` is created, mounted, listed and removed as
    Podman does it, one new connection and Activate per command.
    """

    def __init__(self, address: str, tls: "Optional[Dict[str, Any]]", options: "Dict[str, str]",
                 bad_options: "Dict[str, str]", deadline_share: float,
                 deadline: "Optional[float]") -> None:
        self.address = address
        self.tls = tls
        self.options = options
        self.bad_options = bad_options
        self.deadline_share = deadline_share
        self.deadline = deadline
        self.client = self.new_client()
        #: Mountpoints are host paths we can look at only on this host, and
        #: not for a managed plugin: its paths are inside its own root.
        self.local = False
        #: The plugin's processes, whose mount namespaces Mountpoints are
        #: looked at in too (a Unix socket on this host only).
        self.plugin_pids = []  # type: List[int]
        if not address.startswith("https://"):
            family, where = _split_address(address)
            self.local = (not _MANAGED_SOCKET.match(where) if family == socket.AF_UNIX
                          else _is_loopback(where[0]))
            if self.local and family == socket.AF_UNIX:
                self.plugin_pids = _serving_pids(os.path.realpath(where))
        self.prefix = "dvp-check-%s" % os.urandom(6).hex()
        self.a, self.b, self.unknown = (self.prefix + "-a", self.prefix + "-b",
                                        self.prefix + "-never-created")
        self.created = []  # type: List[str]
        self.mounted = []  # type: List[Tuple[str, str]]
        self.mount_seconds = self.create_seconds = 0.0
        #: (method, engine, status, raw reply, seconds, expected to fail)
        self.calls = []  # type: List[Tuple[str, str, int, bytes, float, bool]]
        self.results = []  # type: List[Dict[str, Any]]

    def run(self) -> "List[Dict[str, Any]]":
        try:
            self.activate()
            if not self.concurrency():
                return self.results  # any further call could hang
            self.capabilities()
            self.get_unknown()
            if self.create():
                self.unsafe_names()
                self.bad_option()
                self.unknown_volume()
                self.mount()
                self.lock()
                self.podman()
                self.remove()
            self.replies()
        except PluginCallError as exc:
            self.rule("transport", False, "%s: Docker retries such a failure for about 15 s, "
                      "then fails the user's command; Podman fails it at once" % exc)
        finally:
            self.cleanup()
        return self.results

    # -- the rules, in the order run() calls them -----------------------------

    def activate(self) -> None:
        for engine in _ENGINES:
            with self.new_client(engine) as client:
                # On a Unix socket, each Host a Docker sends: empty up to
                # 20.10.25, plugin.moby.localhost from 20.10.26, 23.0.7,
                # 24.0.5 and 25 (moby pkg/plugins/client.go).
                hosts = [client._host]
                if engine == "docker" and _address_parts(client.address)[0] == "unix":
                    hosts.append(_DOCKER_UNIX_HOST)
                for host in hosts:
                    client._host = host
                    reply, err = self.call("Plugin.Activate", None, client)
                    request = "%s's request (Host %r)" % (engine, host)
                    implements = reply.get("Implements")
                    if err is None and isinstance(implements, list) and "VolumeDriver" in implements:
                        self.rule("activate", True, "%s: Implements %r" % (request, implements))
                    else:
                        self.rule("activate", False, "%s got %s: the engine refuses the plugin "
                                  "('does not implement the requested driver')"
                                  % (request, err or "Implements %r" % (implements,)))

    def concurrency(self) -> bool:
        """A request held half-sent must not stop a Get on another connection."""
        if self.address.startswith("https://"):
            self.rule("concurrency", "skip", "not probed over https")
            return True
        family, where = _split_address(self.address)
        body = _encode_json({"Name": self.a}) + b"\n"
        held = socket.socket(family, socket.SOCK_STREAM)
        held.settimeout(30.0)
        try:
            held.connect(where)
            held.sendall(b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: \r\nUser-Agent: "
                         b"Go-http-client/1.1\r\nContent-Length: %d\r\nAccept: %s\r\n\r\n"
                         % (len(body), _PLUGIN_MEDIA_TYPE.encode()) + body[:5])
            started = _monotonic()
            probe_seconds = min(_PROBE_SECONDS, self.deadline or _PROBE_SECONDS)
            with PluginClient(self.address, timeout=probe_seconds) as other:
                other.exchange("VolumeDriver.Get", {"Name": self.a})
            self.rule("concurrency", True, "a Get answered in %.2fs while another connection's "
                      "request was in progress" % (_monotonic() - started))
            return True
        except PluginCallError:
            return self.rule("concurrency", False, "a Get got no answer in %gs while another "
                             "connection's request was in progress: the server handles one "
                             "connection at a time. The engines keep idle connections open and "
                             "call concurrently, so they will hang" % probe_seconds)
        except OSError as exc:
            return self.rule("concurrency", False, "the held request failed: %s" % _error_text(exc))
        finally:
            held.close()  # with the body half-sent: the plugin never acts on it

    def capabilities(self) -> None:
        reply, err = self.call("VolumeDriver.Capabilities", {})
        capabilities = reply.get("Capabilities")
        scope = capabilities.get("Scope") if isinstance(capabilities, dict) else None
        if err is not None:
            self.rule("capabilities", False, "saw %s: Docker assumes scope 'local' and asks "
                      "again on every lookup" % err)
        elif scope in _SCOPES:
            self.rule("capabilities", True, "Scope %r" % scope)
        else:
            self.rule("capabilities", False, "Scope %r: Docker accepts 'local' or 'global' "
                      "and treats anything else as 'local', with a warning" % (scope,))

    def get_unknown(self) -> None:
        reply, err = self.call("VolumeDriver.Get", {"Name": self.a}, expect_error=True)
        if err is not None or reply.get("Volume") is None:
            self.rule("get-unknown", True, "not found (%s)" % (err or "null Volume"))
        else:
            self.rule("get-unknown", False, "Get of %r, never created, returned %r: the engines "
                      "call Get before Create and adopt what they find, so Create and its "
                      "options never reach the plugin" % (self.a, reply.get("Volume")))

    def create(self) -> bool:
        opts = self.options or None  # docker run -v sends null
        started = _monotonic()
        reply, err = self.call("VolumeDriver.Create", {"Name": self.a, "Opts": opts})
        self.create_seconds = _monotonic() - started
        if self.rule("create", err is None, "Docker's request, Opts %s: %s" % (
                _format_options(opts or {}), "ok" if err is None else
                "%s: `docker volume create` fails" % err)):
            self.created.append(self.a)
        with self.new_client("podman") as podman:  # `podman volume create`
            self.call("Plugin.Activate", None, podman)
            self.call("VolumeDriver.Get", {"Name": self.b}, podman, expect_error=True)
            reply, err = self.call("VolumeDriver.Create", {"Name": self.b, "Opts": opts}, podman)
        if self.rule("create", err is None, "Podman's request%s: %s" % (
                "" if opts else " without Opts", "ok" if err is None else
                "%s: `podman volume create` fails" % err)):
            self.created.append(self.b)
        for name in self.created:
            reply, err = self.call("VolumeDriver.Get", {"Name": name})
            volume = reply.get("Volume")
            if err is not None or not isinstance(volume, dict):
                self.rule("get", False, "Get of %r just after Create: %s: Docker treats the "
                          "volume as missing and deletes its labels and options; `podman "
                          "volume ls` fails" % (name, err or "null Volume"))
            elif volume.get("Name") != name:
                self.rule("get", False, "Get of %r returned Name %r: the engine uses the "
                          "returned name, so the volume goes missing" % (name, volume.get("Name")))
            else:
                self.rule("get", True, "%r found after Create, name echoed" % name)
        if self.created:
            problem = self.listing_problem(self.created, True)
            self.rule("list", problem is None, "List has %s" % ", ".join(self.created)
                      if problem is None else "%s: `docker volume ls` will not show %s"
                      % (problem, ", ".join(self.created)))
        return self.a in self.created

    def unsafe_names(self) -> None:
        """Names Docker's own driver refuses: a plugin that builds paths must too."""
        accepted = []
        for pattern in _UNSAFE_NAMES:
            name = pattern % self.prefix
            reply, err = self.call("VolumeDriver.Create", {"Name": name, "Opts": self.options or None},
                                   expect_error=True)
            if err is None:
                accepted.append(name)
                self.created.append(name)
        if accepted:
            self.rule("unsafe-names", "warn", "Create accepted %s: neither engine checks the "
                      "names of plugin volumes (only Docker's local driver does), so a driver "
                      "that builds a path from a name must refuse '..', '/' and the like, or "
                      "it writes outside its root" % ", ".join(map(repr, accepted)))
        else:
            self.rule("unsafe-names", True, "refused names with '..', '/' and a space")

    def bad_option(self) -> None:
        if not self.bad_options:
            self.rule("bad-option", "skip", "no --bad-opt given: name an option the driver must "
                      "refuse to check that a user's mistake gets an error")
            return
        name = self.prefix + "-bad-opt"
        options = dict(self.options, **self.bad_options)
        reply, err = self.call("VolumeDriver.Create", {"Name": name, "Opts": options},
                               expect_error=True)
        if err is None:
            self.created.append(name)
        self.rule("bad-option", err is not None, "refused %s: %s" % (
            _format_options(self.bad_options), err) if err is not None else
            "Create with %s succeeded: the user's mistake goes unnoticed until the volume "
            "misbehaves" % _format_options(self.bad_options))

    def unknown_volume(self) -> None:
        """Mount, Unmount and Remove of a name that was never created."""
        mount_id = _random_id()
        reply, mount_err = self.call("VolumeDriver.Mount", {"Name": self.unknown, "ID": mount_id},
                                     expect_error=True)
        if mount_err is None:
            self.mounted.append((self.unknown, mount_id))
        errors = [mount_err]
        for method, payload in (("VolumeDriver.Unmount", {"Name": self.unknown, "ID": mount_id}),
                                ("VolumeDriver.Remove", {"Name": self.unknown})):
            errors.append(self.call(method, payload, expect_error=True)[1])
        self.rule("unknown-volume", mount_err is not None, "Mount, Unmount, Remove: %s" % "; ".join(
            err or "ok" for err in errors) if mount_err is not None else
            "Mount of a volume that was never created returned %r: the container starts on a "
            "directory that belongs to no volume" % reply.get("Mountpoint"))

    def mount(self) -> None:
        """Mount counting as a multiset per ID, as the engine needs it."""
        name, first, second, never = self.a, _random_id(), _random_id(), _random_id()
        paths = []  # type: List[Any]
        for mount_id in (first, first, second):  # docker cp reuses the running ID
            started = _monotonic()
            reply, err = self.call("VolumeDriver.Mount", {"Name": name, "ID": mount_id})
            self.mount_seconds = max(self.mount_seconds, _monotonic() - started)
            if err is not None:
                self.rule("mount", False, "Mount #%d: %s: the container does not start"
                          % (len(paths) + 1, err))
                self.unmount_all()
                return
            self.mounted.append((name, mount_id))
            paths.append(reply.get("Mountpoint"))
        path = paths[0]
        if not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
            self.rule("mount", False, "Mountpoints %r: not all absolute paths; the engine "
                      "stores them anyway and the container fails to start" % (paths,))
        elif len(set(paths)) != 1:
            self.rule("mount", False, "Mountpoints %r for one volume: containers sharing it "
                      "(or docker cp) would see different directories" % (paths,))
        elif self.local and not os.path.isdir(path):
            self.rule("mount", False, "Mountpoint %s does not exist while mounted: the "
                      "runtime cannot bind-mount it and the container fails" % path)
        else:
            self.rule("mount", True, "same ID twice and a second ID: %s" % path)
            self.mount_namespace(path)
            reply, err = self.call("VolumeDriver.Path", {"Name": name})
            self.rule("path", err is None and reply.get("Mountpoint") == path,
                      "agrees with Mount" if err is None and reply.get("Mountpoint") == path
                      else "%s, but Mount gave %r: tools that ask Path see another directory"
                      % (err or "Path gives %r" % reply.get("Mountpoint"), path))
        # Mounted A, A, B. Each step leaves the volume mounted; the mistake
        # that releases it early is named by the step that does.
        steps = (
            (first, "Unmount of ID 1 (mounted twice) released the volume while ID 1 and ID 2 "
                    "still hold it: the driver releases a volume at its first Unmount, whatever "
                    "holds it still (one mounted flag per volume, or an Unmount that clears "
                    "every mount ID)"),
            (second, "after Mount(ID 1) twice, Mount(ID 2), Unmount(ID 1), Unmount(ID 2) the "
                     "volume was released though ID 1 still holds it: the driver counts mount "
                     "IDs as a set, not per ID, so `docker cp` into a running container "
                     "unmounts the volume under it"),
            (never, "Unmount of an ID that was never mounted released the mount that ID 1 "
                    "holds: the driver counts mounts by name (or ignores the ID on Unmount), "
                    "so one container's stop unmounts the volume under another"),
        )
        unmount_error, counting = None, None  # type: Optional[str], Optional[str]
        while_mounted = self.mountpoints(name)
        attached = isinstance(path, str) and self.is_mount_point(path)
        for mount_id, mistake in steps:
            reply, err = self.call("VolumeDriver.Unmount", {"Name": name, "ID": mount_id},
                                   expect_error=mount_id == never)
            if mount_id != never and err is not None:
                unmount_error = err
                break
            if (name, mount_id) in self.mounted:
                self.mounted.remove((name, mount_id))
            problem = self.released(name, path, while_mounted)
            if problem is not None:
                counting = "%s (%s). A running container loses its data, or sees an empty " \
                           "directory" % (mistake, problem)
                break
        if unmount_error is not None:
            self.rule("mount-counting", "skip", "could not run: Unmount failed")
        else:
            self.rule("mount-counting", counting is None, counting or
                      "still mounted by ID 1 after the other Unmounts, an Unmount of an unknown "
                      "ID included: Remove refused, same mountpoint")
        self.unmount_all()
        if unmount_error is None and any(m[0] == name for m in self.mounted):
            unmount_error = "Unmount of %s failed" % name
        self.rule("unmount", unmount_error is None, "each Mount undone" if unmount_error is None
                  else "%s: the engine logs it, keeps the mount ID and reuses it next time"
                  % unmount_error)
        if unmount_error is None and attached:
            detached = not self.is_mount_point(path)
            self.rule("detach", detached, "%s, a mount point while mounted, is none after the "
                      "last Unmount" % path if detached else "%s is still a mount point after "
                      "the last Unmount: the driver never detaches, and leaks its storage (a "
                      "loop device, a connection) for every volume ever mounted" % path)

    def mount_namespace(self, path: str) -> None:
        """The Mountpoint must be the same file system where the engine looks
        (this host's mount namespace) as in the plugin's own."""
        if not self.plugin_pids:
            self.rule("mount-namespace", "skip", "the plugin's process is not on this host, "
                      "or not ours to look at")
            return
        ours = os.stat(path).st_dev
        for pid in self.plugin_pids:
            try:
                theirs = os.stat("/proc/%d/root%s" % (pid, path)).st_dev
            except OSError:
                continue
            if theirs != ours:
                self.rule("mount-namespace", False, "%s is another file system in the plugin's "
                          "mount namespace (process %d) than in this host's: the engine never "
                          "sees the plugin's mounts, and containers write to the disk beneath. "
                          "Under systemd, drop ProtectSystem, PrivateTmp, ProtectHome, "
                          "ProtectKernelTunables, ProtectKernelModules, ProtectKernelLogs, "
                          "ProtectControlGroups, PrivateMounts and ReadWritePaths: each gives "
                          "the service a mount namespace of its own" % (path, pid))
                return
        self.rule("mount-namespace", True, "%s is the same file system in the plugin's mount "
                  "namespace as in this host's" % path)

    def lock(self) -> None:
        """A slow Mount or Create of one volume must not hold up a Get of another."""
        if self.b not in self.created:
            self.rule("lock", "skip", "needs the second scratch volume, which was not created")
            return
        mount_id, new = _random_id(), self.prefix + "-c"
        probes = [(method, payload, seconds) for method, payload, seconds in (
            ("Mount", {"Name": self.b, "ID": mount_id}, self.mount_seconds),
            ("Create", {"Name": new, "Opts": self.options or None}, self.create_seconds))
            if seconds >= _LOCK_PROBE_MIN_SECONDS]
        if not probes:
            self.rule("lock", "skip", "Mount takes %.0f ms and Create %.0f ms, too quick to tell "
                      "whether they hold a lock that other volumes' calls wait for"
                      % (self.mount_seconds * 1000, self.create_seconds * 1000))
            return
        with self.new_client() as client:
            started = _monotonic()
            self.call("VolumeDriver.Get", {"Name": self.a}, client)
            alone = _monotonic() - started
        for method, payload, slow_seconds in probes:
            done = []  # type: List[Any]

            def slow_call() -> None:
                with self.new_client() as client:
                    done.append(self.call("VolumeDriver." + method, payload, client))
            thread = threading.Thread(target=slow_call)
            thread.start()
            time.sleep(slow_seconds * 0.2)  # the slow call is under way
            started = _monotonic()
            with self.new_client() as client:
                self.call("VolumeDriver.Get", {"Name": self.a}, client)
            get_seconds = _monotonic() - started
            thread.join()
            if done and done[0][1] is None:
                if method == "Mount":
                    self.mounted.append((self.b, mount_id))
                else:
                    self.created.append(new)
            self.unmount_all()
            if get_seconds >= slow_seconds * 0.5 and get_seconds > alone * 3 + 0.02:
                self.rule("lock", False, "a Get of %r waited %.2fs, until a %s of %r finished: "
                          "the driver holds one lock for all volumes across slow work, so every "
                          "engine call (Docker's Get before each command, Podman's 5 s "
                          "deadline) waits behind every %s; lock per volume"
                          % (self.a, get_seconds, method, payload["Name"], method))
                return
        self.rule("lock", True, "a Get of %r was not held up while %s of another volume was "
                  "under way" % (self.a, " or ".join(p[0] for p in probes)))

    def podman(self) -> None:
        """Volume ``b`` through Podman's commands: a connection and Activate for each."""
        if self.b not in self.created:
            return
        mount_id, problems = _random_id(), []  # type: str, List[str]

        def command(method: str, payload: "Dict[str, Any]") -> "Dict[str, Any]":
            with self.new_client("podman") as podman:
                self.call("Plugin.Activate", None, podman)
                reply, err = self.call(method, payload, podman)
            if err is not None:
                problems.append("%s: %s" % (method, err))
            return reply
        path = command("VolumeDriver.Mount", {"Name": self.b, "ID": mount_id}).get("Mountpoint")
        if not problems:
            self.mounted.append((self.b, mount_id))
            if not isinstance(path, str) or (self.local and not os.path.isdir(path)):
                problems.append("Mount gave %r, not an existing directory" % (path,))
        command("VolumeDriver.Unmount", {"Name": self.b, "ID": mount_id})
        if (self.b, mount_id) in self.mounted and not problems:
            self.mounted.remove((self.b, mount_id))
        with self.new_client("podman") as podman:  # `podman volume reload`
            self.call("Plugin.Activate", None, podman)
            problem = self.listing_problem([self.b], True, podman)
        if problem is not None:
            problems.append(problem)
        self.rule("podman", not problems, "; ".join(problems) + ": the podman command fails"
                  if problems else "Podman's Mount, Unmount and List of %r" % self.b)

    def remove(self) -> None:
        removed = []
        for name in (self.a, self.b):
            if name not in self.created:
                continue
            engine = "docker" if name == self.a else "podman"
            with self.new_client(engine) as client:
                reply, err = self.call("VolumeDriver.Remove", {"Name": name}, client)
            if self.rule("remove", err is None, "%r removed (%s's request)" % (name, engine)
                         if err is None else "%r: %s: `%s volume rm` fails and the engine keeps "
                         "its record" % (name, err, engine)):
                self.created.remove(name)
                removed.append(name)
        for name in removed:
            reply, err = self.call("VolumeDriver.Get", {"Name": name}, expect_error=True)
            gone = err is not None or reply.get("Volume") is None
            self.rule("get-removed", gone, "%r not found after Remove" % name if gone else
                      "Get still returns %r after Remove: the engine believes it still exists"
                      % reply.get("Volume"))
        if removed:
            problem = self.listing_problem(removed, False)
            self.rule("list-removed", problem is None, "List no longer has them" if problem is None
                      else "%s: `docker volume ls` still shows removed volumes" % problem)

    def replies(self) -> None:
        """Rules over every reply seen: errors, JSON, CreatedAt, deadlines."""
        bad_http, bad_error, bad_time = None, None, None  # type: Optional[str], Optional[str], Optional[str]
        slowest = (0.0, "", 1.0)
        for method, engine, status, raw, seconds, expect_error in self.calls:
            reply = _parse_reply(raw)
            err = reply.get("Err") if isinstance(reply, dict) else None
            if status == 200 and err and bad_error is None:
                bad_error = (
                    "%s answered HTTP 200 with Err %r: Docker takes it as an error, but Podman "
                    "looks only at the status and takes it as success (a refused Create leaves "
                    "a volume Podman lists and the plugin lacks; a failed Mount makes Podman "
                    "bind-mount the container's own directory). Answer errors with a non-200 "
                    "status such as 500" % (method, err))
            elif status != 200 and not err and bad_http is None:
                bad_http = ("%s answered HTTP %d without an Err: %r. The engines show the raw "
                            "body as the error" % (method, status, raw[:200]))
            elif status == 200 and not isinstance(reply, dict) and bad_http is None:
                bad_http = ("%s answered HTTP 200 with %r, not a JSON object: the engines count "
                            "it as a failure" % (method, raw[:200]))
            if isinstance(reply, dict) and status == 200:
                volumes = reply.get("Volumes") if method.endswith(".List") else [reply.get("Volume")]
                for volume in volumes if isinstance(volumes, list) else []:
                    problem = _created_at_problem(volume.get("CreatedAt")) if isinstance(
                        volume, dict) else None
                    if problem and bad_time is None:
                        bad_time = problem + (
                            ": Docker fails to decode the List and shows none of this "
                            "plugin's volumes" if method.endswith(".List") else
                            ": Docker will treat this volume as missing and delete its labels "
                            "and options")
            limit = self.deadline or min(_CALL_DEADLINES.get(method, _DEFAULT_DEADLINE),
                                         _PODMAN_DEADLINE)
            if method != "Plugin.Activate" and seconds / limit > slowest[0] / slowest[2]:
                slowest = (seconds, method, limit)
        self.rule("errors", bad_error is None, bad_error or
                  "every error a non-200 with an Err, as Docker and Podman both read it")
        self.rule("http", bad_http is None, bad_http or "every reply JSON, every failure with an Err")
        self.rule("created-at", bad_time is None,
                  bad_time or "every CreatedAt is RFC 3339 with a timezone, or absent")
        seconds, method, limit = slowest
        deadlines = ("the deadline given" if self.deadline else
                     "Podman allows %gs per call, Docker %gs" % (
                         _PODMAN_DEADLINE, _CALL_DEADLINES.get(method, _DEFAULT_DEADLINE)))
        quick = seconds <= limit * self.deadline_share
        self.rule("deadlines", quick, "slowest: %s in %.3fs (%s)" % (method, seconds, deadlines)
                  if quick else
                  "%s took %.1fs, not well within %gs (%s): a call past the deadline is "
                  "abandoned, and a Mount or Create finished later is orphaned. Podman's "
                  "deadline is volume_plugin_timeout in containers.conf; check --deadline "
                  "judges against another" % (method, seconds, limit, deadlines))

    def cleanup(self) -> None:
        """Undo our mounts and remove our scratch volumes, whatever happened."""
        self.client.close()  # a one-connection server could not serve the next one
        if not self.mounted and not self.created:
            return
        left = []
        with PluginClient(self.address, timeout=30.0, tls=self.tls) as client:
            for name, mount_id in self.mounted:
                try:
                    client.unmount(name, mount_id)
                except PluginCallError as exc:
                    left.append("unmount %s: %s" % (name, exc))
            for name in self.created:
                try:
                    client.remove(name)
                except PluginCallError as exc:
                    left.append("remove %s: %s" % (name, exc))
        if left:
            self.rule("cleanup", False, "scratch volume left behind: %s" % "; ".join(left))

    # -- helpers --------------------------------------------------------------

    def new_client(self, engine: str = "docker") -> PluginClient:
        return PluginClient(self.address, timeout=self.deadline, engine=engine, tls=self.tls)

    def rule(self, rule: str, passed: "Any", detail: str) -> bool:
        """Record a rule; ``passed`` is True, False, or a status string."""
        status = passed if isinstance(passed, str) else ("pass" if passed else "fail")
        self.results.append(_result(rule, status, detail))
        return status != "fail"

    def call(self, method: str, payload: "Optional[Dict[str, Any]]", client: "Any" = None,
             expect_error: bool = False) -> "Tuple[Dict[str, Any], Optional[str]]":
        """Return the reply object ({} if unusable) and the error the engine would see.

        An error is a non-200 or an ``Err``: Docker fails on either (a 200 +
        ``Err`` is judged apart, by the ``errors`` rule, for Podman's sake).
        """
        client = client or self.client
        started = _monotonic()
        status, raw = client.exchange(method, payload)
        self.calls.append((method, client.engine, status, raw, _monotonic() - started,
                           expect_error))
        reply = _parse_reply(raw)
        if status != 200 or not isinstance(reply, dict):
            err = reply.get("Err") if isinstance(reply, dict) else None
            return {}, ("HTTP %d %s" % (status, err if err else repr(raw[:200])))
        return reply, (str(reply["Err"]) if reply.get("Err") else None)

    def listing_problem(self, names: "List[str]", wanted: bool, client: "Any" = None
                        ) -> "Optional[str]":
        """What is wrong with a List that should (or should no longer) have ``names``."""
        reply, err = self.call("VolumeDriver.List", {}, client)
        listed = [v.get("Name") for v in reply.get("Volumes") or [] if isinstance(v, dict)]
        wrong = [name for name in names if (name in listed) != wanted]
        if err is not None or not wrong:
            return err
        return "List %s %s" % ("lacks" if wanted else "still has", ", ".join(wrong))

    def is_mount_point(self, path: str) -> bool:
        """Whether ``path`` is a mount point here or in the plugin's namespace."""
        views = [path] + ["/proc/%d/root%s" % (pid, path) for pid in self.plugin_pids]
        return self.local and any(os.path.ismount(view) for view in views)

    def mountpoints(self, name: str) -> "Tuple[Any, Any]":
        """What Get and Path say of ``name``'s mountpoint."""
        volume = self.call("VolumeDriver.Get", {"Name": name})[0].get("Volume")
        path = self.call("VolumeDriver.Path", {"Name": name})[0].get("Mountpoint")
        return (volume.get("Mountpoint") if isinstance(volume, dict) else None), path

    def released(self, name: str, path: str, while_mounted: "Tuple[Any, Any]") -> "Optional[str]":
        """How the still-mounted volume ``name`` shows it was released, or None."""
        if self.local and not os.path.isdir(path):
            return "its mountpoint %s is gone" % path
        now = self.mountpoints(name)
        for method, before, after in zip(("Get", "Path"), while_mounted, now):
            if before != after:
                return "%s gives mountpoint %r, %r while mounted" % (method, after, before)
        reply, err = self.call("VolumeDriver.Remove", {"Name": name}, expect_error=True)
        if err is None:
            self.created.remove(name)
            self.mounted = [m for m in self.mounted if m[0] != name]
            return "Remove succeeded while mounted"
        return None

    def unmount_all(self) -> None:
        for volume, mount_id in list(self.mounted):
            if self.call("VolumeDriver.Unmount", {"Name": volume, "ID": mount_id})[1] is None:
                self.mounted.remove((volume, mount_id))


def check_plugin(target: str, options: "Optional[Dict[str, str]]" = None,
                 socket_dir: str = PLUGIN_SOCKET_DIR, spec_dirs: "Iterable[str]" = _PLUGIN_SPEC_DIRS,
                 deadline_share: float = _DEADLINE_SHARE,
                 bad_options: "Optional[Dict[str, str]]" = None,
                 deadline: "Optional[float]" = None,
                 tls: "Optional[Dict[str, Any]]" = None) -> "List[Dict[str, Any]]":
    """Drive a running plugin through Docker's and Podman's call sequences and judge it.

    ``target`` is a plugin name (found as Docker, then Podman, would find
    it) or an address. Works on scratch volumes named
    ``dvp-check-<random>-...``, created with ``options``, and removes them
    even when a rule fails; no other volume is touched. ``bad_options`` are
    options the driver must refuse (that rule is skipped without them).
    Calls are judged against ``deadline`` seconds, by default the tighter of
    Docker's deadline for the call and Podman's 5 s. Returns one
    ``{"rule", "status", "passed", "detail"}`` per rule, ``status`` being
    ``pass``, ``fail``, ``warn`` or ``skip`` (only ``fail`` is not passed); a
    failure's detail says what was seen and what the engines will do because
    of it. ``tls`` takes a spec's TLSConfig keys for an https address; by
    name, the spec's own are used, with the engine's rules.
    """
    lookup = _resolve(target, socket_dir, spec_dirs)
    if lookup.address is None:
        return [_result("reachable", "fail", "; ".join(lookup.problems + lookup.notes))]
    problem = _connect_problem(lookup.address)
    if problem is not None:
        return [_result("reachable", "fail", "; ".join([problem] + lookup.notes))]
    detail = "%s, from %s" % (lookup.address, lookup.source)
    results = [_result("reachable", "pass", "; ".join([detail] + lookup.notes))]
    checker = _Checker(lookup.address, tls if tls is not None else lookup.tls,
                       dict(options or {}), dict(bad_options or {}), deadline_share, deadline)
    return results + checker.run()


def _print_check(results: "List[Dict[str, Any]]", as_json: bool) -> int:
    failed = sum(1 for r in results if not r["passed"])
    if as_json:
        sys.stdout.write(json.dumps({"passed": not failed, "results": results}, indent=2) + "\n")
    else:
        counts = dict((status, 0) for status in ("pass", "fail", "skip", "warn"))
        for r in results:
            counts[r["status"]] += 1
            sys.stdout.write("%s %s: %s\n" % (r["status"].upper(), r["rule"], r["detail"]))
        sys.stdout.write("%(pass)d passed, %(fail)d failed, %(skip)d skipped, %(warn)d warned\n"
                         % counts)
    return 1 if failed else 0

###############################################################################
# Tap: a recording proxy in front of any running plugin #######################
###############################################################################

#: The directory, in the socket directory, where a tap keeps the tapped
#: plugin's socket and its record. The engine never finds NAME there: it
#: looks for NAME.sock and NAME/NAME.sock only (moby pkg/plugins/discovery.go).
_TAP_DIR = ".tap"


class _TapPlugin(Plugin):
    """What the tap's server serves itself: nothing, and it undoes nothing.
    The plugin behind the tap sees the tap hang up when the engine does,
    and undoes its own Mount."""

    @staticmethod
    def undoes(path: str) -> bool:
        return False


class _TapRequestHandler(PluginRequestHandler):
    """Forwards each request to the tapped plugin, on a connection that
    lives as long as the engine's, and the plugin's reply back: the body
    byte for byte, the status as it is."""

    server: "_TapServer"

    def setup(self) -> None:
        PluginRequestHandler.setup(self)
        self._upstream = None  # type: Any

    def finish(self) -> None:
        try:
            PluginRequestHandler.finish(self)
        finally:
            if self._upstream is not None:
                self._upstream.close()  # the plugin sees the engine's hang-up

    def _answer(self, body: bytes) -> "Optional[Tuple[int, bytes, str]]":
        if self._upstream is None:
            self._upstream, _ = _connection_for(self.server.upstream, self.server.upstream_tls)
            self._upstream.timeout = None  # the engine keeps the deadline, as without a tap
        connection = self._upstream
        try:
            connection.putrequest("POST", self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            if not self._plugin_answers_first(connection.sock):
                connection.close()  # so the plugin undoes a Mount nobody waits for
                return None
            response = connection.getresponse()
            reply = response.read()
        except (OSError, http.client.HTTPException) as exc:
            # Hung up on, as the engine is by a plugin that is down: an
            # error reply would be taken for the plugin's answer.
            log.warning("%s: the plugin at %s did not answer: %s", self.path.lstrip("/"),
                        self.server.upstream, _error_text(exc))
            connection.close()
            return None
        return response.status, reply, "ok" if response.status == 200 else "error"

    def _plugin_answers_first(self, upstream: "socket.socket") -> bool:
        """Wait for the plugin's reply; False if the engine hangs up first."""
        watched = [self.connection, upstream]
        while True:
            ready = select.select(watched, [], [])[0]
            if upstream in ready:
                return True
            if self._client_gone():
                return False
            watched = [upstream]  # the engine sent more: wait for the plugin alone


class _TapServer(UnixPluginServer):
    """The tap's socket, forwarding to the plugin at ``upstream``."""

    handler_class = _TapRequestHandler

    def __init__(self, path: str, upstream: str, upstream_tls: "Optional[Dict[str, Any]]",
                 mode: int, gid: int) -> None:
        self.upstream, self.upstream_tls = upstream, upstream_tls
        UnixPluginServer.__init__(self, path, _TapPlugin(), mode=mode, group=gid)


def _tap_paths(name: str, socket_dir: str) -> "Tuple[str, str, str, str]":
    """The engine's socket path for ``name``; where a tap moves the plugin's
    socket; the tap's record; where the tap's socket is made."""
    directory = os.path.join(socket_dir, _TAP_DIR)
    return (os.path.join(socket_dir, name + ".sock"), os.path.join(directory, name + ".sock"),
            os.path.join(directory, name + ".json"), os.path.join(directory, name + ".new.sock"))


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists, and is no zombie."""
    try:
        with open("/proc/%d/stat" % pid) as process:
            return process.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _untap(name: str, socket_dir: str = PLUGIN_SOCKET_DIR) -> "Optional[str]":
    """Put back what a tap of ``name`` changed, as its record says; say what
    was done, or None if no tap was there. Refuses while another tap runs."""
    socket_path, moved, record_path, fresh = _tap_paths(name, socket_dir)
    try:
        record = json.loads(_read_regular(record_path).decode("utf-8"))
        tap_inode = tuple(record["tap_inode"])
        pid = int(record["pid"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("%s is damaged (%s); put %s back by hand" % (record_path, exc, moved))
    if pid != os.getpid() and _is_running(pid):
        raise OSError(errno.EBUSY, "a tap of %s runs already, as pid %d: stop it first"
                      % (name, pid))
    try:
        st = os.lstat(socket_path)
        current = (st.st_dev, st.st_ino)  # type: Optional[Tuple[int, int]]
    except FileNotFoundError:
        current = None
    if os.path.lexists(moved) and current in (tap_inode, None):
        os.rename(moved, socket_path)  # in one step: the engine never finds it missing
        done = "put the plugin's socket back at %s" % socket_path
    elif current == tap_inode:  # behind a spec file: the tap's socket only shadowed it
        os.unlink(socket_path)
        done = "removed the tap's socket %s" % socket_path
    else:  # the plugin made a new socket meanwhile: the one moved aside is stale
        _unlink_quietly(moved)
        done = "left the plugin's new socket %s as it is" % socket_path
    _unlink_quietly(fresh)
    _unlink_quietly(fresh + ".lock")  # _lock_beside()'s, of a tap killed
    os.unlink(record_path)
    try:
        os.rmdir(os.path.dirname(record_path))
    except OSError:  # another plugin's tap runs: its files are there
        pass
    return done


def _tap(name: str, trace: "_Trace", socket_dir: str = PLUGIN_SOCKET_DIR,
         spec_dirs: "Iterable[str]" = _PLUGIN_SPEC_DIRS) -> None:
    """Stand between the engines and the running plugin ``name`` until a
    signal, tracing every call; then put everything back as it was.

    A plugin on ``SOCKET_DIR/NAME.sock`` keeps its listening socket: the
    socket file is moved aside, and the tap's takes its place in one rename.
    A plugin behind a spec file is shadowed by the tap's NAME.sock, which
    the engine looks for first (moby pkg/plugins/discovery.go). A record
    in ``SOCKET_DIR/.tap`` lets the next tap put things back after ``kill
    -9``.
    """
    repaired = _untap(name, socket_dir)
    if repaired:
        log.warning("a tap of %s was not stopped cleanly; %s", name, repaired)
    lookup = find_plugin(name, socket_dir, spec_dirs)
    if lookup.address is None:
        raise ValueError("plugin %r: %s" % (name, "; ".join(lookup.problems)))
    socket_path, moved, record_path, fresh = _tap_paths(name, socket_dir)
    scheme, rest = _address_parts(lookup.address)
    behind_socket = scheme == "unix"
    if behind_socket and rest != socket_path:
        raise ValueError("plugin %r is at %s (%s): a tap stands in front of %s or of a spec "
                         "file's address" % (name, rest, lookup.source, socket_path))
    if behind_socket:
        st = os.stat(socket_path)
        mode, gid, upstream = stat.S_IMODE(st.st_mode), st.st_gid, "unix://" + moved
    else:
        mode, gid, upstream = 0o660, os.getgid(), lookup.address
        # Docker keeps the address it found at a plugin's first use for its
        # lifetime (moby pkg/plugins/plugins.go).
        log.warning("%s is behind %s: an engine that used it already goes on calling %s "
                    "directly, and one that first uses it now goes on calling %s after the "
                    "tap stops; restart such an engine then", name, lookup.source,
                    lookup.address, socket_path)
    with _stopped_by_signals() as stop:
        server = _TapServer(fresh, upstream, lookup.tls, mode, gid)
        try:
            server.observers.append(trace)
            st = os.stat(fresh)
            _write_file_atomically(record_path, _encode_json({
                "pid": os.getpid(), "tap_inode": [st.st_dev, st.st_ino],
                "plugin": lookup.address}), 0o600, durable=False)
            if behind_socket:
                os.link(socket_path, moved)  # the plugin's socket, under a name only we use
            os.rename(fresh, socket_path)  # the engine's next connection reaches the tap
            log.info("tapping %s: %s reaches the tap, which forwards every call to %s",
                     name, socket_path, upstream)
            stop.watch(server)
            server.serve_forever(server.poll_interval)
        finally:
            # Put back first: new connections go straight to the plugin,
            # while those open now finish through the tap.
            _untap(name, socket_dir)
            server.stopping = True
            server.stop()
            trace.close()
    log.info("tap of %s stopped; everything is as it was", name)

###############################################################################
# Command line: serve, mounts, check, tap, plugin-config ######################
###############################################################################

#: The environment variable that sets ``serve --log-level``, for managed
#: plugins: ``docker plugin set`` changes env values, not the entrypoint.
_LOG_LEVEL_VARIABLE = "DVP_LOG_LEVEL"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_PROG = "docker_volume_plugin"  # main() names itself as it was called, where it can
_DEFAULT_ROOT = "/var/lib/docker-volumes"


class _UsageError(Exception):
    pass


def _error_line(message: str, status: int = 1, kind: str = "error") -> int:
    """Say ``PROG: error: message`` on stderr, the form of every command-line
    failure, and return the exit status."""
    sys.stderr.write("%s: %s: %s\n" % (_PROG, kind, message))
    return status


def _load_driver(spec: str, options: "Optional[Dict[str, str]]" = None) -> "Any":
    """Load ``MODULE:ATTR`` (a module name or a .py path); call ATTR if it is a
    factory, with ``options`` (from ``--driver-opt``) as keyword arguments."""
    import importlib
    import importlib.util
    module_ref, sep, attr = spec.rpartition(":")
    if not sep or not module_ref or not attr:
        raise _UsageError("--driver %r: expected MODULE:ATTR, e.g. mydriver:Driver" % spec)
    try:
        if module_ref.endswith(".py") or os.sep in module_ref:
            module_name = os.path.splitext(os.path.basename(module_ref))[0]
            module_spec = importlib.util.spec_from_file_location(module_name, module_ref)
            if module_spec is None or module_spec.loader is None or not os.path.isfile(module_ref):
                raise ImportError("no such file: %s" % module_ref)
            # Its own imports find the modules beside it, as when run as a
            # script: so nobody else may write there, or they run as root.
            directory = os.path.dirname(os.path.abspath(module_ref))
            unsafe = _unsafe_directory(directory)
            if unsafe is not None:
                raise _UsageError("--driver %r: refusing to import from %s: %s. Keep the driver "
                                  "in a directory only root can write" % (spec, directory, unsafe))
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            sys.path.insert(0, directory)
            module_spec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            if cwd not in sys.path and "" not in sys.path and _unsafe_directory(cwd) is None:
                sys.path.insert(0, cwd)  # as `python -m` does; never a directory others write
            module = importlib.import_module(module_ref)
    except _UsageError:
        raise
    except Exception as exc:
        raise _UsageError("--driver %r: cannot import %s: %s" % (spec, module_ref, _error_text(exc)))
    target = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _UsageError("--driver %r: %s has no attribute %r" % (spec, module_ref, part))
    if all(callable(getattr(target, m, None)) for m in _REQUIRED_METHODS) and not isinstance(target, type):
        if options:
            raise _UsageError("--driver %r is a driver object: it takes no --driver-opt" % spec)
        return target
    if not callable(target):
        raise _UsageError("--driver %r: %r is neither a driver nor a factory" % (spec, target))
    try:
        return target(**(options or {}))
    except TypeError as exc:
        raise _UsageError("--driver %r: %s" % (spec, exc))
    except Exception as exc:
        raise _UsageError("--driver %r: creating the driver failed: %s" % (spec, _error_text(exc)))


def _parse_tcp(value: str) -> "Tuple[str, int]":
    import argparse
    host, sep, port = value.rpartition(":")
    if not sep or not _DIGITS.match(port) or len(port) > 5 or int(port) > 65535:
        raise argparse.ArgumentTypeError("%r: expected HOST:PORT, e.g. 127.0.0.1:8080" % value)
    return host.strip("[]") or "127.0.0.1", int(port)


def _limit(value: str) -> "Tuple[str, Any]":
    """A ``--limit NAME=VALUE``: a server limit, of the type of its default."""
    import argparse
    name, _, text = value.partition("=")
    if name not in _LIMITS:
        raise argparse.ArgumentTypeError("%r: expected NAME=VALUE, NAME one of %s"
                                         % (value, ", ".join(_LIMITS)))
    kind = type(getattr(_PluginServerMixin, name))
    try:
        number = kind(text)
    except ValueError:
        number = 0
    if not 0 < number < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError("%r: expected a positive %s" % (
            value, "whole number" if kind is int else "number of seconds"))
    return name, number


def _plugin_name(value: str) -> str:
    """A plugin name: the engine finds NAME.sock in its plugin directory."""
    import argparse
    if not _VOLUME_NAME.match(value) or len(value) > 64:
        raise argparse.ArgumentTypeError(
            "%r: a plugin name is 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (the engine looks for NAME.sock)" % value)
    return value


def _build_parser() -> "Any":
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> "NoReturn":  # one clear line, not usage + traceback
            raise _UsageError(message)

    parser = Parser(prog=_PROG, description="Docker volume plugins in one standard-library file.")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True  # add_subparsers(required=) is Python 3.7+
    serve_parser = commands.add_parser(
        "serve",
        help="run a volume plugin (the built-in directory driver unless --driver)",
        description="Run a volume plugin until SIGTERM or SIGINT. Without --driver it serves "
                    "the built-in directory driver: one directory per volume under --root, "
                    "options uid, gid and mode.")
    serve_parser.add_argument("--name", default="dirs",
                              type=_plugin_name,
                              help="plugin name, as in `docker volume create -d NAME` "
                                   "(default: %(default)s)")
    serve_parser.add_argument("--root",
                              help="directory that holds the volumes (built-in driver; "
                                   "default: %s)" % _DEFAULT_ROOT)
    serve_parser.add_argument("--run-dir", metavar="DIR",
                              help="where the built-in driver keeps its mount counts (default: "
                                   "a directory of its own under /run)")
    serve_parser.add_argument("--socket", metavar="PATH",
                              help="Unix socket to listen on (default: %s/NAME.sock)"
                                   % PLUGIN_SOCKET_DIR)
    serve_parser.add_argument("--tcp", metavar="HOST:PORT", type=_parse_tcp,
                              help="listen on TCP instead and write SPEC_DIR/NAME.spec")
    serve_parser.add_argument("--spec-dir", default=PLUGIN_SPEC_DIR,
                              help="where --tcp writes its .spec (or, with TLS, .json) file "
                                   "(default: %(default)s)")
    serve_parser.add_argument("--scope", choices=_SCOPES,
                              help="the Scope announced to the engine (default: the driver's; "
                                   "the built-in one's is local). global: the storage is shared "
                                   "by every node, such as a root on a shared file system; the "
                                   "built-in driver then keeps its state there for all nodes")
    serve_parser.add_argument("--insecure-tcp", action="store_true",
                              help="allow plain TCP on an address other than loopback")
    for flag, what in (("--tls-cert", "the plugin's certificate (PEM): serve HTTPS"),
                       ("--tls-key", "its private key"),
                       ("--tls-ca", "the CA that signs the plugin's and the engine's "
                                    "certificates: clients must present one it signed, and the "
                                    "spec makes the engine verify the plugin with it"),
                       ("--tls-client-cert", "the certificate the engine presents (the "
                                             "spec's CertFile)"),
                       ("--tls-client-key", "its key (the spec's KeyFile)")):
        serve_parser.add_argument(flag, metavar="FILE", help=what)
    serve_parser.add_argument("--group", help="group (name or gid) given access to the socket")
    serve_parser.add_argument("--log-level", default=os.environ.get(_LOG_LEVEL_VARIABLE, "INFO"),
                              type=str.upper, choices=_LOG_LEVELS,
                              help="DEBUG also logs the engine's constant Get/List polling "
                                   "(default: $%s, else INFO)" % _LOG_LEVEL_VARIABLE)
    serve_parser.add_argument("--driver", metavar="MODULE:ATTR",
                              help="serve your own driver: a driver object, class or factory "
                                   "from an importable module or a .py file")
    serve_parser.add_argument("--driver-opt", action="append", default=[], metavar="KEY=VALUE",
                              help="a keyword argument for the --driver class or factory "
                                   "(repeatable)")
    serve_parser.add_argument("--limit", action="append", default=[], type=_limit,
                              metavar="NAME=VALUE",
                              help="a server limit, such as request_timeout=30 (repeatable): "
                                   + ", ".join(_LIMITS))
    serve_parser.add_argument("--metrics", metavar="HOST:PORT", type=_parse_tcp,
                              help="serve Prometheus metrics at http://HOST:PORT/metrics "
                                   "(loopback unless --insecure-tcp)")
    serve_parser.add_argument("--metrics-file", metavar="PATH",
                              help="write the same metrics to PATH (*.prom) every %gs, for "
                                   "node_exporter's textfile collector" % _MetricsFile.interval)
    serve_parser.add_argument("--trace", metavar="FILE",
                              help="write a JSON line per call to FILE; SIGUSR2 stops and "
                                   "starts it (default FILE: %s/NAME.trace)" % _RUN_DIR)
    mounts_parser = commands.add_parser(
        "mounts", help="show each volume's mounts; release a mount no engine will release",
        description="Show the mounts the plugin counts for each volume, by mount ID. With "
                    "--release, unmount the mounts of one volume through the running plugin "
                    "that can be proved unused: left by a container that stopped while the "
                    "plugin was down, or that died with a crashed engine, which keeps the "
                    "volume from being removed until a reboot. A Docker mount is proved "
                    "unused by the local Docker (DOCKER_HOST) when one of its stopped "
                    "containers holds that mount ID; a Podman mount (Podman's fixed mount ID) "
                    "by podman, when none of its running containers uses the volume. Any "
                    "other mount only with --force. With --node, the mounts a node of a "
                    "shared root counted, once that node is gone: with --force only.")
    state = mounts_parser.add_mutually_exclusive_group()
    state.add_argument("--root", default=_DEFAULT_ROOT,
                       help="the built-in driver's root (default: %(default)s)")
    state.add_argument("--state-dir", help="the state_dir of a Driver subclass")
    mounts_parser.add_argument("--run-dir", metavar="DIR",
                               help="its run_dir, if the plugin was given one")
    mounts_parser.add_argument("--release", metavar="VOLUME", help="unmount all of its mounts")
    mounts_parser.add_argument("--plugin", default="dirs", metavar="NAME_OR_ADDRESS",
                               help="the running plugin to release through (default: "
                                    "%(default)s)")
    mounts_parser.add_argument("--node", metavar="HOSTNAME",
                               help="a shared root: that node's mounts (default: this host's)")
    mounts_parser.add_argument("--force", action="store_true",
                               help="release mounts that cannot be proved unused")
    check_parser = commands.add_parser(
        "check",
        help="test a running plugin the way the engine uses it",
        description="Drive a running plugin through the calls the engine makes, on scratch "
                    "volumes it removes afterwards, and judge every reply. Exits 0 only when "
                    "every rule passes. When the plugin cannot be reached, says why in the "
                    "engine's terms.")
    check_parser.add_argument("target", metavar="NAME_OR_ADDRESS",
                              help="plugin name (found as the engine finds it) or an address: "
                                   "unix:///path, a socket path, tcp://host:port, http(s)://")
    check_parser.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE",
                              help="option for the scratch volumes' Create (repeatable)")
    check_parser.add_argument("--bad-opt", action="append", default=[], metavar="KEY=VALUE",
                              help="an option the driver must refuse (repeatable); without it "
                                   "that rule is skipped")
    check_parser.add_argument("--deadline", type=float, metavar="SECONDS",
                              help="judge every call against this deadline (default: Podman's "
                                   "%gs, or Docker's own where that is shorter)" % _PODMAN_DEADLINE)
    check_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    for flag, key in (("--tls-ca", "CAFile"), ("--tls-cert", "CertFile"), ("--tls-key", "KeyFile")):
        check_parser.add_argument(flag, metavar="FILE", help="for an https address: the %s of "
                                  "a spec's TLSConfig (by name, the spec's own are used)" % key)
    check_parser.add_argument("--socket-dir", default=PLUGIN_SOCKET_DIR,
                              help="where to look for NAME.sock (default: %(default)s)")
    check_parser.add_argument("--spec-dir", action="append", dest="spec_dirs", metavar="DIR",
                              help="where to look for NAME.spec and NAME.json, in order; "
                                   "repeatable (default: %s)" % " then ".join(_PLUGIN_SPEC_DIRS))
    tap_parser = commands.add_parser(
        "tap", help="trace the calls between the engines and a running plugin, any plugin",
        description="Stand between the engines and a running plugin, ours or not, found by "
                    "NAME as the engine finds it (a socket, or a spec file's address), "
                    "without restarting it: forward every call and write a JSON line for "
                    "each, until SIGTERM or SIGINT, then put everything back as it was. "
                    "Connections the engines opened before the tap go straight to the "
                    "plugin still: restart the engine, or the plugin, to see them. After "
                    "kill -9 of a tap, the next tap (or --restore) puts things back.")
    tap_parser.add_argument("name", metavar="NAME", type=_plugin_name,
                            help="the plugin's name, as in `docker volume create -d NAME`")
    tap_parser.add_argument("--trace", metavar="FILE",
                            help="where the JSON lines go (default: standard output)")
    tap_parser.add_argument("--restore", action="store_true",
                            help="only put back what a tap that was killed left")
    tap_parser.add_argument("--socket-dir", default=PLUGIN_SOCKET_DIR,
                            help="the engine's socket directory (default: %(default)s)")
    tap_parser.add_argument("--spec-dir", action="append", dest="spec_dirs", metavar="DIR",
                            help="where to look for NAME.spec and NAME.json, in order; "
                                 "repeatable (default: %s)" % " then ".join(_PLUGIN_SPEC_DIRS))
    tap_parser.add_argument("--log-level", default="INFO", type=str.upper, choices=_LOG_LEVELS,
                            help="the tap's own log, on stderr (default: %(default)s)")
    config_parser = commands.add_parser(
        "plugin-config", help="print the config.json of a managed plugin",
        description="Print the config.json that `docker plugin create` takes with a rootfs "
                    "(examples/managed/build.sh makes both). The plugin runs this file from "
                    "the rootfs's /plugin with its Python, serving the built-in driver with "
                    "its volumes and state under the propagated mount, or --driver. "
                    "`docker plugin set` changes the driver's arguments (args) and %s."
                    % _LOG_LEVEL_VARIABLE)
    config_parser.add_argument("--name", default="dirs", type=_plugin_name,
                               help="the socket's name inside the plugin, NAME.sock (the "
                                    "engine's name for the plugin is given at `docker plugin "
                                    "create`; default: %(default)s)")
    config_parser.add_argument("--driver", metavar="MODULE:ATTR",
                               help="your driver, as `serve --driver` takes it, a path inside "
                                    "the plugin (such as /plugin/mydriver.py:Driver)")
    config_parser.add_argument("--driver-opt", action="append", default=[], metavar="KEY=VALUE",
                               help="its keyword arguments, settable as args (repeatable)")
    config_parser.add_argument("--propagated-mount", default="/mnt/volumes", metavar="DIR",
                               help="where the plugin keeps what containers mount; Docker "
                                    "shows the engine only what is under it (default: "
                                    "%(default)s)")
    config_parser.add_argument("--python", default="/usr/bin/python3", metavar="PATH",
                               help="the Python inside the plugin (default: %(default)s)")
    config_parser.add_argument("--capability", action="append", default=[], metavar="CAP",
                               help="a Linux capability the driver needs beyond Docker's "
                                    "defaults, such as CAP_SYS_ADMIN to mount (repeatable)")
    config_parser.add_argument("--mount", action="append", default=[],
                               metavar="SOURCE:DESTINATION",
                               help="a host path bind-mounted into the plugin (repeatable)")
    config_parser.add_argument("--device", action="append", default=[], metavar="PATH",
                               help="a host device given to the plugin (repeatable)")
    config_parser.add_argument("--host-network", action="store_true",
                               help="share the host's network (a driver that reaches a "
                                    "server); by default the plugin has none")
    config_parser.add_argument("--log-level", default="INFO", type=str.upper,
                               choices=_LOG_LEVELS, help="the initial %s (default: %%(default)s)"
                               % _LOG_LEVEL_VARIABLE)
    config_parser.add_argument("--description", help="the plugin's description")
    return parser


def _key_values(items: "List[str]", flag: str) -> "Dict[str, str]":
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError("%s %r: expected KEY=VALUE" % (flag, item))
        options[key] = value
    return options


def _plugin_config(args: "Any") -> "Dict[str, Any]":
    """The config.json of a managed plugin (moby api/types/plugin.go,
    PluginConfig; what Docker does with each field: plugin/v2/plugin_linux.go)."""
    mount = os.path.normpath(args.propagated_mount)
    if not os.path.isabs(mount) or mount == "/":
        raise _UsageError("--propagated-mount %r: expected an absolute path below /" % mount)
    socket_name = args.name + ".sock"
    # The image's own ENTRYPOINT and ENV are ignored: the argv and the
    # environment are all here. The plugin's socket directory is the host's
    # /run/docker/plugins/ID, bound at /run/docker/plugins. No Plugin.Activate
    # comes: Docker only connects to the socket (moby plugin/manager_linux.go).
    entrypoint = [args.python, "-m", "docker_volume_plugin", "serve", "--name", args.name,
                  "--socket", "%s/%s" % (PLUGIN_SOCKET_DIR, socket_name)]
    if args.driver:
        entrypoint += ["--driver", args.driver]
        settable = []  # type: List[str]
        for key, value in sorted(_key_values(args.driver_opt, "--driver-opt").items()):
            if " " in key + value:
                raise _UsageError("--driver-opt %s=%s: docker plugin set splits args at spaces"
                                  % (key, value))
            settable += ["--driver-opt", "%s=%s" % (key, value)]
        what = "driver %s" % args.driver
    else:
        if args.driver_opt:
            raise _UsageError("--driver-opt goes with --driver")
        # Volumes, records and mount counts all under the propagated mount,
        # which Docker keeps across disable, enable and upgrade; the rootfs
        # is replaced by an upgrade.
        entrypoint += ["--run-dir", os.path.join(mount, _MANAGED_RUN_DIR)]
        settable = ["--root", mount]
        what = "the built-in directory driver"
    mounts = []
    for item in args.mount:
        source, sep, destination = item.partition(":")
        if not sep or not os.path.isabs(source) or not os.path.isabs(destination):
            raise _UsageError("--mount %r: expected SOURCE:DESTINATION, both absolute" % item)
        mounts.append({"name": os.path.basename(destination) or "root", "source": source,
                       "destination": destination, "type": "bind",
                       "options": ["rbind", "rw"], "settable": ["source"]})
    return {
        "description": args.description or "docker-volume-plugin %s: %s" % (__version__, what),
        "documentation": "",
        "entrypoint": entrypoint,
        "workdir": "/plugin",
        "args": {"name": "args", "description": "the driver's command-line arguments",
                 "settable": ["value"], "value": settable},
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"},
                {"name": _PROPAGATED_MOUNT_VARIABLE, "value": mount},
                {"name": _LOG_LEVEL_VARIABLE, "description": " ".join(_LOG_LEVELS),
                 "settable": ["value"], "value": args.log_level}],
        "interface": {"types": ["docker.volumedriver/1.0"], "socket": socket_name},
        "network": {"type": "host" if args.host_network else ""},
        "mounts": mounts,
        "propagatedMount": mount,
        "linux": {"capabilities": sorted(set(c.upper() for c in args.capability)),
                  "allowAllDevices": False,
                  "devices": [{"path": path} for path in args.device]},
    }


def _plugin_config_command(args: "Any") -> int:
    sys.stdout.write(json.dumps(_plugin_config(args), indent=2) + "\n")
    return 0


#: The mount ID Podman sends with every Mount and Unmount, whichever
#: container: the SHA-256 of "placeholder\n" (libpod/volume_internal_linux.go
#: ``pseudoCtrID``). Podman counts its containers itself.
_PODMAN_MOUNT_ID = "2f73349cfc4630255319c6c8dfc1b46a8996ace9d14d8e07563b165915918ec2"


def _docker_api(path: str) -> "Any":
    """A GET of the local Docker's API (``DOCKER_HOST``, a Unix socket); None
    if it cannot be asked."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        return None
    connection = _UnixHTTPConnection(host[len("unix://"):])
    connection.timeout = 10
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        reply = json.loads(response.read().decode("utf-8"))
        return reply if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _containers_using(volume: str) -> "Optional[List[str]]":
    """Docker's running containers that use ``volume``; None if Docker cannot be asked."""
    import urllib.parse
    containers = _docker_api("/containers/json?filters=" +
                             urllib.parse.quote(json.dumps({"volume": [volume]})))
    try:
        return None if containers is None else [c["Names"][0].lstrip("/") for c in containers]
    except (TypeError, KeyError, IndexError, AttributeError):
        return None


def _docker_mount_ids(volume: str) -> "Optional[Dict[str, str]]":
    """The mount IDs of ``volume`` that the local Docker's containers hold,
    each with its container's name; None if that cannot be read.

    A container keeps the ID of each plugin mount while it is mounted, and
    still after a failed Unmount, when it is stopped (moby volume/mounts/
    mounts.go ``Cleanup``); the API does not show it, the container's
    ``config.v2.json`` under Docker's root directory does.
    """
    info = _docker_api("/info")
    root = info.get("DockerRootDir") if isinstance(info, dict) else None
    if not isinstance(root, str):
        return None
    directory = os.path.join(root, "containers")
    try:
        entries = os.listdir(directory)
    except OSError:
        return None  # another host's, or another mount namespace's
    held = {}  # type: Dict[str, str]
    for entry in entries:
        try:
            config = json.loads(_read_regular(os.path.join(directory, entry, "config.v2.json")))
            for point in (config.get("MountPoints") or {}).values():
                if point.get("Name") == volume and point.get("ID"):
                    held[point["ID"]] = str(config.get("Name", entry)).lstrip("/")
        except (OSError, ValueError, AttributeError):
            continue  # removed meanwhile, or not a container
    return held


def _podman_containers_using(volume: str) -> "Optional[List[str]]":
    """Podman's running containers that use ``volume``; None if podman cannot be asked."""
    import subprocess  # only this command needs it
    try:
        result = subprocess.run(["podman", "ps", "--filter", "volume=" + volume, "--format",
                                 "{{.Names}}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                universal_newlines=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.split() if result.returncode == 0 else None


def _why_not_released(volume: str, mount_id: str, docker_ids: "Optional[Dict[str, str]]"
                      ) -> "Tuple[Optional[str], str]":
    """Why a mount of ``volume`` cannot be proved unused (or None), and what
    proves it; asked once Docker has said that none of its running
    containers uses the volume."""
    if mount_id == _PODMAN_MOUNT_ID:
        podman = _podman_containers_using(volume)
        if podman is None:
            return "a Podman mount, and podman cannot be asked", ""
        if podman:
            return "Podman's running container(s) %s use it" % ", ".join(podman), ""
        return None, "Podman runs no container that uses it"
    if docker_ids is None:
        return "Docker cannot be asked which container holds it (is DOCKER_HOST set?)", ""
    holder = docker_ids.get(mount_id)
    if holder is None:
        return ("no container of this Docker holds it: another engine's (a second Docker, "
                "another host), or its container was removed"), ""
    return None, "Docker's container %s holds it and has stopped" % holder


def _release_gone_node(args: "Any", state_dir: str, run_dir: str, counts: "Dict[str, int]"
                       ) -> int:
    """Forget the mounts a node of a shared root counted, once it is gone."""
    name = args.release
    if not args.force:
        return _error_line("node %s's engine cannot be asked from here whether a container "
                           "uses volume %s; once that node is gone for good, add --force"
                           % (args.node, name), kind="refusing")
    try:
        fd = _hold_lock(os.path.join(run_dir, "lock"), "node %s's plugin is running (it holds "
                        "%s): release its mounts there" % (args.node, os.path.join(run_dir,
                                                                                     "lock")))
    except OSError as exc:
        return _error_line(str(exc), kind="refusing")
    try:
        os.unlink(os.path.join(run_dir, name + ".json"))
    finally:
        _release_lock(os.path.join(run_dir, "lock"), fd)
    for mount_id, count in sorted(counts.items()):
        sys.stdout.write("released mount %s (%d) of volume %s: node %s is gone (--force)\n"
                         % (mount_id, count, name, args.node))
    sys.stdout.write("released %d mount(s) of volume %s on node %s\n"
                     % (sum(counts.values()), name, args.node))
    return 0


def _mounts_command(args: "Any") -> int:
    state_dir = os.path.realpath(args.state_dir or os.path.join(args.root, _STATE_DIR))
    shared = os.path.isdir(os.path.join(state_dir, _NODES_DIR))
    if args.node and not shared:
        raise _UsageError("--node: %s is not a shared root (scope global)" % state_dir)
    if args.run_dir:
        run_dir = args.run_dir
    elif shared:  # this node's, or the one asked for
        node = args.node or socket.gethostname()
        if not _VOLUME_NAME.match(node):
            raise _UsageError("--node: %.100r is not a host name" % node)
        run_dir = _node_run_dir(state_dir, node)
    else:
        run_dir = _default_run_dir(state_dir)
    if not os.path.isdir(state_dir):
        raise _UsageError("no volume state in %s" % state_dir)
    mounts, pending = {}, set()
    for entry in sorted(os.listdir(state_dir)):
        if entry.endswith(".json"):
            name = entry[:-len(".json")]
            path = os.path.join(run_dir, entry)
            state = _read_json(path, "mount count file") if os.path.exists(path) else {}
            mounts[name] = state.get("mounts") or {}
            if state.get("pending"):
                pending.add(name)
    if not args.release:
        # Who holds a counted mount, as far as the local Docker can say: a
        # mount no running container uses was left by a crash, or by a
        # container that stopped while the plugin was down.
        sys.stdout.write("%-40s %6s  %-24s %s\n" % ("VOLUME", "MOUNTS", "DOCKER'S CONTAINERS",
                                                    "MOUNT IDS"))
        for name, counts in mounts.items():
            users = _containers_using(name) if counts else []
            holders = ("-" if not counts else "cannot ask" if users is None else
                       ",".join(users) if users else "none: stale?")
            ids = ["%s(%d)" % item for item in sorted(counts.items())]
            if name in pending:
                ids.append("(detach pending)")
            sys.stdout.write("%-40s %6d  %-24s %s\n" % (name, sum(counts.values()), holders,
                                                        " ".join(ids)))
        return 0
    name = args.release
    if name not in mounts:
        raise _UsageError("no volume %r in %s" % (name, state_dir))
    if not mounts[name]:
        sys.stdout.write("volume %s has no mounts\n" % name)
        return 0
    if args.node and args.node != socket.gethostname():
        return _release_gone_node(args, state_dir, run_dir, mounts[name])
    users = _containers_using(name)
    if users:
        return _error_line("Docker's running container(s) %s use volume %s; stop them instead"
                           % (", ".join(users), name), kind="refusing")
    docker_ids = _docker_mount_ids(name)
    released, kept = 0, 0
    with PluginClient(args.plugin, timeout=60) as client:
        for mount_id, count in sorted(mounts[name].items()):
            why_not, proof = _why_not_released(name, mount_id, docker_ids)
            if why_not is not None and not args.force:
                _error_line("mount %s (%d) of volume %s: %s; make sure no container uses it, "
                            "then add --force" % (mount_id, count, name, why_not),
                            kind="keeping")
                kept += count
                continue
            for _ in range(count):
                client.unmount(name, mount_id)
            released += count
            sys.stdout.write("released mount %s (%d) of volume %s: %s\n" % (
                mount_id, count, name, proof or "--force (%s)" % why_not))
    sys.stdout.write("released %d mount(s) of volume %s%s\n" % (
        released, name, ", kept %d" % kept if kept else ""))
    elsewhere = _nodes_mounting(state_dir, run_dir, name) if shared else []
    if elsewhere:  # a remove is refused until they go too
        _error_line("volume %s is still mounted on node(s) %s: release there, or with --node "
                    "once a node is gone" % (name, ", ".join(elsewhere)), kind="note")
    return 1 if kept else 0


def _tls_arguments(args: "Any") -> "Tuple[Any, Optional[Dict[str, str]]]":
    """The server's TLS context and the spec's TLSConfig from the --tls-* options."""
    given = [f for f in ("tls_cert", "tls_key", "tls_ca", "tls_client_cert", "tls_client_key")
             if getattr(args, f)]
    if not given:
        return None, None
    if args.tcp is None:
        raise _UsageError("--tls-* options go with --tcp")
    if not (args.tls_cert and args.tls_key):
        raise _UsageError("TLS needs both --tls-cert and --tls-key")
    if bool(args.tls_client_cert) != bool(args.tls_client_key):
        raise _UsageError("--tls-client-cert and --tls-client-key go together")
    if args.tls_ca and not args.tls_client_cert:
        raise _UsageError("--tls-ca requires client certificates: give the engine one with "
                          "--tls-client-cert and --tls-client-key")
    spec_tls = {}
    for key, path in (("CAFile", args.tls_ca), ("CertFile", args.tls_client_cert),
                      ("KeyFile", args.tls_client_key)):
        if path:
            spec_tls[key] = os.path.abspath(path)
    return server_tls_context(args.tls_cert, args.tls_key, args.tls_ca), spec_tls or None


def _check_command(args: "Any") -> int:
    if args.deadline is not None and not args.deadline > 0:
        raise _UsageError("--deadline %r: expected a number of seconds above 0" % args.deadline)
    tls = dict((key, path) for key, path in (("CAFile", args.tls_ca), ("CertFile", args.tls_cert),
                                             ("KeyFile", args.tls_key)) if path) or None
    results = check_plugin(args.target, _key_values(args.opt, "-o"), args.socket_dir,
                           args.spec_dirs or _PLUGIN_SPEC_DIRS,
                           bad_options=_key_values(args.bad_opt, "--bad-opt"),
                           deadline=args.deadline, tls=tls)
    return _print_check(results, args.json)


def _tap_command(args: "Any") -> int:
    _configure_logging(args.log_level)
    if args.restore:
        done = _untap(args.name, args.socket_dir)
        print(done or "no tap of %s to put back" % args.name)
        return 0
    trace = _Trace(args.trace, _has_secret_word, stream=None if args.trace else sys.stdout)
    _tap(args.name, trace, args.socket_dir, args.spec_dirs or _PLUGIN_SPEC_DIRS)
    return 0


def main(argv: "Optional[List[str]]" = None) -> int:
    """The command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    global _PROG
    if os.path.basename(sys.argv[0]) == "docker-volume-plugin":  # the console script
        _PROG = "docker-volume-plugin"
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _error_line("%s (see --help)" % exc, 2)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    commands = {"check": _check_command, "mounts": _mounts_command,
                "plugin-config": _plugin_config_command, "tap": _tap_command}
    if args.command in commands:
        try:
            return commands[args.command](args)
        except _UsageError as exc:
            return _error_line("%s (see --help)" % exc, 2)
        except (PluginCallError, OSError, ValueError) as exc:
            return _error_line(_error_text(exc))
    if args.log_level not in _LOG_LEVELS:
        return _error_line("%s=%r: expected one of %s" % (
            _LOG_LEVEL_VARIABLE, args.log_level, ", ".join(_LOG_LEVELS)), 2)
    _configure_logging(args.log_level)
    driver = None  # type: Any
    try:
        # Every option is checked before the driver makes its root.
        tls_context, spec_tls = _tls_arguments(args)
        if args.tcp is not None:
            _refuse_plain_tcp(args.tcp, tls_context, args.insecure_tcp)
        if args.driver:
            for flag, value in (("--run-dir", args.run_dir), ("--root", args.root)):
                if value:
                    raise _UsageError("%s is the built-in driver's; give your driver its own "
                                      "with --driver-opt" % flag)
            driver = _load_driver(args.driver, _key_values(args.driver_opt, "--driver-opt"))
            if args.scope == "global" and isinstance(driver, Driver) and not driver.shared:
                raise _UsageError(
                    "--scope global: %s keeps its state per node, and every node would count "
                    "its own mounts of storage they all share. Give the class scope = "
                    "'global' (or pass it shared=True), which shares its state too"
                    % type(driver).__name__)
        else:
            if args.driver_opt:
                raise _UsageError("--driver-opt goes with --driver")
            # Global: the root is shared by every node, and so is the state.
            driver = DirectoryDriver(args.root or _DEFAULT_ROOT, args.run_dir,
                                     shared=args.scope == "global")
        serve(driver, name=args.name, socket_path=args.socket, tcp_address=args.tcp,
              spec_dir=args.spec_dir, group=args.group, tls_context=tls_context,
              spec_tls=spec_tls, insecure_tcp=args.insecure_tcp, scope=args.scope,
              metrics_address=args.metrics, metrics_file=args.metrics_file, trace=args.trace,
              **dict(args.limit))
    except _UsageError as exc:
        return _error_line("%s (see --help)" % exc, 2)
    except (OSError, ValueError, TypeError, PluginError) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            message = exc.strerror if exc.filename is None else "%s: %s" % (exc.strerror, exc.filename)
        else:
            message = str(exc) or type(exc).__name__
        return _error_line(message)
    finally:
        if callable(getattr(driver, "close", None)):
            driver.close()
    return 0


if __name__ == "__main__":
    # Run as a script, this module is __main__: let `import docker_volume_plugin`
    # in a --driver module find this copy, so its PluginError is ours.
    sys.modules.setdefault("docker_volume_plugin", sys.modules[__name__])
    sys.exit(main())
