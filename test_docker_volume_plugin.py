"""Tests for docker_volume_plugin: standard-library unittest only.

Run: python3 -m unittest -v test_docker_volume_plugin

The EngineTests class drives a real Docker engine through the docker CLI. It
runs when DOCKER_HOST points at an engine (see .ci/engine); with
DVP_ENGINE_TESTS=require (as in CI) a missing engine is a failure, not a skip.
"""

import contextlib
import datetime
import errno
import fcntl
import glob
import http.client
import importlib.util
import io
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import unittest.mock

import docker_volume_plugin as dvp

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = os.path.join(HERE, "docker_volume_plugin.py")
MOUNT_ID = "a" * 64
MOUNT_ID2 = "b" * 64
#: For the plugins the tests start: a stop by signal waits for the accept
#: loop to look, every poll_interval (0.5 s by default).
QUICK_STOP = ("--limit", "poll_interval=0.02")


class MemoryDriver(object):
    """A fake driver that keeps volumes in memory and counts calls."""

    def __init__(self):
        self.volumes = {}
        self.calls = {}
        self.mount_gate = None  # an Event that mount() waits for, when set

    def _count(self, method):
        self.calls[method] = self.calls.get(method, 0) + 1

    def create(self, name, options):
        self._count("create")
        self.volumes[name] = {"Name": name, "Mountpoint": "/mnt/" + name,
                              "CreatedAt": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
                              "Status": {"options": options}}

    def remove(self, name):
        self._count("remove")
        if self.volumes.pop(name, None) is None:
            raise dvp.VolumeNotFound("no such volume")

    def mount(self, name, mount_id):
        self._count("mount")
        if self.mount_gate is not None:
            self.mount_gate.wait(10)
        return self.volumes[name]["Mountpoint"]

    def unmount(self, name, mount_id):
        self._count("unmount")

    def get(self, name):
        self._count("get")
        return self.volumes.get(name)

    def list(self):
        self._count("list")
        return list(self.volumes.values())


def raising(exc):
    """A driver method that fails with ``exc``, whatever it is called with."""
    def fail(*args):
        raise exc
    return fail


_RUN_DIRS_BEFORE = set()


def _run_dirs():
    base = os.path.dirname(dvp._default_run_dir("/"))
    return base, set(os.listdir(base)) if os.path.isdir(base) else set()


_POLL_INTERVALS = {}


def setUpModule():
    _RUN_DIRS_BEFORE.update(_run_dirs()[1])
    # The servers the tests start and stop stop within 10 ms, not 0.5 s.
    for server_class in (dvp.UnixPluginServer, dvp.TCPPluginServer):
        _POLL_INTERVALS[server_class] = server_class.poll_interval
        server_class.poll_interval = 0.01


def tearDownModule():
    """Remove the boot-scoped mount counts the tests' drivers left under /run."""
    for server_class, interval in _POLL_INTERVALS.items():
        server_class.poll_interval = interval
    base, now = _run_dirs()
    for entry in now - _RUN_DIRS_BEFORE:
        # Never one whose lock is held: a plugin still serves it (another
        # test run's, or a real one started meanwhile).
        try:
            fd = os.open(os.path.join(base, entry, "lock"), os.O_RDONLY)
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(os.path.join(base, entry), True)
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)


def temp_dir(test, prefix="dvp", where=None):
    """A temporary directory that the test's cleanup removes."""
    path = tempfile.mkdtemp(prefix=prefix, dir=where)
    test.addCleanup(shutil.rmtree, path, True)
    return path


def _parse_responses(raw):
    """Split raw HTTP bytes into [(status, headers, body object)]."""
    replies = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if status == 100:  # Continue: no headers, no body
            raw = rest
            continue
        headers = dict((k.lower(), v.strip()) for k, _, v in (l.partition(":") for l in lines[1:]))
        length = int(headers["content-length"])
        replies.append((status, headers, json.loads(rest[:length].decode("utf-8"))))
        raw = rest[length:]
    return replies


def _exchange_raw(path, data, read_timeout=5.0):
    """Send raw bytes on a fresh connection; return one reply, or b"" if it closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(read_timeout)
    sock.connect(path)
    try:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading it all
        received = b""
        while True:
            head, _, body = received.partition(b"\r\n\r\n")
            match = re.search(br"Content-Length: (\d+)", head)
            if match and len(body) >= int(match.group(1)):
                return received
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    finally:
        sock.close()


def _docker_request(method, body=b"", host=b""):
    """A request exactly as the 20.10 engine writes it (moby pkg/plugins/transport/transport.go)."""
    return (b"POST /" + method.encode() + b" HTTP/1.1\r\nHost: " + host +
            b"\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: " + str(len(body)).encode() +
            b"\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n"
            b"Accept-Encoding: gzip\r\n\r\n" + body)


class QuietLogs(object):
    """Silence the module's logger while a test runs, unless it asserts logs."""

    def setUp(self):
        super(QuietLogs, self).setUp()
        logger = logging.getLogger("docker_volume_plugin")
        handler = logging.NullHandler()  # keeps logging's last-resort printer quiet too
        logger.addHandler(handler)
        logger.propagate = False
        self.addCleanup(self._restore, logger, handler)

    def _restore(self, logger, handler):
        logger.removeHandler(handler)
        logger.propagate = True


# -- pure helpers ---------------------------------------------------------------


class HelperTests(unittest.TestCase):
    def test_rfc3339_from_aware_datetime(self):
        moment = datetime.datetime(2024, 5, 1, 14, 34, 56, 123456,
                                   datetime.timezone(datetime.timedelta(hours=2)))
        self.assertEqual(dvp.format_rfc3339(moment), "2024-05-01T12:34:56.123456Z")

    def test_rfc3339_from_naive_datetime_is_local_time(self):
        naive = datetime.datetime(2024, 5, 1, 12, 0, 0)
        expected = naive.astimezone().astimezone(datetime.timezone.utc)
        self.assertEqual(dvp.format_rfc3339(naive), expected.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def test_rfc3339_from_strings(self):
        self.assertEqual(dvp.format_rfc3339("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z")
        self.assertEqual(dvp.format_rfc3339("2024-01-01t01:00:00.5+01:00"), "2024-01-01T00:00:00.500000Z")
        self.assertEqual(dvp.format_rfc3339("2024-01-01T00:00:00.123456789-00:30"),
                         "2024-01-01T00:30:00.123456Z")

    def test_rfc3339_rejects_what_docker_cannot_decode(self):
        for bad in ("2024-01-01T00:00:00", "", "yesterday", "2024-13-01T00:00:00Z",
                    "2024-01-01 00:00:00Z", True, None, [], {}):
            self.assertIsNone(dvp.format_rfc3339(bad), bad)

    def test_rfc3339_from_epoch_seconds(self):
        self.assertEqual(dvp.format_rfc3339(0), "1970-01-01T00:00:00Z")
        self.assertEqual(dvp.format_rfc3339(1.5), "1970-01-01T00:00:01.500000Z")

    def test_spec_file_written_atomically(self):
        directory = temp_dir(self)
        path = dvp.write_spec_file("p1", "tcp://127.0.0.1:9000", os.path.join(directory, "sub"))
        with open(path) as spec:
            self.assertEqual(spec.read(), "tcp://127.0.0.1:9000\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["p1.spec"])  # no temporary left
        with self.assertRaises(ValueError):
            dvp.write_spec_file("p1", "127.0.0.1:9000", directory)  # no scheme

    def test_atomic_write_keeps_content_and_mode(self):
        directory = temp_dir(self)
        path = os.path.join(directory, "big")
        data = os.urandom(3 * 1024 * 1024) + b"end"
        dvp._write_file_atomically(path, data, 0o600)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_json_spec_file_carries_addr_and_tls(self):
        directory = temp_dir(self)
        tls = {"CAFile": "/ca.pem", "CertFile": "/c.pem", "KeyFile": "/k.pem"}
        path = dvp.write_json_spec_file("p2", "https://10.0.0.1:9443", directory, tls_config=tls)
        self.assertEqual(os.path.basename(path), "p2.json")
        with open(path) as spec:
            self.assertEqual(json.load(spec), {"Name": "p2", "Addr": "https://10.0.0.1:9443",
                                               "TLSConfig": tls})


# -- the protocol layer, without sockets -----------------------------------------


class PluginTests(QuietLogs, unittest.TestCase):
    def setUp(self):
        super(PluginTests, self).setUp()
        self.driver = MemoryDriver()
        self.plugin = dvp.Plugin(self.driver)

    def call(self, path, payload=None, raw=None):
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode() + b"\n")
        status, reply = self.plugin.handle(path, body)
        return status, json.loads(reply.decode("ascii"))

    def test_activate_with_an_empty_body(self):
        self.assertEqual(self.call("/Plugin.Activate"), (200, {"Implements": ["VolumeDriver"]}))

    def test_a_refused_name_or_id_is_logged_cut_short(self):
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            status, _ = self.call("/VolumeDriver.Mount", {"Name": "n" * 100000, "ID": "i" * 100000})
        self.assertEqual(status, 400)
        self.assertLess(len(logs.output[0]), 600)

    def test_driver_missing_a_method_is_refused_by_name(self):
        class Partial(object):
            def create(self, name, options): pass
            def remove(self, name): pass
            def get(self, name): pass
            def list(self): pass
        with self.assertRaises(TypeError) as caught:
            dvp.Plugin(Partial())
        self.assertIn("mount, unmount", str(caught.exception))

    def test_driver_needs_no_base_class_and_a_module_works(self):
        import types
        module = types.ModuleType("drv")
        for method in ("create", "remove", "mount", "unmount", "get", "list"):
            setattr(module, method, lambda *a: None)
        self.assertEqual(dvp.Plugin(module).implements, ["VolumeDriver"])

    def test_create_options_null_empty_and_map(self):
        for opts, expected in ((None, {}), ({}, {}), ({"size": "1G"}, {"size": "1G"})):
            self.assertEqual(self.call("/VolumeDriver.Create", {"Name": "v", "Opts": opts}), (200, {}))
            self.assertEqual(self.driver.volumes["v"]["Status"], {"options": expected})

    def test_bad_fields_are_400_with_a_reason(self):
        cases = [
            ("/VolumeDriver.Create", {"Opts": {}}, "no Name"),
            ("/VolumeDriver.Create", {"Name": 5}, "Name must be a string"),
            ("/VolumeDriver.Create", {"Name": ""}, "Name is empty"),
            ("/VolumeDriver.Create", {"Name": "v", "Opts": []}, "Opts must be an object"),
            ("/VolumeDriver.Create", {"Name": "v", "Opts": {"a": 1}}, "option 'a' must be a string"),
            ("/VolumeDriver.Mount", {"Name": "v"}, "no ID"),
            ("/VolumeDriver.Get", {}, "no Name"),
        ]
        for path, payload, message in cases:
            status, reply = self.call(path, payload)
            self.assertEqual(status, 400, payload)
            self.assertIn(message, reply["Err"])
        self.assertEqual(self.driver.calls.get("create"), None)

    def test_malformed_bodies(self):
        for raw, message in ((b"{", "not valid JSON"), (b"[1]", "must be a JSON object"),
                             (b"\xff\xfe", "not UTF-8"), (b"[" * 100000, "")):
            status, reply = self.call("/VolumeDriver.Get", raw=raw)
            self.assertEqual(status, 400)
            self.assertIn(message, reply["Err"])

    def test_empty_body_retry_gets_a_clear_error(self):
        status, reply = self.call("/VolumeDriver.Mount", raw=b"")
        self.assertEqual(status, 400)
        self.assertIn("empty body", reply["Err"])
        self.assertEqual(self.call("/VolumeDriver.List", raw=b""), (200, {"Volumes": []}))

    def test_get_unknown_is_err_and_logged_quietly(self):
        with self.assertLogs("docker_volume_plugin", logging.DEBUG) as logs:
            status, reply = self.call("/VolumeDriver.Get", {"Name": "nope"})
        self.assertEqual(status, 500)
        self.assertIn("no such volume", reply["Err"])
        self.assertEqual([r.levelno for r in logs.records], [logging.DEBUG])

    def test_get_echoes_name_and_formats_created_at(self):
        self.driver.volumes["v"] = {"Name": "other", "CreatedAt": "2024-01-01T01:00:00+01:00",
                                    "Status": {"k": "v"}, "Mountpoint": "/m"}
        self.assertEqual(self.call("/VolumeDriver.Get", {"Name": "v"}), (200, {"Volume": {
            "Name": "v", "Mountpoint": "/m", "CreatedAt": "2024-01-01T00:00:00Z", "Status": {"k": "v"}}}))

    def test_bad_optional_fields_are_dropped_not_sent(self):
        self.driver.volumes["v"] = {"CreatedAt": "2024-01-01T00:00:00", "Status": {"x": object()},
                                    "Mountpoint": 7}
        with self.assertLogs("docker_volume_plugin", logging.ERROR) as logs:
            status, reply = self.call("/VolumeDriver.Get", {"Name": "v"})
        self.assertEqual((status, reply), (200, {"Volume": {"Name": "v"}}))
        self.assertIn("RFC 3339", "\n".join(logs.output))
        self.assertEqual(len(logs.records), 3)

    def test_list_sends_only_name_and_mountpoint(self):
        self.driver.volumes["a"] = {"Name": "a", "Mountpoint": "/a", "CreatedAt": "bad", "Status": {}}
        self.driver.volumes["b"] = {"Name": "b"}
        self.driver.volumes["c"] = {"Mountpoint": "/c"}  # no name: dropped, logged
        with self.assertLogs("docker_volume_plugin", logging.ERROR):
            status, reply = self.call("/VolumeDriver.List", {})
        self.assertEqual(reply, {"Volumes": [{"Name": "a", "Mountpoint": "/a"},
                                             {"Name": "b", "Mountpoint": ""}]})

    def test_list_is_the_same_bytes_whatever_else_the_driver_lists(self):
        self.driver.volumes["a"] = {"Name": "a", "Mountpoint": "/a<&>\u00e9", "Status": {"x": 1}}
        self.driver.volumes["b"] = {"Name": "b", "CreatedAt": object()}
        status, raw = self.plugin.handle("/VolumeDriver.List", b"{}\n")
        self.assertEqual(raw, b'{"Volumes":[{"Name":"a","Mountpoint":"/a<&>\\u00e9"},'
                              b'{"Name":"b","Mountpoint":""}]}')
        # An entry that is wrong sends the others as they were, the same bytes.
        self.driver.volumes["odd"] = {"Name": 7}
        with self.assertLogs("docker_volume_plugin", logging.ERROR):
            status, again = self.plugin.handle("/VolumeDriver.List", b"{}\n")
        self.assertEqual(again, raw)
        for odd in ("not a mapping", {"Name": 7}, {"Name": ""}, {"Name": "x", "Mountpoint": 3}):
            self.driver.volumes["odd"] = odd
            with self.assertLogs("docker_volume_plugin", logging.ERROR):
                status, reply = self.call("/VolumeDriver.List", {})
            self.assertEqual(status, 200)
            self.assertEqual([v["Name"] for v in reply["Volumes"]], ["a", "b"] + (["x"] if odd.__class__ is dict and odd.get("Name") == "x" else []))

    def test_reply_that_is_not_json_becomes_an_err(self):
        self.plugin.add_route("/Custom.Call", lambda request: {"when": object()})
        status, reply = self.call("/Custom.Call", {})
        self.assertIn("not JSON serializable", reply["Err"])

    def test_driver_error_reaches_docker_and_server_keeps_going(self):
        self.driver.create = raising(dvp.PluginError("quota of 3 volumes reached"))
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            self.assertEqual(self.call("/VolumeDriver.Create", {"Name": "v", "Opts": None}),
                             (500, {"Err": "quota of 3 volumes reached"}))
        self.assertIsNone(logs.records[0].exc_info)  # expected failure: no traceback
        self.assertEqual(self.call("/VolumeDriver.List", {}), (200, {"Volumes": []}))

    def test_unexpected_exception_is_logged_with_traceback(self):
        self.driver.remove = raising(OSError(5, "Input/output error"))
        with self.assertLogs("docker_volume_plugin", logging.ERROR) as logs:
            status, reply = self.call("/VolumeDriver.Remove", {"Name": "v"})
        self.assertEqual(status, 500)
        self.assertEqual(reply["Err"], "OSError: Input/output error")
        self.assertIsNotNone(logs.records[0].exc_info)

    def test_log_levels_and_escaped_names(self):
        self.call("/VolumeDriver.Create", {"Name": "v", "Opts": None})
        with self.assertLogs("docker_volume_plugin", logging.DEBUG) as logs:
            self.call("/VolumeDriver.Get", {"Name": "v"})
            self.call("/VolumeDriver.Mount", {"Name": "v", "ID": "x\n\x1b[31m"})
        get, mount = logs.records
        self.assertEqual(get.levelno, logging.DEBUG)
        self.assertEqual(mount.levelno, logging.INFO)
        self.assertIn("id='x\\n\\x1b[31m'", mount.getMessage())
        self.assertRegex(mount.getMessage(), r"^VolumeDriver\.Mount name='v' id=.* [0-9.]+ms ok$")

    def test_first_activate_is_logged_at_info_and_repeats_at_debug(self):
        # Podman activates in every command it runs: one INFO line, not one per command.
        with self.assertLogs("docker_volume_plugin", logging.DEBUG) as logs:
            for _ in range(3):
                self.assertEqual(self.call("/Plugin.Activate"), (200, {"Implements": ["VolumeDriver"]}))
        self.assertEqual([r.levelno for r in logs.records], [logging.INFO, logging.DEBUG, logging.DEBUG])
        self.assertEqual(self.plugin.activations, 3)

    def test_bad_mountpoint_is_refused_and_undone(self):
        self.driver.volumes["v"] = {"Name": "v", "Mountpoint": "relative/path"}
        status, reply = self.call("/VolumeDriver.Mount", {"Name": "v", "ID": MOUNT_ID})
        self.assertIn("must be an absolute path", reply["Err"])
        self.assertEqual(self.driver.calls["unmount"], 1)

    def test_path_falls_back_to_get(self):
        self.call("/VolumeDriver.Create", {"Name": "v", "Opts": None})
        self.assertEqual(self.call("/VolumeDriver.Path", {"Name": "v"}), (200, {"Mountpoint": "/mnt/v"}))
        self.assertIn("no such volume", self.call("/VolumeDriver.Path", {"Name": "x"})[1]["Err"])
        self.driver.path = lambda name: "/custom/" + name
        self.assertEqual(self.call("/VolumeDriver.Path", {"Name": "v"})[1], {"Mountpoint": "/custom/v"})

    def test_capabilities_default_and_validation(self):
        self.assertEqual(self.call("/VolumeDriver.Capabilities", {})[1],
                         {"Capabilities": {"Scope": "local"}})
        self.driver.capabilities = lambda: {"Scope": "global"}
        self.assertEqual(self.call("/VolumeDriver.Capabilities", {})[1],
                         {"Capabilities": {"Scope": "global"}})
        self.driver.capabilities = lambda: {"Scope": "cluster"}
        self.assertIn("'local' or 'global'", self.call("/VolumeDriver.Capabilities", {})[1]["Err"])

    def test_unknown_endpoint_is_404(self):
        status, reply = self.call("/NetworkDriver.CreateNetwork", {})
        self.assertEqual(status, 404)
        self.assertIn("VolumeDriver", reply["Err"])

    def test_extra_interface_without_editing_the_module(self):
        self.plugin.add_route("AuthZPlugin.AuthZReq", lambda request: {"Allow": True})
        self.plugin.implements.append("authz")
        self.assertEqual(self.call("/Plugin.Activate")[1], {"Implements": ["VolumeDriver", "authz"]})
        self.assertEqual(self.call("/AuthZPlugin.AuthZReq", {"User": "x"}), (200, {"Allow": True}))


# -- the HTTP handler, without a real server -------------------------------------


class _FakeSocket(object):
    """Feeds ``data`` to the handler in ``step``-byte pieces; collects replies.
    No socket: its descriptor is a pipe's read end that is never written, so
    select() sees a client that is still there, waiting."""

    family = socket.AF_UNIX

    def __init__(self, test, data, step=None):
        self.data, self.step, self.sent = data, step, b""
        self.quiet, writer = os.pipe()
        test.addCleanup(os.close, self.quiet)
        test.addCleanup(os.close, writer)

    def fileno(self):
        return self.quiet

    def settimeout(self, timeout):
        pass

    def makefile(self, mode, buffering=None):
        return io.BufferedReader(_FakeReader(self))

    def recv_into(self, buffer, size=0, flags=0):
        piece = self.data[:min(len(buffer), self.step or len(buffer))]
        self.data = self.data[len(piece):]
        buffer[:len(piece)] = piece
        return len(piece)

    def sendall(self, data):
        self.sent += bytes(data)


class _FakeReader(io.RawIOBase):
    def __init__(self, fake):
        io.RawIOBase.__init__(self)
        self.fake = fake

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.fake.recv_into(buffer)


class HandlerTests(QuietLogs, unittest.TestCase):
    def serve_bytes(self, data, step=None, **limits):
        """The replies to ``data``, from a server that is made but never started."""
        server = dvp.UnixPluginServer(os.path.join(temp_dir(self), "p.sock"), MemoryDriver(),
                                      **limits)
        self.addCleanup(server.server_close)
        conn = _FakeSocket(self, data, step)
        dvp.PluginRequestHandler(conn, "", server)
        return _parse_responses(conn.sent)

    def test_keep_alive_pipelined_docker_requests(self):
        data = (_docker_request("Plugin.Activate") +
                _docker_request("VolumeDriver.Create", b'{"Name":"v","Opts":null}\n') +
                _docker_request("VolumeDriver.Get", b'{"Name":"v"}\n', host=b"plugin.moby.localhost"))
        replies = self.serve_bytes(data, step=7)
        self.assertEqual([r[0] for r in replies], [200, 200, 200])
        self.assertEqual(replies[0][2], {"Implements": ["VolumeDriver"]})
        self.assertEqual(replies[2][2]["Volume"]["Name"], "v")
        for _, headers, _ in replies:
            self.assertEqual(headers["content-type"], "application/vnd.docker.plugins.v1.2+json")
            self.assertNotIn("connection", headers)

    def test_chunked_body_is_decoded(self):
        body = b'{"Name":"v","Opts":{"a":"b"}}\n'
        chunked = b"5;ext=1\r\n" + body[:5] + b"\r\n" + ("%x" % (len(body) - 5)).encode() + b"\r\n" + \
            body[5:] + b"\r\n0\r\nTrailer: x\r\n\r\n"
        request = (b"POST /VolumeDriver.Create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked +
                   _docker_request("VolumeDriver.Get", b'{"Name":"v"}'))
        replies = self.serve_bytes(request)
        self.assertEqual([r[0] for r in replies], [200, 200])
        self.assertEqual(replies[1][2]["Volume"]["Status"], {"options": {"a": "b"}})

    def test_http_1_0_closes_unless_keep_alive(self):
        replies = self.serve_bytes(b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 0\r\n\r\n" +
                                   _docker_request("Plugin.Activate"))
        self.assertEqual(len(replies), 1)
        self.assertEqual(replies[0][1]["connection"], "close")

    def test_framing_errors(self):
        cases = [
            (b"POST /Plugin.Activate HTTP/1.1\r\n\r\n", 411, "Content-Length required"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "bad Content-Length"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n{",
             400, "duplicate Content-Length"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
             400, "duplicate Content-Length"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
             400, "both Transfer-Encoding and Content-Length"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not supported"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad chunk size"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "malformed header"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length : 0\r\n\r\n", 400, "malformed header"),
            (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
            (b"POST /Plugin.Activate HTTP/2.0\r\nContent-Length: 0\r\n\r\n", 505, "HTTP version"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n", 413, "over the"),
            (b"POST /Plugin.Activate HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "Too many headers"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nX: " + b"y" * 70000, 431, "Line too long"),
            (b"POST /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "Too Long"),
            (b"POST /Plugin.Activate HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
             400, "duplicate Host"),
        ]
        for request, status, message in cases:
            replies = self.serve_bytes(request + _docker_request("Plugin.Activate"))
            self.assertEqual(len(replies), 1, request[:60])  # framing lost: connection closed
            self.assertEqual(replies[0][0], status, request[:60])
            self.assertIn(message, replies[0][2]["Err"], request[:60])
            self.assertEqual(replies[0][1]["connection"], "close")

    def test_folded_header_is_joined_as_the_stdlib_does(self):
        # RFC 9112 5.2 lets a server replace obsolete line folding with a space.
        replies = self.serve_bytes(b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 0\r\n"
                                   b"X-A: 1\r\n folded\r\n\r\n" + _docker_request("Plugin.Activate"))
        self.assertEqual([r[0] for r in replies], [200, 200])

    def test_seeded_fuzz_always_a_reply_or_a_close(self):
        """Valid requests cut at random places, mutated and fed in random
        pieces: never a traceback, every reply a JSON Err with a status the
        README lists, and the server's accounting back to nothing after."""
        choose = random.Random(SEED)
        valid = [
            _docker_request("VolumeDriver.Create", b'{"Name":"v","Opts":{"mode":"0750"}}\n'),
            _docker_request("VolumeDriver.Get", b'{"Name":"v"}\n', host=b"plugin.moby.localhost"),
            b"POST /VolumeDriver.List HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"GET /VolumeDriver.Get HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        ]
        pieces = [b"\r\n", b"\n", b":", b" ", b"\x00", b"\xff", b"-1", b"99999999999", b"chunked",
                  b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"HTTP/2.0"]
        statuses = {200, 400, 404, 405, 408, 411, 413, 414, 431, 500, 501, 503, 505}
        server = dvp.UnixPluginServer(os.path.join(temp_dir(self), "p.sock"), MemoryDriver(),
                                      max_body_bytes=4096)
        self.addCleanup(server.server_close)
        for round_number in range(400):
            data = bytearray(choose.choice(valid))
            for _ in range(choose.randint(1, 4)):
                at = choose.randrange(len(data) + 1)
                action = choose.randrange(4)
                if action == 0:
                    del data[at:at + choose.randint(1, 8)]
                elif action == 1:
                    data[at:at] = choose.choice(pieces)
                elif action == 2 and at < len(data):
                    data[at] = choose.randrange(256)
                else:
                    del data[at:]  # cut short: the client goes away
            conn = _FakeSocket(self, bytes(data) + _docker_request("Plugin.Activate"),
                               step=choose.randint(1, 64))
            dvp.PluginRequestHandler(conn, "", server)  # any exception fails the test
            for status, headers, body in _parse_responses(conn.sent):
                self.assertIn(status, statuses, (round_number, bytes(data)))
                self.assertEqual(headers["content-type"], "application/vnd.docker.plugins.v1.2+json")
                if status != 200:
                    self.assertIsInstance(body.get("Err"), str, (round_number, bytes(data)))
        self.assertTrue(server.reserve_body(server.max_body_memory))  # every body released
        conn = _FakeSocket(self, _docker_request("Plugin.Activate"))
        dvp.PluginRequestHandler(conn, "", server)
        self.assertEqual(_parse_responses(conn.sent)[0][0], 200)

    def test_body_cut_short(self):
        replies = self.serve_bytes(b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}")
        self.assertEqual(replies[0][0], 400)
        self.assertIn("closed before", replies[0][2]["Err"])

    def test_chunked_body_over_the_limit(self):
        request = (b"POST /VolumeDriver.List HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   (b"400\r\n" + b" " * 1024 + b"\r\n") * 3)
        replies = self.serve_bytes(request, max_body_bytes=2048)
        self.assertEqual(replies[0][0], 413)

    def test_method_other_than_post_is_405_and_keeps_the_connection(self):
        replies = self.serve_bytes(b"GET /Plugin.Activate HTTP/1.1\r\nContent-Length: 0\r\n\r\n" +
                                   _docker_request("Plugin.Activate"))
        self.assertEqual([r[0] for r in replies], [405, 200])
        self.assertEqual(replies[0][1]["allow"], "POST")

    def test_method_other_than_post_is_405_whatever_its_headers(self):
        # No length means no body for a GET (RFC 9112 6.3): not a 411.
        replies = self.serve_bytes(b"GET /VolumeDriver.List HTTP/1.1\r\n\r\n" +
                                   _docker_request("Plugin.Activate"))
        self.assertEqual([r[0] for r in replies], [405, 200])
        # A body that cannot be framed: still 405, then the connection closes.
        replies = self.serve_bytes(b"DELETE /VolumeDriver.List HTTP/1.1\r\nContent-Length: x\r\n\r\n" +
                                   _docker_request("Plugin.Activate"))
        self.assertEqual([(r[0], r[1]["connection"]) for r in replies], [(405, "close")])
        replies = self.serve_bytes(b"GET /nowhere HTTP/1.1\r\n\r\n")
        self.assertEqual([r[0] for r in replies], [404])


# -- a real threaded server on a Unix socket --------------------------------------


class UnixServerTests(QuietLogs, unittest.TestCase):
    def setUp(self):
        super(UnixServerTests, self).setUp()
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "p.sock")
        self.driver = MemoryDriver()
        self.server = self.start_server()

    def start_server(self, **kwargs):
        server = dvp.UnixPluginServer(self.path, self.driver, **kwargs).start()
        self.addCleanup(server.stop, 1.0)
        return server

    def raw(self, data, read_timeout=5.0):
        return _exchange_raw(self.path, data, read_timeout)

    def test_docker_like_client_on_one_keep_alive_connection(self):
        with dvp.PluginClient("unix://" + self.path) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
            sock = client._connection.sock
            client.create("v", None)
            self.assertEqual(client.get("v")["CreatedAt"], "2024-05-01T12:00:00Z")
            self.assertEqual(client.mount("v", MOUNT_ID), "/mnt/v")
            client.unmount("v", MOUNT_ID)
            self.assertEqual([v["Name"] for v in client.list()], ["v"])
            self.assertEqual(client.capabilities(), {"Scope": "local"})
            client.remove("v")
            self.assertIs(client._connection.sock, sock)  # never reconnected
        self.assertEqual(self.driver.calls, {"create": 1, "get": 1, "mount": 1, "unmount": 1,
                                             "list": 1, "remove": 1})

    def test_socket_mode_and_group(self):
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o660)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode))
        self.server.stop(1.0)
        self.server = self.start_server(group=os.getgid() + 1 if os.getgid() == 0 else os.getgid())
        self.assertEqual(os.stat(self.path).st_gid, os.getgid() + 1 if os.getgid() == 0 else os.getgid())

    def test_slow_mount_does_not_block_other_calls(self):
        self.driver.create("v", {})
        self.driver.mount_gate = threading.Event()
        results = []
        clients = [dvp.PluginClient("unix://" + self.path, timeout=5) for _ in range(9)]
        for client in clients:
            self.addCleanup(client.close)
        slow_client = clients.pop()
        slow = threading.Thread(target=lambda: results.append(slow_client.mount("v", MOUNT_ID)))
        slow.start()
        try:
            started = time.time()
            threads = [threading.Thread(target=lambda c=c: results.append(c.get("v")["Name"]))
                       for c in clients]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(5)
            self.assertEqual(results, ["v"] * 8)
            self.assertLess(time.time() - started, 5)
        finally:
            self.driver.mount_gate.set()
            slow.join(5)
        self.assertEqual(results[-1], "/mnt/v")

    def test_mount_nobody_waits_for_is_undone(self):
        self.driver.create("v", {})
        self.driver.mount_gate = threading.Event()
        unmounted = []
        self.driver.unmount = lambda name, mount_id: unmounted.append((name, mount_id))
        body = json.dumps({"Name": "v", "ID": MOUNT_ID}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        sock.sendall(_docker_request("VolumeDriver.Mount", body))
        for _ in range(500):  # until the Mount is in the driver
            if self.driver.calls.get("mount"):
                break
            time.sleep(0.01)
        sock.close()  # the client gives up, as Podman does after 5 s
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            self.driver.mount_gate.set()
            for _ in range(500):
                if unmounted:
                    break
                time.sleep(0.01)
        self.assertEqual(unmounted, [("v", MOUNT_ID)])
        self.assertIn("hung up", "\n".join(logs.output))
        # A Mount whose reply arrives is never undone.
        with dvp.PluginClient("unix://" + self.path) as client:
            self.assertEqual(client.mount("v", MOUNT_ID), "/mnt/v")
        self.assertEqual(len(unmounted), 1)

    def test_burst_of_connections_fits_the_backlog(self):
        # The engine connects in bursts (restoring volumes at start); with
        # socketserver's backlog of 5 the sixth connect fails with EAGAIN.
        path = os.path.join(self.dir, "idle.sock")
        server = dvp.UnixPluginServer(path, MemoryDriver())  # listening, not accepting
        self.addCleanup(server.server_close)
        clients = []
        for _ in range(32):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(1.0)  # non-blocking connect, as Go's
            clients.append(sock)
            sock.connect(path)
        for sock in clients:
            sock.close()

    def test_bad_input_then_the_next_request_still_works(self):
        bad = [
            (_docker_request("VolumeDriver.Get", b"{not json"), 400),
            (_docker_request("VolumeDriver.Get", b"[]"), 400),
            (_docker_request("VolumeDriver.Get", b'{"Name": 1}'), 400),
            (_docker_request("VolumeDriver.Get", b"{}"), 400),
            (b"POST /VolumeDriver.Get HTTP/1.1\r\n\r\n", 411),
            (b"POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (_docker_request("VolumeDriver.Get", b" " * (dvp.UnixPluginServer.max_body_bytes + 1)), 413),
            (_docker_request("Nope"), 404),
            (b"DELETE /VolumeDriver.Get HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        ]
        for request, status in bad:
            replies = _parse_responses(self.raw(request + b""))
            self.assertEqual(replies[0][0], status, request[:50])
            self.assertTrue(replies[0][2]["Err"])
            with dvp.PluginClient("unix://" + self.path) as client:
                self.assertEqual(client.activate(), ["VolumeDriver"])

    def test_chunked_request_over_a_socket(self):
        body = b'{"Name":"v","Opts":null}'
        request = (b"POST /VolumeDriver.Create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                   b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(_parse_responses(self.raw(request))[0][:1], (200,))
        self.assertIn("v", self.driver.volumes)

    def test_idle_client_is_timed_out_and_frees_its_thread(self):
        self.server.stop(1.0)
        self.server = self.start_server(idle_timeout=0.15)
        started = time.time()
        self.assertEqual(self.raw(b""), b"")  # closed without a reply
        self.assertLess(time.time() - started, 3)
        self.assertEqual(self._wait_connections_gone(), 0)

    def test_dribbling_client_is_cut_off(self):
        self.server.stop(1.0)
        self.server = self.start_server(request_timeout=0.25)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(self.path)
        started = time.time()
        try:
            for byte in b"POST /Plugin.Activate HTTP/1.1\r\n":
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.time() - started > 3:
                    break
        except OSError:
            pass  # the server closed on us: what we want
        reply = b""
        try:
            while True:  # the reply, whole: headers and body come in two writes
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        except OSError:
            pass  # reset after the reply: our bytes it never read
        finally:
            sock.close()
        self.assertLess(time.time() - started, 3)
        self.assertEqual(_parse_responses(reply)[0][0], 408)
        self.assertEqual(self._wait_connections_gone(), 0)

    def _wait_connections_gone(self):
        for _ in range(50):
            if not self.server.handlers():
                break
            time.sleep(0.05)
        return len(self.server.handlers())

    def test_stop_never_removes_a_socket_that_replaced_ours(self):
        server = dvp.UnixPluginServer(os.path.join(self.dir, "s.sock"), MemoryDriver()).start()
        os.unlink(server.server_address)  # someone removed ours and serves there now
        successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(successor.close)
        successor.bind(server.server_address)
        self.assertTrue(server.stop(1.0))
        self.assertTrue(stat.S_ISSOCK(os.stat(server.server_address).st_mode))

    def test_stop_lets_calls_in_flight_finish_and_removes_socket(self):
        self.driver.create("v", {})
        self.driver.mount_gate = threading.Event()
        results = []
        client = dvp.PluginClient("unix://" + self.path)
        self.addCleanup(client.close)
        caller = threading.Thread(target=lambda: results.append(client.mount("v", MOUNT_ID)))
        caller.start()
        while not self.driver.calls.get("mount"):
            time.sleep(0.01)
        idle = dvp.PluginClient("unix://" + self.path)
        self.addCleanup(idle.close)
        idle.activate()  # an idle keep-alive connection must not delay the stop
        stopper = threading.Thread(target=lambda: results.append(self.server.stop(5.0)))
        stopper.start()
        for _ in range(100):  # serve_forever() notices the stop within its poll interval
            if not os.path.exists(self.path):
                break
            time.sleep(0.02)
        self.assertFalse(os.path.exists(self.path))  # no new connections while draining
        self.assertTrue(caller.is_alive())
        # A call on a connection that was open already is still answered.
        self.assertEqual(idle.activate(), ["VolumeDriver"])
        self.driver.mount_gate.set()
        stopper.join(5)
        caller.join(5)
        self.assertEqual(sorted(map(str, results)), ["/mnt/v", "True"])

    def test_stale_socket_is_replaced(self):
        self.server.stop(1.0)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()  # a crash leaves the file with nothing listening
        self.server = self.start_server()
        with dvp.PluginClient(self.path) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])

    def test_live_socket_and_other_files_are_never_deleted(self):
        with self.assertRaises(OSError) as caught:
            dvp.UnixPluginServer(self.path, MemoryDriver())
        self.assertIn("served by another process", str(caught.exception))
        other = os.path.join(self.dir, "file.sock")
        with open(other, "w") as f:
            f.write("keep me")
        with self.assertRaises(OSError) as caught:
            dvp.UnixPluginServer(other, MemoryDriver())
        self.assertIn("not a socket", str(caught.exception))
        with open(other) as f:
            self.assertEqual(f.read(), "keep me")

    def test_socket_path_over_108_bytes_is_refused(self):
        long_path = os.path.join(self.dir, "x" * 120 + ".sock")
        with self.assertRaises(OSError) as caught:
            dvp.UnixPluginServer(long_path, MemoryDriver())
        self.assertIn("108", str(caught.exception))


class TCPServerTests(QuietLogs, unittest.TestCase):
    def test_binds_loopback_unless_told_otherwise(self):
        self.assertEqual(dvp._parse_tcp(":9000"), ("127.0.0.1", 9000))
        self.assertEqual(dvp._parse_tcp("[::1]:9000"), ("::1", 9000))
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            server = dvp.TCPPluginServer(("", 0), MemoryDriver())
        self.addCleanup(server.server_close)
        self.assertEqual(server.server_address[0], "127.0.0.1")
        # Loopback is no shelter: every local user can connect.
        self.assertIn("every local user can reach it", logs.output[0])

    def test_tcp_server_writes_and_removes_its_spec(self):
        spec_dir = temp_dir(self)
        server = dvp.TCPPluginServer(("127.0.0.1", 0), MemoryDriver(), name="tcpp", spec_dir=spec_dir)
        server.start()
        try:
            spec_path = os.path.join(spec_dir, "tcpp.spec")
            with open(spec_path) as spec:
                address = spec.read().strip()
            self.assertRegex(address, r"^tcp://127\.0\.0\.1:\d+$")
            self.assertNotEqual(address, "tcp://127.0.0.1:0")
            with dvp.PluginClient(address) as client:
                self.assertEqual(client.activate(), ["VolumeDriver"])
                client.create("v")
                self.assertEqual(client.get("v")["Mountpoint"], "/mnt/v")
        finally:
            server.stop(1.0)
        self.assertFalse(os.path.exists(spec_path))

    def test_tcp_replies_are_not_held_back_by_nagle(self):
        server = dvp.TCPPluginServer(("127.0.0.1", 0), MemoryDriver()).start()
        self.addCleanup(server.stop, 1.0)
        with dvp.PluginClient(server.address) as client:
            client.activate()
            (handler,) = server.handlers()
            self.assertTrue(handler.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def test_client_reads_a_mountpoint_as_go_does(self):
        plugin = dvp.Plugin()
        plugin.add_route("/VolumeDriver.Mount", lambda request: {})
        plugin.add_route("/VolumeDriver.Path", lambda request: {"Mountpoint": 5})
        plugin.add_route("/VolumeDriver.Get", lambda request: {"Volume": None})
        server = dvp.TCPPluginServer(("127.0.0.1", 0), plugin).start()
        self.addCleanup(server.stop, 1.0)
        with dvp.PluginClient(server.address) as client:
            self.assertEqual(client.mount("v", "1"), "")  # no Mountpoint: Go decodes ""
            self.assertIsNone(client.get("v"))
            with self.assertRaisesRegex(dvp.PluginCallError, "Mountpoint 5 is not a string"):
                client.path("v")


# -- systemd: socket activation, readiness, watchdog, unit files ----------------------

UNITS = os.path.join(HERE, "examples", "systemd")


class SystemdTests(unittest.TestCase):
    """With systemd's own tools: systemd-socket-activate and systemd-analyze."""

    def setUp(self):
        if not shutil.which("systemd-socket-activate"):
            self.skipTest("needs systemd-socket-activate (Debian's systemd package)")
        self.base = temp_dir(self)
        self.root = os.path.join(self.base, "root")
        self.env = dict(os.environ, PYTHONPATH=HERE)

    def notifications(self, abstract=False):
        """A datagram socket as systemd's NOTIFY_SOCKET; returns (socket, its address)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = "dvp-test-%s" % os.urandom(6).hex()
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = os.path.join(self.base, "notify")
            sock.bind(address)
        sock.settimeout(10)
        return sock, address

    def test_systemd_socket_activate_starts_the_plugin_on_first_use(self):
        sock = os.path.join(self.base, "p.sock")
        proc = _spawn(self, ["systemd-socket-activate", "-l", sock, "--fdname=plugin",
                             sys.executable, MODULE, "serve", *QUICK_STOP, "--root", self.root],
                      stderr=subprocess.PIPE, universal_newlines=True, env=self.env)
        _wait_for_listening(sock)
        self.assertFalse(os.path.exists(self.root))  # nothing started yet
        with dvp.PluginClient(sock, timeout=20) as client:  # this call starts it
            self.assertEqual(client.activate(), ["VolumeDriver"])
            client.create("v", {"mode": "0700"})
            self.assertEqual(client.mount("v", MOUNT_ID), os.path.join(self.root, "v"))
            client.unmount("v", MOUNT_ID)
        proc.terminate()
        self.assertEqual(proc.wait(15), 0)
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode))  # systemd's socket: left in place
        log_text = proc.stderr.read()
        self.assertIn("socket activation: serving 1 socket(s) systemd passed", log_text)
        self.assertIn("DirectoryDriver, root %s" % self.root, log_text)

    def test_a_bound_socket_passed_by_descriptor(self):
        path, unused = os.path.join(self.base, "passed.sock"), os.path.join(self.base, "own.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        fd = listener.fileno()
        move = "" if fd == 3 else "exec 3<&%d %d<&-; " % (fd, fd)  # sd_listen_fds starts at 3
        proc = _spawn(self, ["sh", "-c", move + 'LISTEN_PID=$$ LISTEN_FDS=1 '
                             'LISTEN_FDNAMES=plugin exec "$@"', "sh", sys.executable,
                             MODULE, "serve", *QUICK_STOP, "--root", self.root, "--socket", unused],
                      pass_fds=[fd], stderr=subprocess.PIPE, universal_newlines=True, env=self.env)
        listener.close()
        with dvp.PluginClient(path, timeout=20) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
        self.assertFalse(os.path.exists(unused))  # the passed socket, not one of its own
        proc.terminate()
        self.assertEqual(proc.wait(15), 0)
        self.assertTrue(os.path.exists(path))

    def test_listen_pid_of_another_process_is_ignored_and_cleared(self):
        saved = dict((k, os.environ.get(k)) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))

        def restore():
            for key, value in saved.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value
        self.addCleanup(restore)
        for pid, fds in ((os.getpid() + 1, "1"), (os.getpid(), "0"), (os.getpid(), "x")):
            os.environ.update(LISTEN_PID=str(pid), LISTEN_FDS=fds, LISTEN_FDNAMES="plugin")
            self.assertEqual(dvp._systemd_sockets(), [])
            for key in saved:  # children never see them
                self.assertNotIn(key, os.environ)
        sock = os.path.join(self.base, "p.sock")
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--root", self.root,
                             "--socket", sock],
                      env=dict(self.env, LISTEN_PID="1", LISTEN_FDS="1"), stderr=subprocess.PIPE,
                      universal_newlines=True)
        _wait_for_socket(sock, proc)  # made its own socket
        proc.terminate()
        self.assertEqual(proc.wait(15), 0)
        self.assertFalse(os.path.exists(sock))  # and removed its own

    def test_readiness_status_watchdog_and_stopping(self):
        notify, address = self.notifications()
        sock = os.path.join(self.base, "p.sock")
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--root", self.root,
                             "--socket", sock],
                      env=dict(self.env, NOTIFY_SOCKET=address, WATCHDOG_USEC="100000"),
                      stderr=subprocess.PIPE, universal_newlines=True)
        first = notify.recv(4096).decode()
        self.assertTrue(first.startswith("READY=1\nSTATUS=serving VolumeDriver (DirectoryDriver, "
                                         "root %s, 0 volume(s)) on unix://%s" % (self.root, sock)),
                        first)
        with dvp.PluginClient(sock) as client:  # ready means it answers
            client.activate()
        self.assertEqual([notify.recv(64) for _ in range(3)], [b"WATCHDOG=1"] * 3)
        proc.terminate()
        messages = []
        while b"STOPPING=1" not in messages:
            messages.append(notify.recv(64))
        self.assertEqual(proc.wait(15), 0)

    def test_abstract_notify_socket_and_a_watchdog_for_another_pid(self):
        notify, address = self.notifications(abstract=True)
        sock = os.path.join(self.base, "p.sock")
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--root", self.root,
                             "--socket", sock],
                      env=dict(self.env, NOTIFY_SOCKET=address, WATCHDOG_USEC="100000",
                               WATCHDOG_PID="1"), stderr=subprocess.PIPE, universal_newlines=True)
        self.assertTrue(notify.recv(4096).startswith(b"READY=1\n"))
        notify.settimeout(0.25)  # five of its pings
        with self.assertRaises(socket.timeout):  # the watchdog is another process's
            notify.recv(64)
        proc.terminate()
        notify.settimeout(10)
        self.assertEqual(notify.recv(64), b"STOPPING=1")
        self.assertEqual(proc.wait(15), 0)

    def test_without_systemd_nothing_is_sent(self):
        systemd = dvp._Systemd()
        systemd.notify("READY=1")  # no NOTIFY_SOCKET: a silent no-op
        systemd.start_watchdog(lambda: True)
        systemd.stop_watchdog()

    def serve_on_descriptor(self, fd, *extra):
        """``serve`` given ``fd`` as systemd's first socket; returns (exit status, stderr)."""
        move = "" if fd == 3 else "exec 3<&%d %d<&-; " % (fd, fd)
        extra = extra or ("--spec-dir", temp_dir(self))  # never the engine's own
        result = subprocess.run(["sh", "-c", move + 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh",
                                 sys.executable, MODULE, "serve", *QUICK_STOP, "--root", self.root,
                                 *extra], pass_fds=[fd], stderr=subprocess.PIPE,
                                universal_newlines=True, env=self.env, timeout=30)
        return result.returncode, result.stderr

    def test_only_listening_stream_sockets_are_taken_from_systemd(self):
        """A datagram, unbound or connected socket, or a file, as LISTEN_FDS:
        served, each made the accept loop spin at 100% CPU for ever."""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connected, _ = socket.socketpair()
        plain = open(os.path.join(self.base, "file"), "w")
        for each in (udp, unbound, connected, plain):
            self.addCleanup(each.close)
        for each, expected in ((udp, "is not a listening stream socket"),
                               (unbound, "is not a listening stream socket"),
                               (connected, "is not a listening stream socket"),
                               (plain, "descriptor 3 is not a socket")):
            with self.subTest(each):
                status, err = self.serve_on_descriptor(each.fileno())
                self.assertEqual(status, 1, err)
                self.assertIn("error: socket activation: " + "descriptor 3 " * (each is not plain),
                              err)
                self.assertIn(expected, err)
                self.assertNotIn("Traceback", err)

    def test_a_plain_tcp_socket_from_systemd_is_held_to_the_tcp_rule(self):
        """ListenStream=PORT is every address: it was served in plain text."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("0.0.0.0", 0))
        listener.listen(4)
        specs = temp_dir(self)
        status, err = self.serve_on_descriptor(listener.fileno(), "--spec-dir", specs)
        self.assertEqual(status, 1, err)
        self.assertIn("refusing plain TCP on 0.0.0.0", err)
        self.assertEqual(os.listdir(specs), [])  # no spec written

    def test_a_full_notify_socket_never_blocks(self):
        """A NOTIFY_SOCKET nobody reads: READY=1 blocked the start, and
        STOPPING=1 the stop, for ever."""
        notify, address = self.notifications()
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(filler.close)
        filler.setblocking(False)
        with self.assertRaises(BlockingIOError):
            for _ in range(100000):  # its queue holds net.unix.max_dgram_qlen datagrams
                filler.sendto(b"x", address)
        os.environ["NOTIFY_SOCKET"] = address
        self.addCleanup(os.environ.pop, "NOTIFY_SOCKET")
        sender = threading.Thread(target=dvp._Systemd().notify, args=("READY=1",))
        sender.daemon = True
        sender.start()
        sender.join(5)
        self.assertFalse(sender.is_alive())

    def test_watchdog_intervals_are_bounded_below(self):
        os.environ["WATCHDOG_USEC"] = "1"  # a thousand datagrams a second
        self.addCleanup(os.environ.pop, "WATCHDOG_USEC")
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            systemd = dvp._Systemd()
        self.assertEqual(systemd.interval, dvp._Systemd.min_watchdog_interval)
        self.assertIn("WATCHDOG_USEC=1 is under 1s", logs.output[0])
        os.environ["WATCHDOG_USEC"] = "30000000"
        self.assertEqual(dvp._Systemd().interval, 15.0)

    def test_the_watchdog_health_rule_follows_poll_interval(self):
        """A loop that turns every 8 s was called stuck after 5 s: systemd
        killed a healthy plugin."""
        server = dvp.UnixPluginServer(os.path.join(self.base, "p.sock"), MemoryDriver(),
                                      poll_interval=8.0)
        self.addCleanup(server.server_close)
        server.last_turn = time.monotonic() - 8.5  # one poll and a little
        self.assertTrue(server.turning())
        server.last_turn = time.monotonic() - 30
        self.assertFalse(server.turning())

    @unittest.skipUnless(shutil.which("systemd-analyze"), "needs systemd-analyze")
    def test_shipped_unit_files_verify(self):
        units = sorted(os.path.join(UNITS, f) for f in os.listdir(UNITS))
        self.assertEqual([os.path.basename(u) for u in units],
                         ["docker-volume-plugin-dirs.service", "docker-volume-plugin-dirs.socket",
                          "docker-volume-plugin-sshfs.service", "docker-volume-plugin-sshfs.socket"])
        result = subprocess.run(["systemd-analyze", "verify", "--man=no"] + units,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, timeout=60, cwd=UNITS)
        self.assertEqual(result.returncode, 0, result.stdout)
        ours = [line for line in result.stdout.splitlines() if "docker-volume-plugin" in line]
        self.assertEqual(ours, [])
        with open(os.path.join(UNITS, "docker-volume-plugin-dirs.socket")) as f:
            socket_unit = f.read()
        self.assertIn("ListenStream=/run/docker/plugins/dirs.sock", socket_unit)
        self.assertIn("Before=docker.service", socket_unit)
        with open(os.path.join(UNITS, "docker-volume-plugin-dirs.service")) as f:
            service = f.read()
        for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict",
                     "NoNewPrivileges=yes"):
            self.assertIn(line, service)
        # The mounting unit: none of the settings that give a service a mount
        # namespace of its own (../shared/docs/ENGINE.md, "A real systemd").
        with open(os.path.join(UNITS, "docker-volume-plugin-sshfs.service")) as f:
            settings = [line.split("=", 1)[0] for line in f.read().splitlines()
                        if "=" in line and not line.startswith("#")]
        for namespacing in ("ProtectSystem", "PrivateTmp", "ProtectHome", "ProtectKernelTunables",
                            "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                            "PrivateMounts", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
                            "TemporaryFileSystem", "BindPaths", "PrivateDevices", "MountFlags"):
            self.assertNotIn(namespacing, settings)
        for setting in ("KillMode", "CapabilityBoundingSet", "DeviceAllow", "NoNewPrivileges"):
            self.assertIn(setting, settings)

    def test_shipped_unit_runs_the_module_from_its_bytecode(self):
        with open(os.path.join(UNITS, "docker-volume-plugin-dirs.service")) as f:
            unit = f.read()
        settings = dict(line.split("=", 1) for line in unit.splitlines()
                        if "=" in line and not line.startswith("#"))
        library, argv = settings["WorkingDirectory"], settings["ExecStart"].split()
        self.assertEqual(argv[1:3], ["-m", "docker_volume_plugin"])
        # The install lines in the unit's comment, run here on a stand-in directory.
        install = [line[1:].strip() for line in unit.splitlines() if line.startswith("#   ")]
        self.assertIn("python3 -m compileall -q %s" % library, install)
        stand_in = temp_dir(self)
        shutil.copy(MODULE, stand_in)
        subprocess.run([sys.executable, "-m", "compileall", "-q", stand_in], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        result = subprocess.run([sys.executable, "-v"] + argv[1:3] + ["--version"], cwd=stand_in,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        bytecode = importlib.util.cache_from_source(os.path.join(stand_in, "docker_volume_plugin.py"))
        self.assertIn("code object from %r" % bytecode, result.stderr)


# -- remote plugins: TCP with mutual TLS ----------------------------------------------


#: openssl's arguments for a new key: elliptic curve keys are made in
#: milliseconds, RSA ones in a good part of a second.
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def make_certificates(directory):
    """A CA, the plugin's certificate (for 127.0.0.1), the engine's, and another CA's
    client certificate, made with the openssl command line; returns their paths."""
    def openssl(*args):
        subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=directory, timeout=60)
    paths = {}
    for ca in ("ca", "other-ca"):
        # The extensions Python 3.13's strict verification wants of a CA.
        openssl("req", "-x509", *NEW_KEY, "-nodes", "-keyout", ca + ".key", "-out",
                ca + ".pem", "-days", "2", "-subj", "/CN=dvp test " + ca,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        paths[ca] = os.path.join(directory, ca + ".pem")
    leaf = ("keyUsage=critical,digitalSignature,keyEncipherment\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    for name, ca, extensions in (
            ("plugin", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
            ("engine", "ca", "extendedKeyUsage=clientAuth\n"),
            ("stranger", "other-ca", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(directory, name + ".ext"), "w") as f:
            f.write(extensions + leaf)
        openssl("req", *NEW_KEY, "-nodes", "-keyout", name + ".key", "-out",
                name + ".csr", "-subj", "/CN=" + name)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
        paths[name] = os.path.join(directory, name + ".pem")
        paths[name + "-key"] = os.path.join(directory, name + ".key")
    return paths


def _tls_problem():
    if shutil.which("openssl") is None:
        return "needs the openssl command line to make test certificates"
    return None


class TLSTests(QuietLogs, unittest.TestCase):
    """HTTPS with client certificates, and the .json spec that makes the engine use it."""

    @classmethod
    def setUpClass(cls):
        problem = _tls_problem()
        if problem:
            raise unittest.SkipTest(problem)
        cls.certificates_dir = tempfile.mkdtemp(prefix="dvp-tls-")
        cls.certs = make_certificates(cls.certificates_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certificates_dir, True)

    def setUp(self):
        super(TLSTests, self).setUp()
        self.specs = temp_dir(self)
        c = self.certs
        self.spec_tls = {"CAFile": c["ca"], "CertFile": c["engine"], "KeyFile": c["engine-key"]}
        self.server = dvp.TCPPluginServer(
            ("127.0.0.1", 0), CheckableDriver(temp_dir(self)), name="tlsp", spec_dir=self.specs,
            request_timeout=0.5, tls_context=dvp.server_tls_context(c["plugin"], c["plugin-key"], c["ca"]),
            spec_tls=self.spec_tls).start()
        self.addCleanup(self.server.stop, 1.0)
        self.port = self.server.server_address[1]

    def client(self, **tls):
        client = dvp.PluginClient("https://127.0.0.1:%d" % self.port, timeout=5, tls=tls)
        self.addCleanup(client.close)
        return client

    def test_a_key_file_others_can_read_is_warned_about(self):
        key = os.path.join(temp_dir(self), "plugin.key")
        shutil.copy(self.certs["plugin-key"], key)
        os.chmod(key, 0o600)
        with self.assertRaises(AssertionError):  # nothing logged
            with self.assertLogs("docker_volume_plugin", logging.WARNING):
                dvp.server_tls_context(self.certs["plugin"], key)
        os.chmod(key, 0o644)
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            dvp.server_tls_context(self.certs["plugin"], key)
        self.assertIn("can be read by other users (mode 0644)", logs.output[0])

    def test_connections_that_never_start_a_handshake_are_closed_to_make_room(self):
        """Anyone can open a TLS connection and send nothing: 300 of them held
        every slot until their handshake deadline, batch after batch."""
        c = self.certs
        server = dvp.TCPPluginServer(
            ("127.0.0.1", 0), MemoryDriver(), name="flood", spec_dir=temp_dir(self),
            max_connections=16, tls_context=dvp.server_tls_context(c["plugin"], c["plugin-key"],
                                                                   c["ca"])).start()
        self.addCleanup(server.stop, 1.0)
        for _ in range(300):
            self.addCleanup(socket.create_connection(("127.0.0.1", server.server_address[1])).close)
        with dvp.PluginClient("https://127.0.0.1:%d" % server.server_address[1], timeout=3,
                              tls={"CAFile": c["ca"], "CertFile": c["engine"],
                                   "KeyFile": c["engine-key"]}) as client:
            self.assertEqual(client.list(), [])

    def test_the_json_spec_makes_the_engine_verify_and_authenticate(self):
        self.assertEqual(os.listdir(self.specs), ["tlsp.json"])
        with open(os.path.join(self.specs, "tlsp.json")) as f:
            spec = json.load(f)
        self.assertEqual(spec["Addr"], "https://127.0.0.1:%d" % self.port)
        self.assertEqual(spec["TLSConfig"], self.spec_tls)
        # Found by name as the engine finds it, with the spec's TLS rules.
        with dvp.PluginClient("tlsp", socket_dir=self.specs, spec_dirs=[self.specs]) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
            client.create("v", {})
            self.assertEqual(client.get("v")["Name"], "v")
        results = dvp.check_plugin("tlsp", socket_dir=self.specs, spec_dirs=[self.specs])
        self.assertEqual([(r["rule"], r["detail"]) for r in results if not r["passed"]], [])
        self.assertIn("https://127.0.0.1:%d" % self.port, results[0]["detail"])
        self.server.stop(1.0)
        self.assertEqual(os.listdir(self.specs), [])  # removed at shutdown

    def test_clients_without_the_right_certificate_are_refused(self):
        c = self.certs
        refused = [
            self.client(CAFile=c["ca"]),  # no client certificate
            self.client(CAFile=c["ca"], CertFile=c["stranger"], KeyFile=c["stranger-key"]),
        ]
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            for client in refused:
                with self.assertRaises(dvp.PluginCallError):
                    client.activate()
            with dvp.PluginClient("tcp://127.0.0.1:%d" % self.port, timeout=5) as plain:
                with self.assertRaises(dvp.PluginCallError):  # plain HTTP to the TLS port
                    plain.activate()
            for _ in range(50):
                if len(logs.records) >= 3:
                    break
                time.sleep(0.05)
        self.assertEqual(len(logs.records), 3, logs.output)
        for record in logs.records:
            self.assertIn("TLS handshake with 127.0.0.1 failed", record.getMessage())
            self.assertIsNone(record.exc_info)  # one line, no traceback
        good = self.client(CAFile=c["ca"], CertFile=c["engine"], KeyFile=c["engine-key"])
        self.assertEqual(good.activate(), ["VolumeDriver"])  # and it keeps serving

    def test_a_handshake_never_finished_is_timed_out(self):
        c = self.certs
        stalled = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(stalled.close)
        stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and no more
        good = self.client(CAFile=c["ca"], CertFile=c["engine"], KeyFile=c["engine-key"])
        self.assertEqual(good.activate(), ["VolumeDriver"])  # not held up meanwhile
        started = time.time()
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            while stalled.recv(100):  # a TLS alert, perhaps, then the end
                pass
        self.assertLess(time.time() - started, 5)  # closed after the 0.5 s request deadline
        self.assertIn("did not finish its handshake", logs.output[0])

    def test_plain_tcp_elsewhere_than_loopback_is_refused(self):
        root = os.path.join(self.specs, "root")
        code, _, stderr = run_main(self, "serve", "--tcp", "0.0.0.0:0", "--root", root,
                                   "--spec-dir", self.specs)
        self.assertEqual(code, 1)
        self.assertIn("refusing plain TCP on 0.0.0.0", stderr)
        self.assertIn("--insecure-tcp", stderr)
        for args, message in ((["--tls-cert", "x"], "--tls-* options go with --tcp"),
                              (["--tcp", "127.0.0.1:0", "--tls-cert", "x"], "both --tls-cert and"),
                              (["--tcp", "127.0.0.1:0", "--tls-cert", "x", "--tls-key", "y",
                                "--tls-ca", "z"], "--tls-ca requires client certificates")):
            code, _, stderr = run_main(self, "serve", "--root", root, *args)
            self.assertEqual(code, 2, args)
            self.assertIn(message, stderr)
        self.assertFalse(os.path.exists(root))  # refused before anything was made


# -- hardening: other local users, hostile clients, an exhausted host -------------------

NOBODY = 65534


def _as_nobody(*argv):
    """Run ``argv`` as the unprivileged user nobody; returns the finished process."""
    return subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                           "--clear-groups"] + list(argv), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30)


def _cpu_seconds(pid):
    """User plus system CPU time a process has used, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FileSystemHardeningTests(QuietLogs, unittest.TestCase):
    """What another local user could do through the files the plugin uses."""

    def setUp(self):
        super(FileSystemHardeningTests, self).setUp()
        self.dir = temp_dir(self)

    def test_root_another_user_can_write_is_refused(self):
        shared = os.path.join(self.dir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)  # e.g. --root /tmp/vols made by anyone
        with self.assertRaises(PermissionError) as caught:
            dvp.DirectoryDriver(shared)
        self.assertIn("writable by other users (mode 0777)", str(caught.exception))
        below = os.path.join(shared, "vols")  # a root inside it can be swapped too
        with self.assertRaises(PermissionError):
            dvp.DirectoryDriver(below)
        if os.geteuid() == 0:
            theirs = os.path.join(self.dir, "theirs")
            os.mkdir(theirs, 0o700)
            os.chown(theirs, NOBODY, NOBODY)
            with self.assertRaises(PermissionError) as caught:
                dvp.DirectoryDriver(theirs)
            self.assertIn("belongs to uid %d" % NOBODY, str(caught.exception))
        sticky = os.path.join(self.dir, "tmp")
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)  # like /tmp: our own entry in it is safe
        driver = dvp.DirectoryDriver(os.path.join(sticky, "vols"))
        driver.close()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(sticky, "vols")).st_mode), 0o700)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to make another user's link")
    def test_a_link_another_user_planted_is_never_followed(self):
        sticky = os.path.join(self.dir, "tmp")
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)  # like /tmp, where anyone may plant a link
        target = os.path.join(self.dir, "etc")  # root's, as /etc is
        os.mkdir(target, 0o755)
        os.chmod(target, 0o755)
        link = os.path.join(sticky, "vols")
        os.symlink(target, link)
        os.lchown(link, NOBODY, NOBODY)
        for make in (lambda: dvp.DirectoryDriver(link),  # a future --root
                     lambda: dvp.DirectoryDriver(os.path.join(link, "below")),
                     lambda: dvp.UnixPluginServer(os.path.join(link, "p.sock"), MemoryDriver()),
                     lambda: dvp.write_spec_file("p", "tcp://127.0.0.1:1", link)):
            with self.assertRaisesRegex(PermissionError, "symbolic link that uid %d owns" % NOBODY):
                make()
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o755)  # never taken over
        self.assertEqual(os.listdir(target), [])
        os.lchown(link, 0, 0)  # root's own link is followed
        driver = dvp.DirectoryDriver(link)
        driver.close()

    @unittest.skipUnless(os.geteuid() == 0, "needs root to make a directory others can write")
    def test_a_driver_is_never_imported_from_a_directory_others_can_write(self):
        shared = os.path.join(self.dir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        with open(os.path.join(shared, "mine.py"), "w") as f:
            f.write("import docker_volume_plugin as dvp\nclass D(dvp.DirectoryDriver): pass\n")
        with open(os.path.join(shared, "hashlib.py"), "w") as f:  # planted beside it
            f.write("raise SystemExit('planted module ran')\n")
        with self.assertRaisesRegex(dvp._UsageError, "refusing to import from %s" % shared):
            dvp._load_driver(os.path.join(shared, "mine.py") + ":D")
        self.assertNotIn(shared, sys.path)

    def test_root_is_private_and_tightened(self):
        root = os.path.join(self.dir, "root")
        os.mkdir(root, 0o711)
        os.chmod(root, 0o711)  # what earlier versions made: data readable by name
        state = os.path.join(root, ".docker-volume-plugin")
        os.mkdir(state)
        os.chmod(state, 0o755)  # made by hand, or by a umask of 022
        driver = dvp.DirectoryDriver(root)
        self.addCleanup(driver.close)
        self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o700)
        lock = os.path.join(driver.run_dir, "lock")
        self.assertEqual(stat.S_IMODE(os.stat(lock).st_mode), 0o600)
        driver.create("v", {"mode": "0777"})
        if os.geteuid() == 0 and shutil.which("setpriv"):
            # Another user can neither read volume data nor flock the lock file.
            with open(os.path.join(root, "v", "secret"), "w") as f:
                f.write("x")
            self.assertNotEqual(_as_nobody("cat", os.path.join(root, "v", "secret")).returncode, 0)
            self.assertNotEqual(_as_nobody("flock", "-n", lock, "true").returncode, 0)

    def test_links_planted_at_our_file_names_are_never_followed(self):
        root = os.path.join(self.dir, "root")
        driver = dvp.DirectoryDriver(root)
        self.addCleanup(driver.close)
        victim = os.path.join(self.dir, "victim")
        with open(victim, "w") as f:
            f.write("precious")
        state = os.path.join(root, ".docker-volume-plugin", "v.json")
        tmp = "%s.tmp-%d-%d" % (state, os.getpid(), threading.get_ident())
        os.symlink(victim, tmp)  # where this very thread writes the next record
        driver.create("v", {})
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")
        self.assertFalse(os.path.lexists(tmp))
        self.assertIn("v", [v["Name"] for v in driver.list()])
        driver.close()
        os.rename(state, os.path.join(self.dir, "v.json"))
        os.symlink(os.path.join(self.dir, "v.json"), state)
        with self.assertRaises(OSError):  # a state file that is a link: not read
            dvp.DirectoryDriver(root).start()

    def test_socket_directory_created_private_whatever_the_umask(self):
        sock = os.path.join(self.dir, "new", "plugins", "p.sock")
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock,
                             "--root", os.path.join(self.dir, "root")], stderr=subprocess.PIPE,
                      universal_newlines=True, env=dict(os.environ, PYTHONPATH=HERE),
                      preexec_fn=lambda: os.umask(0))
        _wait_for_socket(sock, proc)
        for directory in (os.path.dirname(sock), os.path.dirname(os.path.dirname(sock))):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o755, directory)
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o660)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dir, "root")).st_mode), 0o700)
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)

    def test_socket_directory_others_can_write_is_refused(self):
        shared = os.path.join(self.dir, "plugins")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        result = subprocess.run([sys.executable, MODULE, "serve", "--socket",
                                 os.path.join(shared, "p.sock"), "--root",
                                 os.path.join(self.dir, "root")], stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=30)
        self.assertEqual(result.returncode, 1)
        self.assertIn("refusing to serve on", result.stderr)
        self.assertIn("writable by other users", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_spec_directory_others_can_write_is_refused(self):
        """--spec-dir was not checked like the other directories: another user
        could swap the spec for one that sends the engine to their server."""
        specs = os.path.join(self.dir, "specs")
        os.mkdir(specs)
        os.chmod(specs, 0o777)
        with self.assertRaises(PermissionError) as caught:
            dvp.TCPPluginServer(("127.0.0.1", 0), MemoryDriver(), name="p", spec_dir=specs)
        self.assertIn("refusing to write a spec file in %s" % specs, str(caught.exception))
        self.assertEqual(os.listdir(specs), [])

    def in_thread(self, call, *args):
        """Run ``call`` in a thread for at most 5 s: (what it returned or raised, still running)."""
        outcome = []

        def run():
            try:
                outcome.append(call(*args))
            except Exception as exc:
                outcome.append(exc)
        thread = threading.Thread(target=run)
        thread.daemon = True  # a call blocked for ever is left behind
        thread.start()
        thread.join(5)
        return (outcome[0] if outcome else None), thread.is_alive()

    def test_fifos_in_place_of_state_or_spec_files_never_block(self):
        """A FIFO as a record, as the 0.1 state file, or as the spec file
        blocked the start or the stop for ever, in open()."""
        for where in ("record", "0.1 file"):
            with self.subTest(where):
                root = os.path.join(self.dir, where.replace(" ", "-"))
                dvp.DirectoryDriver(root).close()
                fifo = (os.path.join(root, ".docker-volume-plugin", "v.json") if where == "record"
                        else os.path.join(root, ".docker-volume-plugin.json"))
                os.mkfifo(fifo, 0o600)
                outcome, blocked = self.in_thread(lambda: dvp.DirectoryDriver(root).start())
                self.assertFalse(blocked)
                self.assertIsInstance(outcome, ValueError)
                self.assertIn("%s is not a regular file" % fifo, str(outcome))
        specs = temp_dir(self)
        server = dvp.TCPPluginServer(("127.0.0.1", 0), MemoryDriver(), name="p", spec_dir=specs)
        os.unlink(os.path.join(specs, "p.spec"))
        os.mkfifo(os.path.join(specs, "p.spec"), 0o600)  # a spec rewritten meanwhile
        _, blocked = self.in_thread(server.server_close)
        self.assertFalse(blocked)
        self.assertEqual(os.listdir(specs), ["p.spec"])  # not ours: left

    def test_two_servers_starting_at_once_never_both_serve(self):
        path = os.path.join(self.dir, "p.sock")
        for _ in range(30):
            started, errors = [], []

            def start():
                try:
                    started.append(dvp.UnixPluginServer(path, MemoryDriver()))
                except OSError as exc:
                    errors.append(exc)
            threads = [threading.Thread(target=start) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            self.assertEqual(len(started), 1, errors)
            self.assertIn("served by another process", str(errors[0]))
            started[0].server_close()
            self.assertEqual(os.listdir(self.dir), [])  # socket and lock file gone


class HostileClientTests(QuietLogs, unittest.TestCase):
    """Requests and loads meant to hurt, against a real server; bounded in count and time."""

    def setUp(self):
        super(HostileClientTests, self).setUp()
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "p.sock")
        self.driver = MemoryDriver()
        self.driver.create("v", {})

    def start_server(self, **limits):
        server = dvp.UnixPluginServer(self.path, self.driver)
        for name, value in limits.items():
            setattr(server, name, value)
        server.start()
        self.addCleanup(server.stop, 1.0)
        return server

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        self.addCleanup(sock.close)
        return sock

    def get_answered(self, seconds=5):
        with dvp.PluginClient(self.path, timeout=seconds) as client:
            return client.get("v")["Name"] == "v"

    def test_a_header_of_blanks_does_not_freeze_the_server(self):
        self.start_server()
        hostile = self.connect()
        value = b"a" + b" " * 60000 + b"b"  # the old header pattern was quadratic in this
        hostile.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nX-Pad: " + value +
                        b"\r\nContent-Length: 3\r\n\r\n{}\n")
        self.assertTrue(self.get_answered())  # others are served meanwhile
        response = http.client.HTTPResponse(hostile)
        response.begin()
        self.assertEqual(response.status, 200)

    def test_numbers_and_fields_of_any_size_are_refused_cleanly(self):
        self.start_server()
        cases = [
            (_docker_request("VolumeDriver.Get", json.dumps({"Name": "n" * 256}).encode()), 400),
            (_docker_request("VolumeDriver.Mount", json.dumps({"Name": "v", "ID": "i" * 129}).encode()), 400),
            (b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
        ]
        for request, status in cases:
            sock = self.connect()
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            self.assertEqual(response.status, status, request[:80])
            self.assertIn("over the", json.loads(response.read().decode())["Err"])
        self.assertEqual(self.driver.calls.get("mount"), None)
        root = os.path.join(self.dir, "root")
        driver = dvp.DirectoryDriver(root)
        self.addCleanup(driver.close)
        for option in ("uid", "gid"):
            with self.assertRaises(dvp.PluginError) as caught:
                driver.create("big", {option: "9" * 5000})
            self.assertIn("must be a number from 0 to 4294967294", str(caught.exception))
        for name in ("ghost%d" % i for i in range(200)):  # no state kept for names that do not exist
            for call in (lambda: driver.mount(name, MOUNT_ID), lambda: driver.unmount(name, MOUNT_ID),
                         lambda: driver.remove(name)):
                self.assertRaises(dvp.VolumeNotFound, call)
        self.assertEqual(driver._volume_locks, {})

    def test_idle_connections_beyond_the_limit_make_room(self):
        self.start_server(max_connections=4)
        idle = [self.connect() for _ in range(6)]  # more than allowed, all silent
        self.assertTrue(self.get_answered())
        readable = select.select(idle, [], [], 0.5)[0]  # closed ones read as the end
        self.assertGreaterEqual(sum(sock.recv(1) == b"" for sock in readable), 1)

    def test_a_flood_of_idle_connections_is_closed_as_fast_as_it_is_accepted(self):
        """300 silent connections queued ahead of the engine's, 16 allowed:
        one was closed every 50 ms, so the engine waited 14 s."""
        self.start_server(max_connections=16)
        flood = [self.connect() for _ in range(300)]
        self.assertTrue(self.get_answered(seconds=3))
        self.assertEqual(len(flood), 300)

    def test_a_flood_under_a_descriptor_limit_below_max_connections(self):
        """64 descriptors, 256 connections allowed: accept() failed with
        EMFILE, nothing was closed, and the engine waited for the idle timeout."""
        import resource
        sock, log_path = os.path.join(self.dir, "limited.sock"), os.path.join(self.dir, "log")
        with open(log_path, "w") as log_file:
            proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--root",
                                 os.path.join(self.dir, "root"), "--socket", sock],
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
                          stderr=log_file, env=dict(os.environ, PYTHONPATH=HERE))
        _wait_for_socket(sock, proc)
        flood = []
        for _ in range(300):
            each = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addCleanup(each.close)
            each.connect(sock)
            flood.append(each)
        with dvp.PluginClient(sock, timeout=3) as client:
            self.assertEqual(client.list(), [])
        with open(log_path) as log_file:
            warnings = [line for line in log_file if "Too many open files" in line]
        self.assertEqual(len(warnings), 1, warnings)  # a flood logs no flood

    def test_a_client_that_never_reads_its_replies_is_cut_off(self):
        for i in range(2000):  # a List reply of about 100 KB
            self.driver.create("volume-with-a-long-name-%04d" % i, {})
        server = self.start_server(request_timeout=0.15)
        greedy = self.connect()
        greedy.sendall(_docker_request("VolumeDriver.List", b"{}") * 100)  # and reads nothing
        deadline = time.time() + 10
        while not server.handlers() and time.time() < deadline:
            time.sleep(0.01)
        while server.handlers() and time.time() < deadline:  # blocked in a write, then cut off
            time.sleep(0.05)
        self.assertEqual(len(server.handlers()), 0)
        self.assertTrue(self.get_answered())
        received = b""
        try:
            while True:
                data = greedy.recv(1 << 20)
                if not data:
                    break
                received += data
        except OSError:
            pass
        self.assertLess(received.count(b"HTTP/1.1 200"), 100)  # not every reply went out

    def test_late_requests_at_the_limit_are_still_cut_off(self):
        # Every slot held by a client that stopped mid-request: the server,
        # waiting for a slot, still answers them 408 at their deadline.
        self.start_server(max_connections=2, request_timeout=0.25)
        held = [self.connect() for _ in range(2)]
        for sock in held:
            sock.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        time.sleep(0.1)
        with dvp.PluginClient(self.path, timeout=10) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
        for sock in held:
            response = http.client.HTTPResponse(sock)
            response.begin()
            self.assertEqual(response.status, 408)

    def test_busy_connections_at_the_limit_wait_without_spinning(self):
        server = self.start_server(max_connections=3)
        held = []
        for _ in range(3):  # every slot busy with a request that never completes
            sock = self.connect()
            sock.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
            held.append(sock)
        time.sleep(0.1)
        waiting = dvp.PluginClient(self.path, timeout=20)
        self.addCleanup(waiting.close)
        answer = []
        caller = threading.Thread(target=lambda: answer.append(waiting.get("v")))
        caller.start()
        started = time.process_time()
        time.sleep(0.3)
        self.assertLess(time.process_time() - started, 0.1)  # the accept loop sleeps, it does not spin
        self.assertEqual(answer, [])  # queued, not refused: the engine would forget the volume
        held[0].close()
        caller.join(10)
        self.assertEqual(answer[0]["Name"], "v")
        stopped = time.time()
        self.assertFalse(server.stop(0.1))  # two requests still in flight: cut off
        self.assertLess(time.time() - stopped, 5)

    def test_request_bodies_are_capped_in_memory(self):
        self.start_server(max_body_memory=300 * 1024)
        first = self.connect()
        first.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: 262144\r\n\r\n{")
        time.sleep(0.2)
        second = self.connect()
        second.sendall(b"POST /VolumeDriver.List HTTP/1.1\r\nContent-Length: 262144\r\n\r\n{")
        response = http.client.HTTPResponse(second)
        response.begin()
        self.assertEqual(response.status, 503)
        self.assertIn("request bodies", json.loads(response.read().decode())["Err"])
        self.assertTrue(self.get_answered())  # small bodies are never held back

    def test_expect_100_continue_is_answered(self):
        self.start_server()
        sock = self.connect()
        body = b'{"Name":"v"}'
        sock.sendall(b"POST /VolumeDriver.Get HTTP/1.1\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        self.assertEqual(sock.recv(25), b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        self.assertEqual(response.status, 200)

    def test_descriptors_run_out_without_a_spin(self):
        import resource
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", self.path,
                             "--root", os.path.join(self.dir, "root")],
                      stderr=subprocess.PIPE, universal_newlines=True, env=dict(os.environ, PYTHONPATH=HERE),
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (24, 48)))
        _wait_for_socket(self.path, proc)
        with open("/proc/%d/limits" % proc.pid) as f:
            self.assertRegex(f.read(), r"Max open files\s+48\s+48")  # soft raised to hard
        flood = [self.connect() for _ in range(60)]  # more than its descriptors
        time.sleep(0.1)
        before = _cpu_seconds(proc.pid)
        time.sleep(0.4)
        self.assertLess(_cpu_seconds(proc.pid) - before, 0.15)  # a spin would take it all
        for sock in flood:
            sock.close()
        with dvp.PluginClient(self.path, timeout=10) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
        proc.terminate()
        self.assertEqual(proc.wait(15), 0)
        self.assertIn("cannot accept a connection: Too many open files", proc.stderr.read())

    def test_non_finite_numbers_are_never_sent(self):
        self.driver.volumes["v"]["Status"] = {"size": float("nan"), "ok": 1}
        plugin = dvp.Plugin(self.driver)
        with self.assertLogs("docker_volume_plugin", logging.ERROR):
            status, reply = plugin.handle("/VolumeDriver.Get", b'{"Name":"v"}')
        self.assertEqual(status, 200)
        self.assertNotIn(b"NaN", reply)
        self.assertNotIn("Status", json.loads(reply.decode())["Volume"])
        self.assertIsNone(dvp._parse_reply(b'{"Volume":{"Status":{"size":NaN}}}'))  # as Go decodes

    def test_error_replies_show_no_file_paths(self):
        self.driver.create = raising(OSError(errno.ENOSPC, "No space left on device",
                                             "/srv/vols/.docker-volume-plugin.json.tmp-1-2"))
        status, reply = dvp.Plugin(self.driver).handle("/VolumeDriver.Create", b'{"Name":"x"}')
        self.assertEqual((status, json.loads(reply.decode())), (500, {"Err": "OSError: No space left on device"}))


# -- signals, in a subprocess --------------------------------------------------------

SLOW_DRIVER = '''
import os, time, docker_volume_plugin as dvp

class Slow(object):
    def create(self, name, options): pass
    def remove(self, name): pass
    def mount(self, name, mount_id):
        if os.environ.get("DVP_MOUNT_STARTED"):  # tell the test the call is in flight
            open(os.environ["DVP_MOUNT_STARTED"], "w").close()
        time.sleep(0.15)
        return "/srv/" + name
    def unmount(self, name, mount_id): pass
    def get(self, name): return {"Name": name}
    def list(self): return []
    def capabilities(self): raise dvp.PluginError("capabilities from the test driver")
'''


def _spawn(test, args, **kwargs):
    """Start a subprocess that the test's cleanup kills and reaps."""
    proc = subprocess.Popen(args, **kwargs)

    def reap():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    test.addCleanup(reap)
    return proc


def _wait_for_listening(path, seconds=10):
    """Wait until a Unix socket at PATH listens, without connecting to it (a
    connection would start a socket-activated plugin): its path exists from
    bind(), before listen(), in between a connection is refused."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with open("/proc/net/unix") as sockets:  # Num RefCount Protocol Flags ... Path
            if any(line.split()[3:4] == ["00010000"] and line.split()[-1] == path
                   for line in sockets):  # __SO_ACCEPTCON: listening
                return
        time.sleep(0.02)
    raise AssertionError("nothing listens on %s" % path)


def _wait_for_socket(path, proc, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("plugin exited with %s: %s" % (
                proc.returncode, proc.stderr.read() if proc.stderr else "(see its log)"))
        try:
            with dvp.PluginClient(path, timeout=2) as client:
                client.activate()
                return
        except dvp.PluginCallError:
            time.sleep(0.01)
    raise AssertionError("plugin did not answer on %s" % path)


class SignalTests(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self)
        with open(os.path.join(self.dir, "slowdriver.py"), "w") as f:
            f.write(SLOW_DRIVER)
        self.sock = os.path.join(self.dir, "p.sock")
        self.mount_started = os.path.join(self.dir, "mount-started")

    def start(self, prefix=(), extra=()):
        env = dict(os.environ, PYTHONPATH=HERE, DVP_MOUNT_STARTED=self.mount_started)
        return _spawn(self, list(prefix) + [sys.executable, MODULE, "serve", *QUICK_STOP,
                                            "--socket", self.sock, "--driver",
                                            os.path.join(self.dir, "slowdriver.py:Slow")] +
                      list(extra), stderr=subprocess.PIPE, universal_newlines=True, env=env)

    def check_graceful_stop(self, proc, pid, sig):
        _wait_for_socket(self.sock, proc)
        result = []
        client = dvp.PluginClient(self.sock)
        self.addCleanup(client.close)
        caller = threading.Thread(target=lambda: result.append(client.mount("v", MOUNT_ID)))
        caller.start()
        for _ in range(500):  # until the mount is in flight
            if os.path.exists(self.mount_started):
                break
            time.sleep(0.01)
        self.assertTrue(os.path.exists(self.mount_started))
        os.kill(pid, sig)
        caller.join(10)
        self.assertEqual(result, ["/srv/v"])
        self.assertEqual(proc.wait(10), 0)
        self.assertFalse(os.path.exists(self.sock))
        return proc.stderr.read()

    def test_sigterm_drains_and_removes_socket(self):
        proc = self.start()
        log_text = self.check_graceful_stop(proc, proc.pid, signal.SIGTERM)
        self.assertIn("signal 15 received", log_text)
        self.assertIn("VolumeDriver.Mount name='v'", log_text)

    def test_sigint(self):
        proc = self.start()
        self.check_graceful_stop(proc, proc.pid, signal.SIGINT)

    def test_sighup_and_sigquit_leave_no_stale_socket(self):
        for sig in (signal.SIGHUP, signal.SIGQUIT):
            if os.path.exists(self.mount_started):
                os.unlink(self.mount_started)
            proc = self.start()
            self.check_graceful_stop(proc, proc.pid, sig)

    @unittest.skipUnless(shutil.which("unshare") and os.geteuid() == 0, "needs root and unshare")
    def test_sigterm_as_pid_1(self):
        proc = self.start(prefix=["unshare", "--pid", "--fork", "--kill-child"])
        _wait_for_socket(self.sock, proc)
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as children:
            child = int(children.read().split()[0])
        with open("/proc/%d/status" % child) as status:
            ns_pids = [line.split()[1:] for line in status if line.startswith("NSpid:")][0]
        self.assertEqual(ns_pids[-1], "1")  # really PID 1 in its namespace
        self.check_graceful_stop(proc, child, signal.SIGTERM)

    def test_tcp_spec_removed_on_sigterm(self):
        spec_dir = os.path.join(self.dir, "specs")
        proc = self.start(extra=["--tcp", "127.0.0.1:0", "--spec-dir", spec_dir, "--name", "sigtcp"])
        spec = os.path.join(spec_dir, "sigtcp.spec")
        for _ in range(200):
            if os.path.exists(spec):
                break
            time.sleep(0.05)
        with open(spec) as f:
            address = f.read().strip()
        with dvp.PluginClient(address) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
            with self.assertRaises(dvp.PluginCallError) as caught:
                client.capabilities()
            self.assertEqual(str(caught.exception),
                             "VolumeDriver.Capabilities: capabilities from the test driver")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0)
        self.assertFalse(os.path.exists(spec))


# -- the built-in directory driver ----------------------------------------------------


class DirectoryDriverTests(QuietLogs, unittest.TestCase):
    def setUp(self):
        super(DirectoryDriverTests, self).setUp()
        self.base = temp_dir(self)
        self.root = os.path.join(self.base, "root")
        self.driver = self.open()

    def open(self):
        driver = dvp.DirectoryDriver(self.root)
        self.addCleanup(driver.close)
        driver.start()  # as a server does before serving
        return driver

    def reopen(self):
        self.driver.close()
        self.driver = self.open()
        return self.driver

    def record(self, name):
        with open(os.path.join(self.root, ".docker-volume-plugin", name + ".json")) as f:
            return json.load(f)

    def test_names(self):
        for good in ("a", "A.b-c_d", "0" * 64, "x" * 200):
            self.driver.create(good, {})
        for bad in ("", "..", ".hidden", "-x", "_x", "a/b", "../escape", "a\x00b", "a b", "x" * 201,
                    "é", "a\nb"):
            with self.assertRaises(dvp.PluginError, msg=repr(bad)) as caught:
                self.driver.create(bad, {})
            self.assertIn("invalid volume name", str(caught.exception))
        self.assertEqual(sorted(os.listdir(self.base)), ["root"])  # nothing outside the root

    def test_options_validated_applied_and_shown(self):
        self.driver.create("v", {"uid": "1234", "gid": "5678", "mode": "0750"})
        st = os.stat(os.path.join(self.root, "v"))
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (1234, 5678, 0o750))
        self.assertEqual(self.driver.get("v")["Status"]["options"],
                         {"uid": "1234", "gid": "5678", "mode": "0750"})
        self.driver.create("d", {})
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.root, "d")).st_mode), 0o755)
        for options, message in (({"size": "1G"}, "known options: gid, mode, uid"),
                                 ({"uid": "-1"}, "uid"), ({"gid": "x"}, "gid"),
                                 ({"mode": "999"}, "octal"), ({"mode": "17777"}, "octal"),
                                 ({"mode": "7777"}, "setuid and setgid are refused"),
                                 ({"mode": "4755"}, "octal permissions from 0 to 1777")):
            with self.assertRaises(dvp.PluginError) as caught:
                self.driver.create("bad", options)
            self.assertIn(message, str(caught.exception))
        self.assertFalse(os.path.exists(os.path.join(self.root, "bad")))
        for mode, value in (("0", 0), ("01777", 0o1777), ("1777", 0o1777), ("700", 0o700)):
            self.driver.create("m" + mode, {"mode": mode})
            st = os.stat(os.path.join(self.root, "m" + mode))
            self.assertEqual(stat.S_IMODE(st.st_mode), value, mode)

    def test_created_at_is_real(self):
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        self.driver.create("v", {})
        created = self.driver.get("v")["CreatedAt"]
        self.assertRegex(created, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        moment = datetime.datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone.utc)
        self.assertLessEqual(before, moment)
        self.assertLess(moment - before, datetime.timedelta(seconds=5))
        self.assertEqual(self.reopen().get("v")["CreatedAt"], created)

    def test_mount_counting_by_id(self):
        self.driver.create("v", {})
        path = self.driver.mount("v", "id1")
        self.assertEqual(path, os.path.join(self.root, "v"))
        self.driver.mount("v", "id1")  # docker cp on a running container
        self.driver.mount("v", "id2")  # a second container
        self.assertEqual(self.driver.get("v")["Status"]["mounts"], 3)
        self.driver.unmount("v", "id1")
        self.driver.unmount("v", "id2")
        with self.assertRaises(dvp.PluginError) as caught:
            self.driver.remove("v")
        self.assertEqual(str(caught.exception), "volume 'v' is in use: mounted 1 time(s)")
        self.assertNotIn("id1", str(caught.exception))  # an ID would let a caller unmount it
        self.driver.unmount("v", "id1")
        self.driver.unmount("v", "id1")  # one too many: ignored
        self.driver.remove("v")
        self.assertIsNone(self.driver.get("v"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "v")))

    def test_state_survives_a_restart(self):
        self.driver.create("v", {"mode": "0700"})
        self.driver.mount("v", "id1")
        with open(os.path.join(self.root, "v", "data"), "w") as f:
            f.write("x")
        driver = self.reopen()
        self.assertEqual(driver.get("v")["Status"], {"options": {"mode": "0700"}, "mounts": 1})
        with self.assertRaises(dvp.PluginError):
            driver.remove("v")
        self.assertEqual(driver.volumes()["v"]["mounts"], {"id1": 1})
        self.assertEqual(self.record("v")["options"], {"mode": "0700"})
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.root, ".docker-volume-plugin",
                                                           "v.json")).st_mode), 0o600)

    def test_second_process_on_the_same_root_is_refused(self):
        with self.assertRaises(OSError) as caught:
            dvp.DirectoryDriver(self.root)
        self.assertIn("another process", str(caught.exception))

    def test_start_finishes_what_a_crash_cut_short(self):
        self.driver.create("kept", {"mode": "0700"})
        self.driver.create("removing", {})
        self.driver.create("creating", {})
        self.driver.close()
        records = os.path.join(self.root, ".docker-volume-plugin")
        for name, phase in (("removing", "removing"), ("creating", "creating")):
            record = self.record(name)
            record["phase"] = phase
            with open(os.path.join(records, name + ".json"), "w") as f:
                json.dump(record, f)
        os.rename(os.path.join(self.root, "removing"), os.path.join(self.root, ".removing-removing"))
        open(os.path.join(records, "kept.json.tmp-1-2"), "w").close()
        os.mkdir(os.path.join(self.root, "stray"))  # not made by the plugin: not a volume
        with open(os.path.join(self.root, "stray", "data"), "w") as f:
            f.write("theirs")
        with self.assertLogs("docker_volume_plugin", logging.WARNING) as logs:
            driver = self.open()
        self.driver = driver
        self.assertEqual([v["Name"] for v in driver.list()], ["kept"])
        self.assertEqual(driver.get("kept")["Status"]["options"], {"mode": "0700"})
        self.assertEqual(sorted(os.listdir(self.root)), [".docker-volume-plugin", "kept", "stray"])
        self.assertEqual(sorted(os.listdir(records)), ["kept.json"])
        self.assertIn("no record: not a volume; left alone", "\n".join(logs.output))
        self.assertIsNone(driver.get("stray"))
        with self.assertRaises(dvp.PluginError) as caught:  # never taken over, never destroyed
            driver.create("stray", {})
        self.assertIn("with no record: it is not a volume", str(caught.exception))
        with open(os.path.join(self.root, "stray", "data")) as f:
            self.assertEqual(f.read(), "theirs")
        driver.create("creating", {"mode": "0750"})  # the engine's retry starts afresh
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.root, "creating")).st_mode), 0o750)

    def test_missing_directory_is_reported_not_replaced(self):
        self.driver.create("v", {})
        os.rmdir(os.path.join(self.root, "v"))
        driver = self.reopen()
        self.assertIn("missing", driver.get("v")["Status"]["problem"])
        with self.assertRaises(dvp.PluginError) as caught:
            driver.mount("v", "id1")
        self.assertIn("missing", str(caught.exception))
        self.assertNotIn(self.root, str(caught.exception))  # an error reply names no path
        self.assertFalse(os.path.exists(os.path.join(self.root, "v")))
        driver.remove("v")
        self.assertIsNone(driver.get("v"))

    def test_reboot_clears_mount_counts(self):
        self.driver.create("v", {})
        self.driver.mount("v", "id1")
        self.driver.close()
        path = os.path.join(self.driver.run_dir, "v.json")  # boot-scoped: /run when root
        with open(path) as f:
            counts = json.load(f)
        counts["boot_id"] = "another-boot"
        with open(path, "w") as f:
            json.dump(counts, f)
        self.driver = self.open()
        self.assertEqual(self.driver.get("v")["Status"]["mounts"], 0)
        self.driver.remove("v")

    def test_damaged_state_file_stops_the_start(self):
        self.driver.create("v", {})
        self.driver.close()
        with open(os.path.join(self.root, ".docker-volume-plugin", "v.json"), "w") as f:
            f.write('{"version": 2, "opti')
        with self.assertRaises(ValueError) as caught:
            dvp.DirectoryDriver(self.root).start()
        self.assertIn("damaged", str(caught.exception))

    def test_symlink_never_leads_outside_the_root(self):
        outside = os.path.join(self.base, "outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "precious"), "w") as f:
            f.write("x")
        self.driver.create("v", {})
        os.rmdir(os.path.join(self.root, "v"))
        os.symlink(outside, os.path.join(self.root, "v"))
        os.symlink(outside, os.path.join(self.root, "linked"))
        driver = self.reopen()
        self.assertIsNone(driver.get("linked"))  # never adopted
        with self.assertRaises(dvp.PluginError):
            driver.mount("v", "id1")
        driver.remove("v")
        self.assertTrue(os.path.exists(os.path.join(outside, "precious")))

    def test_list_never_sees_a_half_created_volume(self):
        real_chmod, entered, release = os.chmod, threading.Event(), threading.Event()

        def slow_chmod(path, mode):
            if path.endswith("half"):
                entered.set()
                release.wait(5)
            return real_chmod(path, mode)
        dvp.os.chmod = slow_chmod
        self.addCleanup(setattr, dvp.os, "chmod", real_chmod)
        creator = threading.Thread(target=self.driver.create, args=("half", {}))
        creator.start()
        self.assertTrue(entered.wait(5))
        try:
            self.assertEqual(self.driver.list(), [])
            self.assertIsNone(self.driver.get("half"))
            # another volume is not held up by the first one's create
            self.driver.create("other", {})
            self.assertEqual([v["Name"] for v in self.driver.list()], ["other"])
        finally:
            release.set()
            creator.join(5)
        self.assertEqual(sorted(v["Name"] for v in self.driver.list()), ["half", "other"])

    def test_calls_for_one_volume_are_serialised(self):
        self.driver.create("v", {})
        real_write, inside, peak = self.driver._write_mounts, [0], [0]

        def counting_write(name, state):
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            time.sleep(0.01)
            try:
                return real_write(name, state)
            finally:
                inside[0] -= 1
        self.driver._write_mounts = counting_write
        threads = [threading.Thread(target=self.driver.mount, args=("v", "id%d" % (i % 3)))
                   for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        self.assertEqual(peak[0], 1)
        self.assertEqual(self.driver.get("v")["Status"]["mounts"], 12)
        self.assertEqual(self.driver.volumes()["v"]["mounts"], {"id0": 4, "id1": 4, "id2": 4})

    def test_served_driver_passes_through_the_protocol(self):
        plugin = dvp.Plugin(self.driver)
        status, reply = plugin.handle("/VolumeDriver.Create", b'{"Name":"../../etc","Opts":null}\n')
        self.assertIn("invalid volume name", json.loads(reply.decode())["Err"])
        status, reply = plugin.handle("/VolumeDriver.Get", b'{"Name":"nope"}\n')
        self.assertIn("no such volume", json.loads(reply.decode())["Err"])


# -- state that scales and survives: Driver, upgrades, a bad day on the host ------------

#: A root's state file as version 0.1 wrote it (its DirectoryDriver, two
#: volumes with options, one mounted three times, one adopted directory).
V1_STATE = """{
 "boot_id": "BOOT_ID",
 "version": 1,
 "volumes": {
  "adopted": {
   "created_at": "2026-11-28T01:57:59.316294Z",
   "mounts": {},
   "options": {}
  },
  "busy": {
   "created_at": "2026-11-28T01:57:59.313409Z",
   "mounts": {
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": 2,
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb": 1
   },
   "options": {
    "mode": "0700"
   }
  },
  "owned": {
   "created_at": "2026-11-28T01:57:59.312595Z",
   "mounts": {},
   "options": {
    "gid": "1000",
    "mode": "0750",
    "uid": "1000"
   }
  },
  "plain": {
   "created_at": "2026-11-28T01:57:59.311707Z",
   "mounts": {},
   "options": {}
  }
 }
}
"""


def hostdirs_example():
    """The README's Driver example, as text (between its two marker comments)."""
    with open(os.path.join(HERE, "README.rst")) as f:
        block = f.read().split(".. hostdirs-start")[1].split(".. hostdirs-end")[0]
    return textwrap.dedent(block.split("::", 1)[1])


class Secretive(dvp.Driver):
    options = {"password": str, "api_key": str, "size": dvp.size_option}

    def mountpoint(self, name, options):
        return "/srv/" + name


class StateTests(QuietLogs, unittest.TestCase):
    def setUp(self):
        super(StateTests, self).setUp()
        self.base = temp_dir(self)
        self.root = os.path.join(self.base, "root")

    def open(self, root=None):
        driver = dvp.DirectoryDriver(root or self.root)
        self.addCleanup(driver.close)
        driver.start()
        return driver

    def make_v1_root(self, boot_id):
        os.mkdir(self.root, 0o711)
        for name, mode in (("adopted", 0o755), ("busy", 0o700), ("owned", 0o750), ("plain", 0o755)):
            os.mkdir(os.path.join(self.root, name), mode)
        os.chown(os.path.join(self.root, "owned"), 1000, 1000)
        with open(os.path.join(self.root, "busy", "data"), "w") as f:
            f.write("kept")
        with open(os.path.join(self.root, ".docker-volume-plugin.json"), "w") as f:
            f.write(V1_STATE.replace("BOOT_ID", boot_id))
        open(os.path.join(self.root, ".docker-volume-plugin.lock"), "w").close()

    def test_version_1_root_is_converted_keeping_everything(self):
        self.make_v1_root(dvp._boot_id())
        driver = self.open()
        self.assertEqual(sorted(v["Name"] for v in driver.list()), ["adopted", "busy", "owned", "plain"])
        volumes = driver.volumes()
        self.assertEqual(volumes["owned"]["options"], {"gid": "1000", "mode": "0750", "uid": "1000"})
        self.assertEqual(volumes["busy"]["options"], {"mode": "0700"})
        self.assertEqual(volumes["busy"]["mounts"], {"a" * 64: 2, "b" * 64: 1})
        self.assertEqual(driver.get("plain")["CreatedAt"], "2026-11-28T01:57:59.311707Z")
        with open(os.path.join(self.root, "busy", "data")) as f:
            self.assertEqual(f.read(), "kept")
        with self.assertRaises(dvp.PluginError):
            driver.remove("busy")  # still mounted, as before the upgrade
        self.assertEqual(sorted(os.listdir(self.root)), [
            ".docker-volume-plugin", ".docker-volume-plugin.json.converted", "adopted", "busy",
            "owned", "plain"])
        driver.close()
        again = self.open()  # converted once: the next start reads the new records
        self.assertEqual(again.volumes(), volumes)

    def test_version_1_mounts_from_before_a_reboot_are_cleared(self):
        self.make_v1_root("another-boot")
        driver = self.open()
        self.assertEqual(driver.volumes()["busy"]["mounts"], {})
        driver.remove("busy")

    def test_damaged_version_1_entry_stops_the_start_and_drops_nothing(self):
        self.make_v1_root(dvp._boot_id())
        path = os.path.join(self.root, ".docker-volume-plugin.json")
        with open(path) as f:
            state = json.load(f)
        state["volumes"]["../evil"] = {"options": {}}
        with open(path, "w") as f:
            json.dump(state, f)
        with self.assertRaises(ValueError) as caught:
            dvp.DirectoryDriver(self.root).start()
        self.assertIn("damaged entry '../evil'", str(caught.exception))
        self.assertTrue(os.path.exists(path))  # still there, whole, for the operator

    def test_version_1_values_are_checked_before_anything_is_converted(self):
        """The conversion copied options, times and counts unchecked."""
        path = os.path.join(self.root, ".docker-volume-plugin.json")
        for field, value, problem in (("options", {"mode": 700}, "options are not an object of "
                                       "strings"), ("created_at", "yesterday", "created_at is not"),
                                      ("mounts", {"a" * 64: "many"}, "mounts are not counts")):
            with self.subTest(field):
                shutil.rmtree(self.root, True)
                self.make_v1_root(dvp._boot_id())
                self.edit_json(path, lambda state: state["volumes"]["plain"].__setitem__(
                    field, value))
                with self.assertRaises(ValueError) as caught:
                    dvp.DirectoryDriver(self.root).start()
                self.assertIn("damaged entry 'plain' (its %s" % problem, str(caught.exception))
                self.assertEqual(os.listdir(os.path.join(self.root, ".docker-volume-plugin")),
                                 [])  # nothing converted

    def test_an_interrupted_version_1_conversion_resumes_where_it_stopped(self):
        """Killed (a systemd start timeout) part way, it started over every
        time: a root too large to convert within the timeout never served."""
        os.mkdir(self.root, 0o700)
        names = ["v%03d" % i for i in range(60)]
        with open(os.path.join(self.root, ".docker-volume-plugin.json"), "w") as f:
            json.dump({"version": 1, "volumes": dict((name, {
                "created_at": "2026-11-28T01:57:59Z", "mounts": {}, "options": {}})
                for name in names)}, f)
        for name in names:
            os.mkdir(os.path.join(self.root, name))
        real, written, kill_at = dvp.Driver._write_record, [], [25]

        def write(driver, name, record):
            if len(written) == kill_at[0]:
                raise KeyboardInterrupt("killed")  # as a SIGKILL would, mid-conversion
            written.append(name)
            real(driver, name, record)
        with unittest.mock.patch.object(dvp.Driver, "_write_record", write):
            with self.assertRaises(KeyboardInterrupt):
                dvp.DirectoryDriver(self.root).start()
            self.assertEqual(written, names[:25])
            del written[:], kill_at[:]
            kill_at.append(None)
            with unittest.mock.patch.object(dvp.DirectoryDriver, "upgrade_report_interval", 0.0):
                with self.assertLogs("docker_volume_plugin", logging.INFO) as logs:
                    driver = self.open()
        self.assertEqual(written, names[25:])  # the first 25 kept as they were
        self.assertEqual(sorted(v["Name"] for v in driver.list()), names)
        self.assertTrue(any("converting: 26 of 60 volume(s) done, about" in line
                            for line in logs.output), logs.output)

    # -- damaged state: never destroy on doubt, never fail Get for a volume that exists --

    def volume_with_data(self, root, options=None):
        """A volume "v" holding a file, and the path of its record."""
        driver = dvp.DirectoryDriver(root)
        driver.create("v", options or {})
        with open(os.path.join(root, "v", "data"), "w") as f:
            f.write("kept")
        record, run_dir = os.path.join(driver.state_dir, "v.json"), driver.run_dir
        return driver, record, run_dir

    def edit_json(self, path, change):
        with open(path) as f:
            value = json.load(f)
        change(value)
        with open(path, "w") as f:
            json.dump(value, f)

    def call(self, driver, method, **request):
        status, body = dvp.Plugin(driver).handle("/VolumeDriver." + method,
                                                 json.dumps(request).encode())
        return status, json.loads(body.decode())

    def test_record_of_an_unknown_version_or_phase_stops_the_start_and_destroys_nothing(self):
        for field, value in (("phase", "Ready"), ("phase", "ready "), ("phase", None),
                             ("version", 3), ("version", None)):
            with self.subTest(field=field, value=value):
                root = os.path.join(temp_dir(self), "root")
                driver, record, _ = self.volume_with_data(root)
                driver.close()
                self.edit_json(record, lambda r: r.pop(field) if value is None
                               else r.__setitem__(field, value))
                with self.assertRaisesRegex(ValueError, "v.json has version .* not starting"):
                    dvp.DirectoryDriver(root).start()
                self.assertTrue(os.path.exists(os.path.join(root, "v", "data")))
                self.assertTrue(os.path.exists(record))

    def test_damaged_record_is_answered_but_never_mounted_or_removed(self):
        damages = {"created_at not a time": lambda r: r.__setitem__("created_at", "yesterday"),
                   "an option not a string": lambda r: r.__setitem__("options", {"uid": 1000}),
                   "options not an object": lambda r: r.__setitem__("options", "uid=1000")}
        for what, damage in damages.items():
            with self.subTest(what):
                root = os.path.join(temp_dir(self), "root")
                driver, record, _ = self.volume_with_data(root, {"uid": "1000"})
                driver.close()
                self.edit_json(record, damage)
                driver = self.open(root)
                status, reply = self.call(driver, "Get", Name="v")
                self.assertEqual(status, 200, reply)  # Docker would forget it otherwise
                self.assertIn("v.json is damaged", reply["Volume"]["Status"]["problem"])
                self.assertEqual([v["Name"] for v in self.call(driver, "List")[1]["Volumes"]],
                                 ["v"])
                for method, request in (("Mount", {"Name": "v", "ID": MOUNT_ID}),
                                        ("Remove", {"Name": "v"}),
                                        ("Create", {"Name": "v", "Opts": None})):
                    status, reply = self.call(driver, method, **request)
                    self.assertEqual(status, 500, method)
                    self.assertIn("its state is damaged", reply["Err"])
                self.assertTrue(os.path.exists(os.path.join(root, "v", "data")))

    def test_record_without_created_at_is_served_without_one(self):
        driver, record, _ = self.volume_with_data(self.root)  # as a 0.1 root converts
        driver.close()
        self.edit_json(record, lambda r: r.pop("created_at"))
        driver = self.open()
        status, reply = self.call(driver, "Get", Name="v")
        self.assertEqual(status, 200, reply)
        self.assertNotIn("CreatedAt", reply["Volume"])
        self.assertNotIn("problem", reply["Volume"]["Status"])
        self.assertEqual(self.call(driver, "Mount", Name="v", ID=MOUNT_ID)[0], 200)

    def test_damaged_mount_count_file_keeps_the_volume_and_the_file(self):
        driver, _, run_dir = self.volume_with_data(self.root)
        driver.mount("v", MOUNT_ID)
        driver.close()
        counts = os.path.join(run_dir, "v.json")
        self.edit_json(counts, lambda state: state.__setitem__("mounts", {MOUNT_ID: "many"}))
        driver = self.open()
        status, reply = self.call(driver, "Get", Name="v")
        self.assertEqual(status, 200, reply)
        self.assertIn("mount count file %s is damaged" % counts,
                      reply["Volume"]["Status"]["problem"])
        self.assertEqual(self.call(driver, "Remove", Name="v")[0], 500)
        self.assertTrue(os.path.exists(counts))
        self.assertTrue(os.path.exists(os.path.join(self.root, "v", "data")))

    def test_a_mountpoint_in_a_count_file_is_not_trusted(self):
        """A count file saying "/etc": the next Mount handed /etc to the container."""
        driver, _, run_dir = self.volume_with_data(self.root)
        driver.mount("v", MOUNT_ID)
        driver.close()
        self.edit_json(os.path.join(run_dir, "v.json"),
                       lambda state: state.__setitem__("mountpoint", "/etc"))
        driver = self.open()
        status, reply = self.call(driver, "Mount", Name="v", ID="b" * 64)
        self.assertEqual(status, 500, reply)
        self.assertNotIn("/etc", json.dumps(reply))
        status, reply = self.call(driver, "Get", Name="v")
        self.assertEqual(reply["Volume"]["Mountpoint"], os.path.join(self.root, "v"))
        self.assertIn("its mountpoint '/etc' is not the volume's", reply["Volume"]["Status"]["problem"])

    def test_record_nested_too_deeply_stops_the_start_with_one_line(self):
        driver, record, _ = self.volume_with_data(self.root)
        driver.close()
        with open(record, "w") as f:
            f.write("[" * 100000)
        with self.assertRaisesRegex(ValueError, "v.json is damaged \\(nested too deeply\\)"):
            dvp.DirectoryDriver(self.root).start()

    def test_shared_state_answers_a_volume_whose_record_another_node_damaged(self):
        driver = dvp.DirectoryDriver(self.root, shared=True)
        self.addCleanup(driver.close)
        driver.create("v", {})
        with open(os.path.join(driver.state_dir, "v.json"), "w") as f:
            f.write("{")
        status, reply = self.call(driver, "Get", Name="v")
        self.assertEqual(status, 200, reply)
        self.assertIn("damaged", reply["Volume"]["Status"]["problem"])
        self.assertEqual(self.call(driver, "Mount", Name="v", ID=MOUNT_ID)[0], 500)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "v")))

    @unittest.skipUnless(os.geteuid() == 0, "mounting a small file system needs root")
    def test_full_then_read_only_root_still_serves_existing_volumes(self):
        os.mkdir(self.root)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", self.root],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", self.root])
        driver = self.open()
        driver.create("a", {})
        driver.create("b", {})
        filler = os.open(os.path.join(self.root, "a", "filler"), os.O_WRONLY | os.O_CREAT)
        try:  # a container fills its volume, and so the root
            while True:
                os.write(filler, b"x" * 4096)
        except OSError as exc:
            self.assertEqual(exc.errno, errno.ENOSPC)
        finally:
            os.close(filler)
        self.assertEqual(driver.mount("a", MOUNT_ID), os.path.join(self.root, "a"))
        for call in (lambda: driver.create("c", {}), lambda: driver.remove("b")):
            with self.assertRaises(dvp.PluginError) as caught:
                call()
            self.assertIn("no space left on the plugin's file system", str(caught.exception))
            self.assertNotIn(self.root, str(caught.exception))  # the log has it
        self.assertEqual(sorted(v["Name"] for v in driver.list()), ["a", "b"])
        driver.close()
        driver = self.open()  # a full root starts
        self.assertEqual(driver.volumes()["a"]["mounts"], {MOUNT_ID: 1})
        driver.close()
        subprocess.run(["mount", "-o", "remount,ro", self.root], check=True)
        driver = self.open()  # so does a read-only one
        self.assertEqual(driver.get("b")["Name"], "b")
        driver.mount("b", MOUNT_ID)
        driver.unmount("b", MOUNT_ID)
        driver.unmount("a", MOUNT_ID)
        with self.assertRaises(dvp.PluginError) as caught:
            driver.create("c", {})
        self.assertIn("the plugin's file system is read-only", str(caught.exception))

    def test_secret_options_are_never_shown(self):
        driver = Secretive(os.path.join(self.base, "state"))
        self.addCleanup(driver.close)
        driver.create("v", {"password": "hunter2", "api_key": "k-123", "size": "1G"})
        self.assertEqual(driver.get("v")["Status"]["options"],
                         {"password": "****", "api_key": "****", "size": "1G"})
        with self.assertRaises(dvp.PluginError) as caught:
            driver.create("v", {"password": "other"})
        self.assertNotIn("hunter2", str(caught.exception))
        self.assertNotIn("other", str(caught.exception))
        with self.assertRaises(dvp.PluginError) as caught:
            driver.create("w", {"size": "lots", "password": "x"})
        self.assertIn("option size=lots must be a size", str(caught.exception))
        record = os.path.join(self.base, "state", "v.json")
        self.assertEqual(stat.S_IMODE(os.stat(record).st_mode), 0o600)  # root alone reads it
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(record)).st_mode), 0o700)

    def test_option_parsers(self):
        self.assertEqual(dvp.size_option("512M"), 512 << 20)
        self.assertEqual(dvp.size_option("2g"), 2 << 30)
        self.assertEqual(dvp.size_option("100"), 100)
        self.assertEqual(dvp.uint_option("4294967294"), 4294967294)
        self.assertEqual(dvp.mode_option("01777"), 0o1777)
        for parser, bad in ((dvp.size_option, "1X"), (dvp.size_option, "9" * 40),
                            (dvp.uint_option, "4294967295"), (dvp.mode_option, "2755")):
            self.assertRaises(ValueError, parser, bad)

    def test_mounts_command_shows_and_releases_a_stuck_mount(self):
        driver = self.open()
        driver.create("v", {})
        sock = os.path.join(self.base, "p.sock")
        server = dvp.UnixPluginServer(sock, driver).start()
        self.addCleanup(server.stop, 1.0)
        with dvp.PluginClient(sock) as client:  # as left by a container that died with its engine
            client.mount("v", "a" * 64)
            client.mount("v", "a" * 64)
            client.mount("v", "b" * 64)

        def run(*args):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = dvp.main(["mounts", "--root", self.root] + list(args))
            return status, out.getvalue(), err.getvalue()
        os.environ["DOCKER_HOST"], previous = "unix://" + os.path.join(self.base, "none.sock"), \
            os.environ.get("DOCKER_HOST")
        self.addCleanup(lambda: os.environ.pop("DOCKER_HOST") if previous is None else
                        os.environ.__setitem__("DOCKER_HOST", previous))
        status, out, _ = run()
        self.assertEqual(status, 0)
        self.assertRegex(out, r"\nv\s+3\s+cannot ask\s+a{64}\(2\) b{64}\(1\)\n")
        status, out, err = run("--release", "v", "--plugin", sock)
        self.assertEqual((status, out), (1, "released 0 mount(s) of volume v, kept 3\n"))
        self.assertEqual(err.count("Docker cannot be asked which container holds it"), 2, err)
        self.assertIn("keeping: mount %s (2) of volume v: " % ("a" * 64), err)
        self.assertEqual(driver.volumes()["v"]["mounts"], {"a" * 64: 2, "b" * 64: 1})
        status, out, _ = run("--release", "v", "--plugin", sock, "--force")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines(), [
            "released mount %s (2) of volume v: --force (Docker cannot be asked which container "
            "holds it (is DOCKER_HOST set?))" % ("a" * 64),
            "released mount %s (1) of volume v: --force (Docker cannot be asked which container "
            "holds it (is DOCKER_HOST set?))" % ("b" * 64),
            "released 3 mount(s) of volume v"])
        self.assertEqual(driver.volumes()["v"]["mounts"], {})
        driver.remove("v")

    def test_mounts_release_of_a_node_that_is_gone(self):
        """Node b died with a volume mounted: --release on node a released
        nothing, said it had, and the volume could never be removed."""
        nodes = os.path.join(self.root, ".docker-volume-plugin", "nodes")
        a = dvp.DirectoryDriver(self.root, os.path.join(nodes, "a"), shared=True)
        self.addCleanup(a.close)
        b = dvp.DirectoryDriver(self.root, os.path.join(nodes, "b"), shared=True)
        a.create("v", {})
        b.mount("v", MOUNT_ID)
        sock = os.path.join(self.base, "a.sock")
        server = dvp.UnixPluginServer(sock, a).start()
        self.addCleanup(server.stop, 1.0)
        here = ["mounts", "--root", self.root, "--plugin", sock, "--release", "v"]
        code, out, err = run_main(self, *here + ["--node", "a"])
        self.assertEqual((code, out), (0, "volume v has no mounts\n"))
        code, out, err = run_main(self, *here + ["--node", "b", "--force"])
        self.assertEqual(code, 1)  # b still serves: released there, not from here
        self.assertIn("node b's plugin is running", err)
        b.close()  # the node is gone
        code, out, err = run_main(self, *here + ["--node", "b"])
        self.assertEqual(code, 1)
        self.assertIn("node b's engine cannot be asked from here", err)
        code, out, err = run_main(self, *here + ["--node", "b", "--force"])
        self.assertEqual(code, 0, err)
        self.assertEqual(out.splitlines()[-1], "released 1 mount(s) of volume v on node b")
        a.remove("v")  # nothing mounted anywhere now
        self.assertEqual(a.list(), [])

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("mkfs.ext4"), "needs root and mkfs.ext4")
    def test_quota_example_enforces_its_size_and_passes_check(self):
        sys.path.insert(0, os.path.join(HERE, "examples"))
        self.addCleanup(sys.path.remove, os.path.join(HERE, "examples"))
        import quota
        driver = quota.QuotaVolumes(os.path.join(self.base, "quota"))
        self.addCleanup(driver.close)
        driver.create("db", {"size": "16M"})
        path = driver.mount("db", MOUNT_ID)
        self.assertTrue(os.path.ismount(path))
        with self.assertRaises(OSError) as caught:
            with open(os.path.join(path, "big"), "wb") as f:
                f.write(b"x" * (20 << 20))
        self.assertEqual(caught.exception.errno, errno.ENOSPC)
        driver.unmount("db", MOUNT_ID)
        self.assertFalse(os.path.ismount(path))
        driver.remove("db")
        self.assertEqual(os.listdir(driver.images), [])
        sock = os.path.join(self.base, "q.sock")
        server = dvp.UnixPluginServer(sock, driver).start()
        self.addCleanup(server.stop, 1.0)
        results = dvp.check_plugin(sock, options={"size": "16M"}, bad_options={"size": "1"})
        self.assertEqual([(r["rule"], r["detail"]) for r in results if not r["passed"]], [])
        with open(quota.__file__) as source:
            lines = [l for l in source if l.strip() and not l.strip().startswith("#")]
        self.assertLess(len(lines), 70)

    def test_options_with_a_default_or_required_are_recorded_with_the_volume(self):
        class Images(dvp.Driver):
            options = {"size": dvp.Option(dvp.size_option, required=True),
                       "fs": dvp.Option(str, default="ext4"), "label": str}
        state = os.path.join(self.base, "state")
        driver = Images(state)
        with self.assertRaisesRegex(dvp.PluginError, "option size is required"):
            driver.create("a", {"label": "x"})
        driver.create("a", {"size": "1M"})
        self.assertEqual(driver.get("a")["Status"]["options"], {"size": "1M", "fs": "ext4"})
        driver.create("a", {"size": "1M"})  # the engine's retry: the same volume
        with self.assertRaisesRegex(dvp.PluginError, "must be a size"):
            driver.create("b", {"size": "lots"})
        driver.close()
        Images.options = dict(Images.options, fs=dvp.Option(str, default="xfs"))  # a later version
        driver = Images(state)
        self.addCleanup(driver.close)
        self.assertEqual(driver.get("a")["Status"]["options"]["fs"], "ext4")  # as it was made
        self.assertEqual(driver._parsed("a", driver._lookup("a")), {"size": 1 << 20, "fs": "ext4"})

    def test_run_gives_the_programs_own_message(self):
        self.assertEqual(dvp.Driver.run("sh", "-c", "echo hi"), "hi\n")
        for argv, kwargs, message in (
                (("sh", "-c", "echo 'mount: wrong fs type' >&2; exit 32"), {},
                 "^sh failed: mount: wrong fs type$"),
                (("sh", "-c", "exit 3"), {}, "^sh failed: exit status 3$"),
                (("dvp-no-such-program",), {}, "dvp-no-such-program: no such program"),
                (("sleep", "5"), {"timeout": 0.1}, "sleep took over 0.1s")):
            with self.assertRaisesRegex(dvp.PluginError, message):
                dvp.Driver.run(*argv, **kwargs)
        self.assertEqual(dvp.Driver.run("cat", input="on stdin"), "on stdin")
        self.assertEqual(dvp.Driver.run("cat"), "")  # /dev/null otherwise

    def test_a_refused_create_leaves_storage_it_did_not_make_as_it_was(self):
        sys.path.insert(0, os.path.join(HERE, "examples"))
        self.addCleanup(sys.path.remove, os.path.join(HERE, "examples"))
        import quota
        root = os.path.join(self.base, "quota")
        driver = quota.QuotaVolumes(root)
        driver.create("db", {"size": "16M"})
        with open(os.path.join(driver.mount("db", MOUNT_ID), "data"), "w") as f:
            f.write("precious")
        driver.unmount("db", MOUNT_ID)
        image, state_dir = driver._image("db"), driver.state_dir
        driver.close()
        with open(image, "rb") as f:
            before = f.read()
        shutil.rmtree(state_dir)  # a state directory wiped by mistake: an image with no record
        driver = quota.QuotaVolumes(root)
        self.addCleanup(driver.close)
        for attempt in range(2):  # as the engine retries
            with self.assertRaises(dvp.PluginError) as caught:
                driver.create("db", {"size": "16M"})
            self.assertIn("its storage is there already, with no record", str(caught.exception))
        with open(image, "rb") as f:
            self.assertEqual(f.read(), before)  # neither destroyed nor reformatted
        self.assertIsNone(driver.get("db"))
        # Storage that appears between the check and provision() is left alone too.
        driver.exists = lambda name, options: False
        with self.assertRaisesRegex(dvp.PluginError, "appeared while it was being made"):
            driver.create("db", {"size": "16M"})
        with open(image, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(os.listdir(state_dir), [])  # and no record is left of the attempt

    def test_readme_driver_with_driver_options_passes_check(self):
        module = os.path.join(self.base, "hostdirs.py")
        with open(module, "w") as f:
            f.write(hostdirs_example())
        allowed, sock = os.path.join(self.base, "srv"), os.path.join(self.base, "p.sock")
        os.mkdir(allowed, 0o700)
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock,
                             "--driver", module + ":HostDirectories", "--driver-opt",
                             "state_dir=" + os.path.join(self.base, "state"), "--driver-opt",
                             "allowed=" + allowed], stderr=subprocess.PIPE, universal_newlines=True,
                      env=dict(os.environ, PYTHONPATH=HERE))
        _wait_for_socket(sock, proc)
        results = dvp.check_plugin(sock, options={"path": os.path.join(allowed, "web")},
                                   bad_options={"path": "/etc"})
        self.assertEqual([(r["rule"], r["detail"]) for r in results if not r["passed"]], [])
        self.assertIn("bad-option", [r["rule"] for r in results if r["status"] == "pass"])
        with dvp.PluginClient(sock) as client:
            client.create("web", {"path": os.path.join(allowed, "web")})
            self.assertEqual(client.mount("web", MOUNT_ID), os.path.join(allowed, "web"))
            with open(os.path.join(allowed, "web", "index.html"), "w") as f:
                f.write("hi")
            client.unmount("web", MOUNT_ID)
            client.create("swapped", {"path": os.path.join(allowed, "swapped")})
            os.rmdir(os.path.join(allowed, "swapped"))
            os.symlink("/etc", os.path.join(allowed, "swapped"))  # after the create's check
            with self.assertRaisesRegex(dvp.PluginCallError, "is not under"):
                client.mount("swapped", MOUNT_ID)
            client.remove("web")
        self.assertTrue(os.path.exists(os.path.join(allowed, "web", "index.html")))  # data kept
        lines = [l for l in hostdirs_example().splitlines() if l.strip() and not l.strip().startswith("#")]
        self.assertLessEqual(len(lines), 40)
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)


class SharedStateTests(QuietLogs, unittest.TestCase):
    """One root seen by several nodes (scope global): two drivers in one
    process stand for two nodes' plugins on a shared file system."""

    def setUp(self):
        super(SharedStateTests, self).setUp()
        self.root = os.path.join(temp_dir(self), "shared")

    def node(self, name):
        run_dir = os.path.join(self.root, ".docker-volume-plugin", "nodes", name)
        driver = dvp.DirectoryDriver(self.root, run_dir, shared=True)
        self.addCleanup(driver.close)
        return driver

    def test_names_are_checked_at_every_call_not_only_create(self):
        node = self.node("a")
        outside = temp_dir(self)  # a record planted where ../ would reach
        escape = os.path.relpath(os.path.join(outside, "victim"), node.state_dir)
        record = {"version": 2, "phase": "ready", "options": {}, "created_at": None}
        with open(os.path.join(outside, "victim.json"), "w") as f:
            json.dump(record, f)
        with open(os.path.join(outside, "victim.json")) as f:
            planted = f.read()
        plugin = dvp.Plugin(node)
        for method, request in (("Get", {"Name": escape}), ("Path", {"Name": escape}),
                                ("Mount", {"Name": escape, "ID": MOUNT_ID}),
                                ("Unmount", {"Name": escape, "ID": MOUNT_ID}),
                                ("Remove", {"Name": escape})):
            status, body = plugin.handle("/VolumeDriver." + method, json.dumps(request).encode())
            self.assertEqual(status, 500, method)
            self.assertIn("no such volume", json.loads(body.decode())["Err"], method)
        self.assertEqual(os.listdir(outside), ["victim.json"])  # nothing written beside it
        with open(os.path.join(outside, "victim.json")) as f:
            self.assertEqual(f.read(), planted)  # nor over it
        self.assertEqual(node.list(), [])

    def test_a_volume_made_on_one_node_is_used_on_the_other(self):
        a, b = self.node("a"), self.node("b")
        a.create("v", {"mode": "0750"})
        self.assertEqual([v["Name"] for v in b.list()], ["v"])
        self.assertEqual(b.get("v")["Status"]["options"], {"mode": "0750"})
        b.create("v", {"mode": "0750"})  # each node's engine creates it again: the same volume
        with self.assertRaises(dvp.PluginError):
            b.create("v", {"mode": "0700"})
        path = b.mount("v", MOUNT_ID)
        with open(os.path.join(path, "f"), "w") as f:
            f.write("b wrote")
        with self.assertRaises(dvp.PluginError) as caught:
            a.remove("v")  # nothing mounted on a, but b has it
        self.assertIn("mounted on node b", str(caught.exception))
        with open(os.path.join(a.mount("v", "c" * 64), "f")) as f:
            self.assertEqual(f.read(), "b wrote")
        a.unmount("v", "c" * 64)
        b.unmount("v", MOUNT_ID)
        a.remove("v")
        self.assertIsNone(b.get("v"))
        self.assertEqual(b.list(), [])
        with self.assertRaises(dvp.VolumeNotFound):
            b.mount("v", MOUNT_ID)

    def test_a_create_a_dead_node_cut_short_is_finished_by_the_next_create(self):
        """Node a killed inside provision(): the next create on node b failed
        ("its storage appeared"), and left storage no record owned."""
        a, b = self.node("a"), self.node("b")
        a.start()
        b.start()  # serving already: its start would have finished it
        with open(os.path.join(a.state_dir, "v.json"), "w") as f:
            json.dump({"version": 2, "phase": "creating", "options": {}, "created_at": None}, f)
        os.mkdir(os.path.join(self.root, "v"))
        with open(os.path.join(self.root, "v", "half"), "w") as f:
            f.write("half made")
        b.create("v", {})
        self.assertEqual(os.listdir(os.path.join(self.root, "v")), [])  # made anew
        self.assertEqual([v["Name"] for v in a.list()], ["v"])

    def test_a_node_stopped_holding_the_lock_is_named_and_waited_for_no_longer(self):
        """One node stopped (SIGSTOP, a hung NFS client) inside a call: every
        other node's calls waited for ever."""
        a, b = self.node("a"), self.node("b")
        a.create("v", {})
        b.shared_lock_timeout = 0.3
        outcome = []

        def mount():
            try:
                outcome.append(b.mount("v", MOUNT_ID))
            except Exception as exc:
                outcome.append(exc)
        with a._shared_lock():  # as a stopped node holds it
            caller = threading.Thread(target=mount)
            caller.daemon = True
            caller.start()
            caller.join(5)
            self.assertFalse(caller.is_alive())
        self.assertIsInstance(outcome[0], dvp.PluginError)
        self.assertRegex(str(outcome[0]), r"held for over 0.3s by node a \(pid %d\) since "
                         r"\d{4}-" % os.getpid())
        self.assertEqual(b.mount("v", MOUNT_ID), os.path.join(self.root, "v"))  # once released
        b.unmount("v", MOUNT_ID)

    def test_both_nodes_creating_at_once_make_one_volume(self):
        a, b = self.node("a"), self.node("b")
        errors = []

        def create(driver, name):
            try:
                driver.create(name, {"uid": "1000"})
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=create, args=(driver, "v%d" % i))
                   for i in range(20) for driver in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(len(a.list()), 20)
        self.assertEqual(sorted(v["Name"] for v in a.list()), sorted(v["Name"] for v in b.list()))
        for volume in a.list():
            self.assertEqual(os.stat(volume["Mountpoint"]).st_uid, 1000)

    def test_nodes_count_apart_and_one_node_runs_once(self):
        a = self.node("a")
        a.create("v", {})
        a.mount("v", MOUNT_ID)
        with self.assertRaises(OSError):
            self.node("a")  # a second process for the same node
        self.assertEqual(a.volumes()["v"]["mounts"], {MOUNT_ID: 1})
        self.assertEqual(self.node("b").volumes()["v"]["mounts"], {})

    def test_default_run_dir_is_this_hosts(self):
        driver = dvp.DirectoryDriver(self.root, shared=True)
        self.addCleanup(driver.close)
        self.assertEqual(driver.run_dir, os.path.join(
            os.path.realpath(self.root), ".docker-volume-plugin", "nodes", socket.gethostname()))

    def test_global_scope_of_a_driver_subclass_means_shared(self):
        class Global(dvp.DirectoryDriver):
            scope = "global"
        driver = Global(self.root)
        self.addCleanup(driver.close)
        self.assertTrue(driver.shared)


KILL_BURST = '''
import json, sys
sys.path.insert(0, sys.argv[1])
import docker_volume_plugin as dvp
client = dvp.PluginClient(sys.argv[2], timeout=10)
log = open(sys.argv[3], "a", buffering=1)
prefix = sys.argv[4]

def step(op, name, call, *args):
    log.write(json.dumps(["begin", op, name]) + "\\n")
    call(name, *args)
    log.write(json.dumps(["done", op, name]) + "\\n")

i = 0
while True:
    name = "%s-v%d" % (prefix, i)
    step("create", name, client.create, {"mode": "0700"})
    step("mount", name, client.mount, "m%d" % i)
    step("mount", name, client.mount, "m%d" % i)
    if i % 3 == 0:
        step("unmount", name, client.unmount, "m%d" % i)
        step("unmount", name, client.unmount, "m%d" % i)
        step("remove", name, client.remove)
    i += 1
'''


#: Seeds the tests' random choices; another value gives other cuts (DVP_TEST_SEED=N).
SEED = int(os.environ.get("DVP_TEST_SEED", "20261128"))


ATTACHING_DRIVER = '''
import os, signal
import docker_volume_plugin as dvp


class Attaching(dvp.Driver):
    """Storage that is "attached" while MARKS/NAME exists, as a mount would be.
    Its detach fails while busy; with crash=attach or crash=detach the plugin
    is killed (SIGKILL) in the middle of that hook."""

    detach_retry_interval = 0.05

    def __init__(self, state_dir, marks, crash=""):
        self.marks, self.crash, self.busy, self.attached = marks, crash, False, 0
        self.failing = False
        dvp.Driver.__init__(self, state_dir)

    def attach(self, name, options):
        if self.failing:
            raise dvp.PluginError("mount: %s: no such device" % name)
        self.attached += 1
        path = os.path.join(self.marks, name)
        os.makedirs(path, exist_ok=True)
        if self.crash == "attach":
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    def detach(self, name, options, mountpoint):
        if self.busy:
            raise dvp.PluginError("umount: %s: target is busy" % mountpoint)
        if self.crash == "detach":
            os.kill(os.getpid(), signal.SIGKILL)
        path = mountpoint or os.path.join(self.marks, name)  # None: a crash in attach
        if os.path.isdir(path):
            os.rmdir(path)

    def is_attached(self, name, options, mountpoint):
        return os.path.isdir(mountpoint)
'''


class DetachTests(QuietLogs, unittest.TestCase):
    """A mounting driver's detach that fails, or that a crash cuts short."""

    def setUp(self):
        super(DetachTests, self).setUp()
        self.base = temp_dir(self)
        self.state, self.marks = os.path.join(self.base, "state"), os.path.join(self.base, "marks")
        namespace = {}
        exec(ATTACHING_DRIVER, namespace)
        self.Attaching = namespace["Attaching"]

    def open(self):
        driver = self.Attaching(self.state, self.marks)
        self.addCleanup(driver.close)
        driver.start()
        return driver

    def attached(self):
        return os.path.isdir(os.path.join(self.marks, "v"))

    def wait_until_detached(self, seconds=5.0):
        deadline = time.time() + seconds
        while self.attached() and time.time() < deadline:
            time.sleep(0.02)
        self.assertFalse(self.attached())

    def test_an_unmount_whose_detach_fails_is_final_and_the_detach_tried_again(self):
        driver = self.open()
        driver.create("v", {})
        driver.busy = True  # a process still has a file open under the mount
        driver.mount("v", MOUNT_ID)
        driver.unmount("v", MOUNT_ID)  # the engine has forgotten the mount: no error
        status = driver.get("v")["Status"]
        self.assertEqual((status["mounts"], status["detach pending"]), (0, True))
        code, out, _ = run_main(self, "mounts", "--state-dir", driver.state_dir,
                                "--run-dir", driver.run_dir)
        self.assertRegex(out, r"\nv +0  - +\(detach pending\)\n")
        with self.assertRaisesRegex(dvp.PluginError, "still attached"):
            driver.remove("v")
        self.assertTrue(self.attached())  # never destroyed under attached storage
        self.assertEqual(driver.mount("v", "b" * 64), os.path.join(self.marks, "v"))
        self.assertEqual(driver.attached, 1)  # still attached: used as it is
        driver.unmount("v", "b" * 64)
        driver.busy = False  # the holder is gone: the timer detaches it, nobody asks
        self.wait_until_detached()
        self.assertNotIn("detach pending", driver.get("v")["Status"])
        driver.remove("v")
        self.assertIsNone(driver.get("v"))

    def test_storage_gone_under_mounts_held_is_attached_again_by_the_next_mount(self):
        driver = self.open()
        driver.create("v", {})
        path = driver.mount("v", MOUNT_ID)
        os.rmdir(path)  # gone under a container (a managed plugin's FUSE process killed)
        driver.failing = True
        with self.assertRaisesRegex(dvp.PluginError, "no such device"):
            driver.mount("v", "b" * 64)  # that mount fails, the one held stays
        self.assertEqual(driver.volumes()["v"]["mounts"], {MOUNT_ID: 1})
        driver.failing = False
        with self.assertLogs("docker_volume_plugin", "WARNING") as logs:
            self.assertEqual(driver.mount("v", "b" * 64), path)
        self.assertIn("is gone under 1 mount(s); attaching it again", logs.output[0])
        self.assertEqual((driver.attached, self.attached()), (2, True))
        driver.mount("v", "c" * 64)
        self.assertEqual(driver.attached, 2)  # there: used as it is
        self.assertEqual(driver.volumes()["v"]["mounts"], {MOUNT_ID: 1, "b" * 64: 1, "c" * 64: 1})
        for mount_id in (MOUNT_ID, "b" * 64, "c" * 64):
            driver.unmount("v", mount_id)
        self.assertFalse(self.attached())

    def test_a_pending_detach_is_done_at_the_next_start_or_removal(self):
        driver = self.open()
        driver.create("v", {})
        driver.busy = True
        driver.mount("v", MOUNT_ID)
        driver.unmount("v", MOUNT_ID)
        driver.close()  # the plugin stops (or is upgraded) with the detach pending
        self.assertTrue(self.attached())
        driver = self.open()
        self.assertFalse(self.attached())  # detached at start
        self.assertNotIn("detach pending", driver.get("v")["Status"])
        driver.busy = True
        driver.detach_retry_interval = 3600.0
        driver.mount("v", MOUNT_ID)
        driver.unmount("v", MOUNT_ID)
        driver.busy = False
        driver.remove("v")  # detached by the removal itself
        self.assertFalse(self.attached())

    def test_a_subclass_may_call_the_base_first_and_recovery_uses_its_attributes(self):
        class BaseFirst(dvp.Driver):  # as most Python code is written
            def __init__(self, state_dir, bin_dir):
                dvp.Driver.__init__(self, state_dir)
                self.bin_dir = bin_dir

            def destroy(self, name, options):
                os.rmdir(os.path.join(self.bin_dir, name))
        bin_dir = os.path.join(self.base, "bin")
        os.makedirs(os.path.join(bin_dir, "half"))
        os.makedirs(self.state)  # a create that a crash cut short
        with open(os.path.join(self.state, "half.json"), "w") as f:
            json.dump({"version": 2, "phase": "creating", "options": {}, "created_at": None}, f)
        driver = BaseFirst(self.state, bin_dir)
        self.addCleanup(driver.close)
        self.assertTrue(os.path.isdir(os.path.join(bin_dir, "half")))  # nothing done yet
        dvp.Plugin(driver)  # what every server does before it serves
        self.assertFalse(os.path.isdir(os.path.join(bin_dir, "half")))
        self.assertIsNone(driver.get("half"))

    def test_kill_9_in_attach_or_detach_leaves_nothing_attached_and_forgotten(self):
        module = os.path.join(self.base, "attaching.py")
        with open(module, "w") as f:
            f.write(ATTACHING_DRIVER)
        sock = os.path.join(self.base, "p.sock")

        def start(crash):
            args = [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock, "--driver",
                    module + ":Attaching", "--driver-opt", "state_dir=" + self.state,
                    "--driver-opt", "marks=" + self.marks, "--driver-opt", "crash=" + crash]
            proc = _spawn(self, args, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=HERE))
            _wait_for_socket(sock, proc)
            return proc

        for point in ("attach", "detach"):
            with self.subTest(point):
                proc = start(point)
                with dvp.PluginClient(sock) as client:
                    client.create("v")
                    if point == "detach":
                        client.mount("v", MOUNT_ID)
                    with self.assertRaises(dvp.PluginCallError):  # killed under the call
                        (client.mount if point == "attach" else client.unmount)("v", MOUNT_ID)
                self.assertEqual(proc.wait(10), -signal.SIGKILL)
                self.assertTrue(self.attached())
                os.unlink(sock)
                proc = start("")
                self.assertFalse(self.attached())  # undone at start
                with dvp.PluginClient(sock) as client:
                    self.assertEqual(client.get("v")["Status"], {"options": {}, "mounts": 0})
                    client.remove("v")
                proc.terminate()
                self.assertEqual(proc.wait(10), 0)


class KillTests(QuietLogs, unittest.TestCase):
    """SIGKILL in the middle of bursts of calls, after a number of answered
    calls chosen from SEED; then every answer the client got must hold."""

    def test_sigkill_in_a_burst_loses_nothing_answered(self):
        self.storm(os.path.join(temp_dir(self), "root"), rounds=2)

    def test_sigkill_storm_with_10000_volumes(self):
        # In memory where there is a tmpfs: 10,000 directories and records take
        # seconds to make on a disk, and a SIGKILL loses nothing that fsync keeps.
        root = os.path.join(temp_dir(self, where="/dev/shm" if os.path.isdir("/dev/shm") else None),
                            "root")
        records = os.path.join(root, ".docker-volume-plugin")
        os.makedirs(records, 0o700)
        record = json.dumps({"version": 2, "phase": "ready", "options": {"mode": "0700"},
                             "created_at": "2026-01-01T00:00:00Z"})
        crowd = ["crowd%05d" % i for i in range(10000)]
        for name in crowd:  # written as the driver writes them, to save minutes of fsyncs
            os.mkdir(os.path.join(root, name), 0o700)
            with open(os.path.join(records, name + ".json"), "w") as f:
                f.write(record)
        driver = self.storm(root, rounds=1)
        volumes = driver.volumes()
        for name in crowd:
            self.assertEqual(volumes[name]["options"], {"mode": "0700"}, name)

    def storm(self, root, rounds):
        """Kill the plugin mid-burst ``rounds`` times; check every answer survived."""
        base = os.path.dirname(root)
        sock = os.path.join(base, "p.sock")
        burst = os.path.join(base, "burst.py")
        with open(burst, "w") as f:
            f.write(KILL_BURST)
        expected, cut_short = {}, {}  # name -> answered mount count; name -> call cut short
        choose = random.Random(SEED)
        for round_number in range(rounds):
            answers = os.path.join(base, "log%d" % round_number)
            proc = _spawn(self, [sys.executable, MODULE, "serve", "--root", root, "--socket", sock,
                                 "--log-level", "WARNING"], stderr=subprocess.PIPE, universal_newlines=True)
            _wait_for_socket(sock, proc, seconds=60)
            client = _spawn(self, [sys.executable, burst, HERE, sock, answers, "r%d" % round_number],
                            stderr=subprocess.DEVNULL)
            self.wait_for_answers(answers, choose.randint(20, 80), client)
            proc.kill()  # SIGKILL, in the middle of the burst
            proc.wait()
            client.wait(20)
            records = os.path.join(root, ".docker-volume-plugin")
            for record in os.listdir(records):
                if ".tmp-" not in record and not record.startswith("crowd"):
                    with open(os.path.join(records, record)) as f:
                        json.load(f)  # always whole, valid files
            with open(answers) as f:
                events = [json.loads(line) for line in f]
            pending = {}
            for phase, op, name in events:
                if phase == "begin":
                    pending = {name: op}
                    continue
                pending = {}
                if op == "create":
                    expected[name] = 0
                elif op in ("mount", "unmount"):
                    expected[name] += 1 if op == "mount" else -1
                else:
                    del expected[name]
            self.assertEqual(len(pending), 1)  # the kill cut one call short
            cut_short.update(pending)
        # Restart and compare with every answer the clients got.
        driver = dvp.DirectoryDriver(root)
        self.addCleanup(driver.close)
        listed = set(v["Name"] for v in driver.list() if not v["Name"].startswith("crowd"))
        for name, mounts in expected.items():
            if cut_short.get(name) == "remove" and name not in listed:
                continue
            self.assertIn(name, listed)
            volume = driver.get(name)
            self.assertEqual(volume["Status"]["options"], {"mode": "0700"})
            allowed = {mounts, mounts + (cut_short.get(name) == "mount"),
                       mounts - (cut_short.get(name) == "unmount")}
            self.assertIn(volume["Status"]["mounts"], allowed, name)
            self.assertTrue(os.path.isdir(volume["Mountpoint"]))
        for name in listed - set(expected):
            self.assertEqual(cut_short.get(name), "create", name)
        for name in listed:  # all or nothing: never a volume without its options
            self.assertEqual(driver.get(name)["Status"]["options"], {"mode": "0700"}, name)
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode), 0o700, name)
        return driver

    def wait_for_answers(self, path, count, client, seconds=60):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if client.poll() is not None:
                self.fail("the burst client stopped before %d answers" % count)
            if os.path.exists(path):
                with open(path) as f:
                    if sum(line.startswith('["done"') for line in f) >= count:
                        return
            time.sleep(0.005)
        self.fail("fewer than %d answers in %ds (seed %d)" % (count, seconds, SEED))


# -- check: the conformance checker and plugin lookup ---------------------------------


class CheckableDriver(MemoryDriver):
    """The fake driver, with mountpoints on this host and mounts counted per ID."""

    def __init__(self, base):
        MemoryDriver.__init__(self)
        self.base = base
        self.mounts = {}  # name -> {mount ID: count}

    def create(self, name, options):
        MemoryDriver.create(self, name, options)
        self.volumes[name]["Mountpoint"] = os.path.join(self.base, name)

    def remove(self, name):
        if self.mounts.get(name):
            raise dvp.PluginError("volume %s is in use" % name)
        MemoryDriver.remove(self, name)

    def mount(self, name, mount_id):
        if name not in self.volumes:
            raise dvp.VolumeNotFound("no such volume: %s" % name)
        path = MemoryDriver.mount(self, name, mount_id)
        os.makedirs(path, exist_ok=True)
        counts = self.mounts.setdefault(name, {})
        counts[mount_id] = counts.get(mount_id, 0) + 1
        return path

    def unmount(self, name, mount_id):
        MemoryDriver.unmount(self, name, mount_id)
        if name not in self.volumes:
            raise dvp.VolumeNotFound("no such volume: %s" % name)
        counts = self.mounts.get(name, {})
        if counts.get(mount_id, 0) > 1:
            counts[mount_id] -= 1
        else:
            counts.pop(mount_id, None)


class IndependentPlugin(http.server.BaseHTTPRequestHandler):
    """A correct plugin written on http.server alone, none of this module's
    server: headers and body in two writes, errors as 500 + Err."""

    protocol_version = "HTTP/1.1"
    driver = None  # set per server

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if len(body) < length:
            return  # the client went away mid-request
        request = json.loads(body or b"{}")
        name, driver = request.get("Name"), self.server.driver
        try:
            if self.path == "/Plugin.Activate":
                reply = {"Implements": ["VolumeDriver"]}
            elif self.path == "/VolumeDriver.Capabilities":
                reply = {"Capabilities": {"Scope": "local"}}
            elif self.path == "/VolumeDriver.Create":
                driver.create(name, request.get("Opts") or {})
                reply = {}
            elif self.path == "/VolumeDriver.Remove":
                driver.remove(name)
                reply = {}
            elif self.path == "/VolumeDriver.Mount":
                reply = {"Mountpoint": driver.mount(name, request["ID"])}
            elif self.path == "/VolumeDriver.Path":
                volume = driver.get(name)
                if volume is None:
                    raise dvp.VolumeNotFound("no such volume")
                reply = {"Mountpoint": volume["Mountpoint"]}
            elif self.path == "/VolumeDriver.Unmount":
                driver.unmount(name, request["ID"])
                reply = {}
            elif self.path == "/VolumeDriver.Get":
                volume = driver.get(name)
                if volume is None:
                    raise dvp.VolumeNotFound("no such volume")
                reply = {"Volume": {"Name": name, "Mountpoint": volume.get("Mountpoint", "")}}
            else:
                reply = {"Volumes": [{"Name": v["Name"]} for v in driver.list()]}
            status = 200
        except dvp.PluginError as exc:
            status, reply = 500, {"Err": str(exc)}
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class IndependentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _OneAtATime(dvp.UnixPluginServer):
    """A single-threaded server, as a naive plugin would have."""

    def process_request(self, request, client_address):
        self._serve_connection(request, client_address)


class CheckerTests(QuietLogs, unittest.TestCase):
    def setUp(self):
        super(CheckerTests, self).setUp()
        self.dir = temp_dir(self)
        self.sock = os.path.join(self.dir, "p.sock")
        self.driver = CheckableDriver(os.path.join(self.dir, "mnt"))

    def check(self, plugin=None, server_class=dvp.UnixPluginServer, **kwargs):
        server = self.server = server_class(self.sock, plugin if plugin is not None else self.driver)
        server.start()
        self.addCleanup(server.stop, 1.0)
        return dvp.check_plugin(self.sock, **kwargs)

    def failures(self, results):
        return [(r["rule"], r["detail"]) for r in results if not r["passed"]]

    def assert_fails(self, rule, message, results):
        failures = self.failures(results)
        self.assertIn(rule, [f[0] for f in failures], failures)
        detail = [f[1] for f in failures if f[0] == rule][0]
        self.assertIn(message, detail)

    def test_passes_the_fake_driver_and_touches_no_other_volume(self):
        self.driver.create("keep", {})
        self.driver.mount("keep", MOUNT_ID)
        results = self.check()
        self.assertEqual(self.failures(results), [])
        rules = [r["rule"] for r in results]
        for rule in ("reachable", "activate", "capabilities", "get-unknown", "create", "get",
                     "list", "mount", "path", "mount-counting", "unmount", "concurrency", "lock",
                     "unknown-volume", "podman", "remove", "get-removed", "list-removed",
                     "errors", "http", "created-at", "deadlines"):
            self.assertIn(rule, rules)
        self.assertEqual(list(self.driver.volumes), ["keep"])  # scratch volumes gone
        self.assertEqual(self.driver.mounts["keep"], {MOUNT_ID: 1})
        self.assertEqual(sum(sum(c.values()) for c in self.driver.mounts.values()), 1)

    def test_activates_with_every_engines_headers(self):
        results = self.check(server_class=RecordingServer)
        activations = [r["detail"] for r in results if r["rule"] == "activate"]
        self.assertEqual(len(activations), 3, activations)
        self.assertEqual([r for r in results if not r["passed"]], [])

    def test_activate_fails_if_a_host_form_is_refused(self):
        class NoEmptyHost(RecordingHandler):
            def do_POST(self):
                if self.path == "/Plugin.Activate" and self.headers.get("Host") == "":
                    self.send_error(400, "empty Host")
                    return
                RecordingHandler.do_POST(self)
        server_class = type("NoEmptyHostServer", (RecordingServer,), {"handler_class": NoEmptyHost})
        results = self.check(server_class=server_class)
        self.assert_fails("activate", "docker's request (Host '') got", results)
        hosts = set(headers.get("host") for _, path, headers in self.server.recorded
                    if path == "Plugin.Activate")
        self.assertEqual(hosts, {"plugin.moby.localhost", "plugin"})

    def test_passes_the_builtin_driver(self):
        driver = dvp.DirectoryDriver(os.path.join(self.dir, "root"))
        self.addCleanup(driver.close)
        results = self.check(driver, options={"mode": "0700"})
        self.assertEqual(self.failures(results), [])
        self.assertEqual(driver.list(), [])
        self.assertEqual(os.listdir(driver.root), [".docker-volume-plugin"])
        self.assertEqual(os.listdir(driver.state_dir), [])

    def test_activate_without_volume_driver(self):
        plugin = dvp.Plugin(self.driver)
        plugin.implements[:] = ["authz"]
        self.assert_fails("activate", "does not implement", self.check(plugin))

    def test_bad_scope(self):
        self.driver.capabilities = lambda: {"Scope": "cluster"}
        self.assert_fails("capabilities", "assumes scope 'local'", self.check())

    def test_get_of_unknown_name_returns_a_volume(self):
        self.driver.get = lambda name: {"Name": name}
        self.assert_fails("get-unknown", "Create and its options never reach", self.check())

    def test_create_refused(self):
        self.driver.create = raising(dvp.PluginError("read-only backend"))
        self.assert_fails("create", "read-only backend: `docker volume create` fails", self.check())

    def test_get_after_create_says_missing(self):
        self.driver.get = lambda name: None
        self.assert_fails("get", "treats the volume as missing", self.check())

    def test_list_without_the_volume(self):
        self.driver.list = lambda: []
        self.assert_fails("list", "will not show", self.check())

    def test_mountpoint_differs_per_id(self):
        self.driver.mount = lambda name, mount_id: os.path.join(self.dir, mount_id)
        self.assert_fails("mount", "different directories", self.check())

    def test_mountpoint_missing(self):
        self.driver.mount = lambda name, mount_id: os.path.join(self.dir, "nowhere")
        self.assert_fails("mount", "does not exist while mounted", self.check())

    def test_path_disagrees(self):
        self.driver.path = lambda name: "/elsewhere"
        self.assert_fails("path", "tools that ask Path see another directory", self.check())

    def test_unmount_fails(self):
        self.driver.unmount = raising(dvp.PluginError("device busy"))
        self.assert_fails("unmount", "device busy: the engine logs it", self.check())

    def test_remove_fails_and_cleanup_says_so(self):
        self.driver.remove = raising(dvp.PluginError("backend down"))
        results = self.check()
        self.assert_fails("remove", "`docker volume rm` fails", results)
        self.assert_fails("cleanup", "scratch volume left behind", results)

    def test_removed_volume_still_there(self):
        self.driver.remove = lambda name: None
        results = self.check()
        self.assert_fails("get-removed", "believes it still exists", results)
        self.assert_fails("list-removed", "still shows", results)

    def test_non_200_reply(self):
        class Status201(dvp.Plugin):
            def handle(self, path, body):
                status, reply = dvp.Plugin.handle(self, path, body)
                return (201 if path == "/VolumeDriver.Capabilities" else status), reply
        self.assert_fails("http", "answered HTTP 201 without an Err", self.check(Status201(self.driver)))

    def test_non_finite_number_in_a_reply(self):
        plugin = dvp.Plugin(self.driver)

        def nan_get(request):
            if request["Name"] not in self.driver.volumes:
                raise dvp.VolumeNotFound("no such volume")
            return b'{"Volume":{"Name":"%s","Status":{"size":NaN}}}' % request["Name"].encode()
        plugin.add_route("/VolumeDriver.Get", nan_get, read_only=True)
        results = self.check(plugin)
        self.assert_fails("http", "not a JSON object", results)
        self.assert_fails("get", "treats the volume as missing", results)

    def test_created_at_without_timezone(self):
        plugin = dvp.Plugin(self.driver)

        def naive_get(request):
            if request["Name"] not in self.driver.volumes:
                return {"Err": "no such volume"}
            return {"Volume": {"Name": request["Name"], "CreatedAt": "2024-01-01T00:00:00"}}
        plugin.add_route("/VolumeDriver.Get", naive_get, read_only=True)
        self.assert_fails("created-at", "CreatedAt '2024-01-01T00:00:00' has no timezone: Docker "
                          "will treat this volume as missing and delete its labels and options",
                          self.check(plugin))

    def test_errors_answered_200_fail_for_podman_and_500_pass(self):
        class Errors200(dvp.Plugin):  # what this module did before, and many plugins do
            def handle(self, path, body):
                status, reply = dvp.Plugin.handle(self, path, body)
                return (200 if status == 500 else status), reply
        self.assert_fails("errors", "Podman looks only at the status", self.check(Errors200(self.driver)))

    def test_bad_option_skipped_refused_or_accepted(self):
        statuses = lambda results: [r["status"] for r in results if r["rule"] == "bad-option"]
        self.assertEqual(statuses(self.check()), ["skip"])
        self.assert_fails("bad-option", "Create with color=blue succeeded",
                          dvp.check_plugin(self.sock, bad_options={"color": "blue"}))
        real_create = self.driver.create

        def strict_create(name, options):
            if "color" in options:
                raise dvp.PluginError("unknown option color")
            real_create(name, options)
        self.driver.create = strict_create
        results = dvp.check_plugin(self.sock, options={"size": "1G"}, bad_options={"color": "blue"})
        self.assertEqual(self.failures(results), [])
        self.assertEqual(statuses(results), ["pass"])
        self.assertEqual(self.driver.volumes, {})

    def test_options_go_to_the_volume_that_is_mounted(self):
        real_create = self.driver.create
        self.driver.create = lambda name, options: (
            real_create(name, options) if options.get("size") else raising(
                dvp.PluginError("option size is required"))())
        self.assertEqual(self.failures(self.check(options={"size": "1G"})), [])
        self.assert_fails("create", "option size is required", dvp.check_plugin(self.sock))

    def test_unsafe_names_warn_unless_refused(self):
        results = self.check()
        warned = [r for r in results if r["rule"] == "unsafe-names"]
        self.assertEqual([(r["status"], r["passed"]) for r in warned], [("warn", True)])
        self.assertIn("'..'", warned[0]["detail"])
        driver = dvp.DirectoryDriver(os.path.join(self.dir, "root"))
        self.addCleanup(driver.close)
        self.sock = os.path.join(self.dir, "q.sock")
        self.assertEqual([r["status"] for r in self.check(driver) if r["rule"] == "unsafe-names"],
                         ["pass"])

    def test_mount_of_unknown_volume_succeeds(self):
        self.driver.mount = lambda name, mount_id: self.dir
        self.assert_fails("unknown-volume", "belongs to no volume", self.check())

    def test_global_lock_held_across_a_slow_mount(self):
        big_lock, real_get = threading.Lock(), self.driver.get

        def slow_mount(name, mount_id):
            with big_lock:
                time.sleep(0.08)  # over the checker's 0.05 s: the lock is probed
                return CheckableDriver.mount(self.driver, name, mount_id)

        def locked_get(name):
            with big_lock:
                return real_get(name)
        self.driver.mount, self.driver.get = slow_mount, locked_get
        self.assert_fails("lock", "holds one lock for all volumes", self.check())

    def test_global_lock_held_across_a_slow_create(self):
        big_lock, real_get, real_create = threading.Lock(), self.driver.get, self.driver.create

        def slow_create(name, options):
            with big_lock:
                time.sleep(0.08)
                return real_create(name, options)

        def locked_get(name):
            with big_lock:
                return real_get(name)
        self.driver.create, self.driver.get = slow_create, locked_get
        self.assert_fails("lock", "until a Create of", self.check())
        self.assertEqual(list(self.driver.volumes), [])  # the probe's volume removed too

    def test_slow_call(self):
        real_create = self.driver.create

        def slow_create(name, options):
            time.sleep(0.03)  # over 0.001 of Podman's 5 s
            real_create(name, options)
        self.driver.create = slow_create
        self.assert_fails("deadlines", "VolumeDriver.Create took", self.check(deadline_share=0.001))

    def test_an_independent_http_server_plugin_passes(self):
        # The checker reads each reply whole, as the engines' http client does.
        server = IndependentServer(self.sock, IndependentPlugin)
        server.driver = self.driver
        thread = threading.Thread(target=server.serve_forever, args=(0.01,))
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        for _ in range(3):
            results = dvp.check_plugin(self.sock)
            self.assertEqual(self.failures(results), [])
            self.assertEqual(list(self.driver.volumes), [])  # cleaned up

    def test_single_threaded_server(self):
        started = time.time()
        results = self.check(server_class=_OneAtATime, deadline=0.25)
        self.assert_fails("concurrency", "one connection at a time", results)
        self.assert_fails("concurrency", "no answer in 0.25s", results)
        self.assertEqual(list(self.driver.volumes), [])  # cleaned up all the same
        self.assertLess(time.time() - started, 20)

    def test_command_line_json_and_exit_status(self):
        server = dvp.UnixPluginServer(self.sock, self.driver).start()
        self.addCleanup(server.stop, 1.0)
        result = subprocess.run([sys.executable, MODULE, "check", "--json", self.sock],
                                stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 0)
        report = json.loads(result.stdout)
        self.assertTrue(report["passed"])
        self.driver.path = lambda name: "/elsewhere"
        result = subprocess.run([sys.executable, MODULE, "check", self.sock], stdout=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertIn("FAIL path:", result.stdout)
        self.assertRegex(result.stdout, r"\n\d+ passed, 1 failed, 2 skipped, 1 warned\n$")
        self.assertIn("SKIP bad-option: no --bad-opt given", result.stdout)
        self.assertIn("WARN unsafe-names: Create accepted", result.stdout)


class SetOfIDs(CheckableDriver):
    """Counts mounts as a set of IDs, and tears the directory down when it empties."""

    def mount(self, name, mount_id):
        path = CheckableDriver.mount(self, name, mount_id)
        self.mounts[name][mount_id] = 1
        return path

    def unmount(self, name, mount_id):
        CheckableDriver.unmount(self, name, mount_id)
        if not self.mounts.get(name):
            shutil.rmtree(self.volumes[name]["Mountpoint"], True)


class ByName(CheckableDriver):
    """Counts mounts per volume, whatever the ID."""

    def mount(self, name, mount_id):
        return CheckableDriver.mount(self, name, "any")

    def unmount(self, name, mount_id):
        CheckableDriver.unmount(self, name, "any")


class IgnoresIDOnUnmount(CheckableDriver):
    """Counts per ID on Mount, but Unmount releases the latest ID, not the one named."""

    def unmount(self, name, mount_id):
        counts = self.mounts.get(name) or {"none": 1}
        CheckableDriver.unmount(self, name, list(counts)[-1])


TMPFS_DRIVER = '''
import os
import docker_volume_plugin as dvp


class Tmpfs(dvp.Driver):
    """Each volume a tmpfs, mounted on its first use; with forget=yes never unmounted."""

    def __init__(self, state_dir, mounts, forget="no"):
        self.mounts, self.forget = mounts, forget == "yes"
        dvp.Driver.__init__(self, state_dir)

    def attach(self, name, options):
        path = os.path.join(self.mounts, name)
        os.makedirs(path, exist_ok=True)
        if not os.path.ismount(path):
            self.run("mount", "-t", "tmpfs", "-o", "size=1m", "dvp-test", path)
        return path

    def detach(self, name, options, mountpoint):
        mountpoint = mountpoint or os.path.join(self.mounts, name)
        if not self.forget and os.path.ismount(mountpoint):
            self.run("umount", mountpoint)
'''


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("unshare"), "needs root and unshare")
class CheckMountsTests(QuietLogs, unittest.TestCase):
    """check judges a mounting driver's mounts as the engine sees them."""

    def check(self, prefix=(), forget="no"):
        base = temp_dir(self)
        module, sock = os.path.join(base, "tmpfs.py"), os.path.join(base, "p.sock")
        with open(module, "w") as f:
            f.write(TMPFS_DRIVER)
        mounts = os.path.join(base, "mnt")
        proc = _spawn(self, list(prefix) + [
            sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock, "--driver",
            module + ":Tmpfs", "--driver-opt", "state_dir=" + os.path.join(base, "state"),
            "--driver-opt", "mounts=" + mounts, "--driver-opt", "forget=" + forget],
            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=HERE))
        _wait_for_socket(sock, proc)
        self.addCleanup(lambda: [subprocess.run(["umount", "-R", os.path.join(mounts, m)],
                                                stderr=subprocess.DEVNULL)
                                 for m in (os.listdir(mounts) if os.path.isdir(mounts) else ())])
        return {r["rule"]: r for r in dvp.check_plugin(sock)}

    def test_a_plugin_whose_mounts_the_engine_sees_passes(self):
        results = self.check()
        self.assertEqual([r["detail"] for r in results.values() if not r["passed"]], [])
        self.assertEqual(results["mount-namespace"]["status"], "pass")
        self.assertEqual(results["detach"]["status"], "pass")

    def test_a_plugin_in_a_mount_namespace_of_its_own_fails(self):
        # What systemd's ProtectSystem (and the others) do to a service.
        results = self.check(prefix=["unshare", "--mount", "--propagation", "private"])
        self.assertEqual(results["mount-namespace"]["status"], "fail")
        self.assertIn("another file system in the plugin's mount namespace",
                      results["mount-namespace"]["detail"])
        self.assertIn("ProtectSystem", results["mount-namespace"]["detail"])

    def test_a_driver_that_never_detaches_fails(self):
        results = self.check(forget="yes")
        self.assertEqual(results["detach"]["status"], "fail")
        self.assertIn("never detaches", results["detach"]["detail"])


class MountCountingTests(QuietLogs, unittest.TestCase):
    """check's rule for the most common plugin bug: mounts not counted per ID."""

    def check(self, driver):
        base = temp_dir(self)
        sock = os.path.join(base, "p.sock")
        server = dvp.UnixPluginServer(sock, driver).start()
        self.addCleanup(server.stop, 1.0)
        results = dvp.check_plugin(sock)
        return dict((r["rule"], r) for r in results if r["rule"] == "mount-counting")["mount-counting"]

    def test_broken_counting_is_named(self):
        for driver_class, mistake in (
                (SetOfIDs, "counts mount IDs as a set"),
                (ByName, "counts mounts by name"),
                (IgnoresIDOnUnmount, "ignores the ID on Unmount")):
            result = self.check(driver_class(temp_dir(self)))
            self.assertEqual(result["status"], "fail", driver_class)
            self.assertIn(mistake, result["detail"], driver_class)
            self.assertIn("A running container loses its data", result["detail"])

    def test_a_release_at_the_first_unmount_is_named(self):
        class ClearsAll(CheckableDriver):  # counts per ID, then releases every ID at once
            def unmount(self, name, mount_id):
                self.mounts[name] = {}

        class Flag(CheckableDriver):  # one flag per volume
            def mount(self, name, mount_id):
                return CheckableDriver.mount(self, name, "flag") if not self.mounts.get(name) \
                    else self.volumes[name]["Mountpoint"]

            def unmount(self, name, mount_id):
                self.mounts[name] = {}
        for driver_class in (ClearsAll, Flag):  # alike to the engine: both named
            detail = self.check(driver_class(temp_dir(self)))["detail"]
            self.assertIn("releases a volume at its first Unmount", detail)
            self.assertIn("an Unmount that clears every mount ID", detail)
            self.assertIn("one mounted flag per volume", detail)

    def test_correct_drivers_pass(self):
        driver = dvp.DirectoryDriver(temp_dir(self))
        self.addCleanup(driver.close)
        self.assertEqual(self.check(driver)["status"], "pass")
        self.assertEqual(self.check(CheckableDriver(temp_dir(self)))["status"], "pass")
        namespace = {}
        exec(readme_example().replace('__name__ == "__main__"', "False"), namespace)
        self.assertEqual(self.check(namespace["MemoryDriver"]())["status"], "pass")


class LookupTests(unittest.TestCase):
    """find_plugin and check's diagnostics, with real files and sockets."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.sockets = os.path.join(self.dir, "run")
        self.etc, self.lib = os.path.join(self.dir, "etc"), os.path.join(self.dir, "lib")
        for directory in (self.sockets, self.etc, self.lib):
            os.mkdir(directory)
        # Podman's configuration: only what a test writes here.
        self.podman_conf = os.path.join(self.dir, "containers.conf")
        previous = os.environ.get("CONTAINERS_CONF")
        os.environ["CONTAINERS_CONF"] = self.podman_conf
        self.addCleanup(lambda: os.environ.pop("CONTAINERS_CONF") if previous is None
                        else os.environ.__setitem__("CONTAINERS_CONF", previous))

    def find(self, name="p"):
        return dvp.find_plugin(name, self.sockets, (self.etc, self.lib))

    def check(self, name="p"):
        return dvp.check_plugin(name, socket_dir=self.sockets, spec_dirs=(self.etc, self.lib))

    def write(self, path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def bind(self, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        sock.bind(path)
        return sock

    def test_nothing_there(self):
        results = self.check()
        self.assertEqual(len(results), 1)
        self.assertFalse(results[0]["passed"])
        self.assertIn("no socket p.sock in %s" % self.sockets, results[0]["detail"])
        self.assertIn("not found", results[0]["detail"])

    def test_podman_containers_conf_after_docker(self):
        self.write(self.podman_conf, '[engine]\nvolume_plugin_timeout = 9\n\n[engine.volume_plugins]\n'
                   'other = "/x.sock"\np = "/old/p.sock"  # replaced by the drop-in\n')
        drop_in = os.path.join(self.podman_conf + ".d", "10-p.conf")
        self.write(drop_in, '[ engine.volume_plugins ]\n"p" = "/run/p.sock"\n[containers]\np = "/no"\n')
        lookup = self.find()
        self.assertEqual((lookup.address, lookup.source), ("unix:///run/p.sock", "Podman's " + drop_in))
        self.assertIsNone(self.find("q").address)
        self.assertIn("no q in [engine.volume_plugins] of Podman's %s" % self.podman_conf,
                      self.find("q").problems[0])
        self.write(os.path.join(self.etc, "p.spec"), "tcp://127.0.0.1:7\n")  # Docker's comes first
        self.assertEqual(self.find().address, "tcp://127.0.0.1:7")
        self.assertIn("Docker's plugin directories", self.find().source)

    def test_engine_search_order(self):
        self.write(os.path.join(self.lib, "p.spec"), "tcp://127.0.0.1:3\n")
        self.assertEqual(self.find().address, "tcp://127.0.0.1:3")
        self.write(os.path.join(self.etc, "p", "p.json"), '{"Addr": "tcp://127.0.0.1:4"}')
        self.assertEqual(self.find().address, "tcp://127.0.0.1:4")
        self.write(os.path.join(self.etc, "p.json"), '{"Addr": "tcp://127.0.0.1:5"}')
        self.assertEqual(self.find().address, "tcp://127.0.0.1:5")
        self.write(os.path.join(self.etc, "p", "p.spec"), "tcp://127.0.0.1:6")
        self.assertEqual(self.find().address, "tcp://127.0.0.1:6")
        self.write(os.path.join(self.etc, "p.spec"), " tcp://127.0.0.1:7 \n")
        self.assertEqual(self.find().address, "tcp://127.0.0.1:7")
        nested = self.bind(os.path.join(self.sockets, "p", "p.sock"))
        self.addCleanup(nested.close)
        self.assertEqual(self.find().address, "unix://" + os.path.join(self.sockets, "p", "p.sock"))
        top = self.bind(os.path.join(self.sockets, "p.sock"))
        self.addCleanup(top.close)
        lookup = self.find()
        self.assertEqual(lookup.address, "unix://" + os.path.join(self.sockets, "p.sock"))
        self.assertEqual(len(lookup.notes), 6)  # every other file is shadowed
        self.assertIn("shadowed by %s" % os.path.join(self.sockets, "p.sock"), lookup.notes[0])

    def test_stale_socket(self):
        self.bind(os.path.join(self.sockets, "p.sock")).close()
        detail = self.check()[0]["detail"]
        self.assertIn("stale socket", detail)
        self.assertIn("15 s", detail)

    def test_regular_file_named_like_a_socket(self):
        self.write(os.path.join(self.sockets, "p.sock"), "")
        lookup = self.find()
        self.assertIsNone(lookup.address)
        self.assertIn("not a socket", lookup.notes[0])

    def test_spec_without_scheme(self):
        self.write(os.path.join(self.etc, "p.spec"), "127.0.0.1:8080\n")
        detail = self.check()[0]["detail"]
        self.assertIn("Unknown protocol", detail)

    def test_shadowed_spec_is_named_when_the_winner_is_dead(self):
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()  # nothing listens there now
        self.write(os.path.join(self.etc, "p.spec"), "tcp://127.0.0.1:%d" % port)
        self.write(os.path.join(self.etc, "p.json"), '{"Addr": "tcp://127.0.0.1:1"}')
        detail = self.check()[0]["detail"]
        self.assertIn("nothing listens on tcp://127.0.0.1:%d" % port, detail)
        self.assertIn("p.json is shadowed by %s" % os.path.join(self.etc, "p.spec"), detail)

    def test_socket_path_over_108_bytes(self):
        deep = os.path.join(self.sockets, "d" * 60, "e" * 60)
        os.makedirs(deep)
        here = os.getcwd()
        os.chdir(deep)  # bind() takes the relative name; the full path is too long
        try:
            sock = self.bind("p.sock")
        finally:
            os.chdir(here)
        self.addCleanup(sock.close)
        lookup = dvp.find_plugin("p", deep, ())
        self.assertIsNone(lookup.address)
        self.assertIn("over the 108-byte limit", lookup.problems[0])
        detail = dvp.check_plugin(os.path.join(deep, "p.sock"))[0]["detail"]
        self.assertIn("over the 108-byte limit", detail)

    @unittest.skipUnless(os.geteuid() == 0 and os.path.exists("/usr/bin/python3"),
                         "needs root and the system python3 to check as another user")
    def test_permission_denied(self):
        os.chmod(self.dir, 0o755)
        server = dvp.UnixPluginServer(os.path.join(self.sockets, "p.sock"), MemoryDriver(), mode=0o600)
        server.start()
        self.addCleanup(server.stop, 1.0)
        os.chmod(self.sockets, 0o755)
        module = os.path.join(self.dir, "docker_volume_plugin.py")  # readable by nobody
        shutil.copy(MODULE, module)
        os.chmod(module, 0o644)
        result = subprocess.run(
            ["/usr/bin/python3", module, "check", "p", "--socket-dir", self.sockets, "--spec-dir", self.etc],
            stdout=subprocess.PIPE, universal_newlines=True, timeout=60,
            preexec_fn=lambda: (os.setgroups([]), os.setgid(65534), os.setuid(65534)))
        self.assertEqual(result.returncode, 1)
        self.assertIn("permission denied", result.stdout)
        self.assertIn("--group", result.stdout)

    def test_client_by_name(self):
        server = dvp.UnixPluginServer(os.path.join(self.sockets, "p.sock"), MemoryDriver()).start()
        self.addCleanup(server.stop, 1.0)
        with dvp.PluginClient("p", socket_dir=self.sockets, spec_dirs=(self.etc,)) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
        with self.assertRaises(dvp.PluginCallError) as caught:
            dvp.PluginClient("q", socket_dir=self.sockets, spec_dirs=(self.etc,))
        self.assertIn("not found", str(caught.exception))


# -- the command line ----------------------------------------------------------------


_SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (\S+)$')


def metric_samples(text):
    """Prometheus's text format as {(name, labels): value}; comments checked."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"# (HELP|TYPE) docker_volume_plugin_\w+ ", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, "not a sample line: %r" % line
        samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def trace_lines(path, at_least=0):
    """The lines of a trace; waits (10 s at most) for ``at_least``: a call's
    line is written once its reply is sent."""
    deadline = time.time() + 10
    while True:
        lines = []
        if os.path.exists(path):
            with open(path) as f:
                lines = [json.loads(line) for line in f]
        if len(lines) >= at_least or time.time() > deadline:
            return lines
        time.sleep(0.01)


class ObservingTests(QuietLogs, unittest.TestCase):
    """The metrics, the call trace and journald's priorities."""

    def setUp(self):
        QuietLogs.setUp(self)
        self.dir = temp_dir(self)
        self.driver = dvp.DirectoryDriver(os.path.join(self.dir, "root"),
                                          run_dir=os.path.join(self.dir, "run"))
        self.addCleanup(self.driver.close)
        self.sock = os.path.join(self.dir, "p.sock")
        self.server = dvp.UnixPluginServer(self.sock, self.driver)
        self.metrics = dvp._Metrics(self.server.plugin, [self.server])
        self.trace_path = os.path.join(self.dir, "trace.jsonl")
        self.trace = dvp._Trace(self.trace_path, self.driver.is_secret)
        self.server.observers += [self.metrics, self.trace]
        self.server.start()
        self.addCleanup(self.server.stop)
        self.addCleanup(self.trace.close)

    def some_calls(self):
        """Calls of every outcome, on one connection; the client stays open,
        and each call is counted when this returns."""
        client = dvp.PluginClient(self.sock)
        self.addCleanup(client.close)
        client.activate()
        client.create("precious-data", {"mode": "0750"})
        client.mount("precious-data", MOUNT_ID)
        with self.assertRaises(dvp.PluginCallError):
            client.get("missing-volume")
        with self.assertRaises(dvp.PluginCallError):  # refused: no such option
            client.create("other", {"db_password": "hunter2"})
        self.assertEqual(client.exchange('Evil"{}', {})[0], 404)
        trace_lines(self.trace_path, at_least=6)  # the last call observed
        return client

    def test_metrics_count_each_outcome_and_show_the_state_but_no_name(self):
        self.some_calls()
        text = self.metrics.render().decode()
        samples = metric_samples(text)
        calls = lambda endpoint, outcome: samples.get(("docker_volume_plugin_calls_total",
                                                       '{endpoint="/VolumeDriver.%s",outcome="%s"}'
                                                       % (endpoint, outcome)))
        self.assertEqual(calls("Create", "ok"), 1)
        self.assertEqual(calls("Create", "refused"), 1)
        self.assertEqual(calls("Mount", "ok"), 1)
        self.assertEqual(calls("Get", "not_found"), 1)
        self.assertEqual(samples[("docker_volume_plugin_calls_total",
                                  '{endpoint="other",outcome="unknown_endpoint"}')], 1)
        self.assertEqual(samples[("docker_volume_plugin_volumes", "")], 1)
        self.assertEqual(samples[("docker_volume_plugin_mounts", "")], 1)
        self.assertEqual(samples[("docker_volume_plugin_pending_detaches", "")], 0)
        listener = 'listener="unix://%s"' % self.sock
        self.assertEqual(samples[("docker_volume_plugin_connections", "{%s}" % listener)], 1)
        self.assertEqual(samples[("docker_volume_plugin_limit",
                                  '{limit="max_connections",%s}' % listener)], 256)
        self.assertEqual(samples[("docker_volume_plugin_calls_in_flight", "")], 0)
        self.assertIn(("docker_volume_plugin_build_info",
                       '{python="%d.%d.%d",version="%s"}' % (sys.version_info[:3] +
                                                             (dvp.__version__,))), samples)
        buckets = [value for (name, labels), value in sorted(samples.items())
                   if name.endswith("_bucket") and "Create" in labels]
        self.assertEqual(len(buckets), len(dvp._DURATION_BUCKETS) + 1)
        self.assertEqual(max(buckets), 2)  # +Inf: both Creates
        self.assertEqual(samples[("docker_volume_plugin_call_duration_seconds_count",
                                  '{endpoint="/VolumeDriver.Create"}')], 2)
        for secret in ("precious-data", "missing-volume", "hunter2", "Evil"):
            self.assertNotIn(secret, text)

    def test_trace_names_the_caller_and_hides_secret_options(self):
        self.some_calls()
        lines = trace_lines(self.trace_path)
        self.assertEqual([line["endpoint"] for line in lines], [
            "/Plugin.Activate", "/VolumeDriver.Create", "/VolumeDriver.Mount",
            "/VolumeDriver.Get", "/VolumeDriver.Create", '/Evil"{}'])
        with open("/proc/self/comm") as comm:
            me = {"pid": os.getpid(), "uid": os.getuid(), "command": comm.read().strip()}
        self.assertEqual([line["peer"] for line in lines], [me] * 6)
        self.assertEqual(len(set(line["connection"] for line in lines)), 1)
        refused = lines[4]
        self.assertEqual(refused["request"], {"Name": "other", "Opts": {"db_password": "****"}})
        self.assertEqual((refused["status"], refused["outcome"]), (500, "refused"))
        self.assertIn("Err", refused["reply"])
        self.assertEqual(lines[2]["reply"], {"Mountpoint": os.path.join(
            os.path.realpath(self.dir), "root", "precious-data")})
        self.assertEqual(lines[3]["outcome"], "not_found")
        self.assertTrue(all(line["duration_ms"] >= 0 and "T" in line["time"] for line in lines))
        with open(self.trace_path) as f:
            self.assertNotIn("hunter2", f.read())
        self.assertEqual(stat.S_IMODE(os.stat(self.trace_path).st_mode), 0o600)

    def test_trace_is_bounded_in_size(self):
        path = os.path.join(self.dir, "small.jsonl")
        trace = dvp._Trace(path, dvp._has_secret_word)
        trace.max_bytes = 2000
        handler = unittest.mock.Mock(connection_id=7, peer={}, path="/VolumeDriver.Get")
        for _ in range(100):
            trace.called(handler, b'{"Name":"v"}', 200, b'{"Volume":{"Name":"v"}}', "ok", 0.001)
        trace.close()
        self.assertLessEqual(os.path.getsize(path), 2000)
        self.assertLessEqual(os.path.getsize(path + ".1"), 2000)
        self.assertGreater(os.path.getsize(path + ".1"), 1000)
        self.assertEqual(trace_lines(path)[-1]["connection"], 7)
        big = trace._body(b"x" * (dvp._Trace.max_body + 1))
        self.assertEqual(big, {"bytes": dvp._Trace.max_body + 1})

    def test_metrics_over_http_only_at_metrics(self):
        import urllib.error
        import urllib.request
        self.some_calls()
        server = dvp._MetricsServer(("127.0.0.1", 0), self.metrics)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,))
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        with urllib.request.urlopen(server.address, timeout=10) as reply:
            self.assertEqual(reply.headers["Content-Type"], dvp._METRICS_MEDIA_TYPE)
            self.assertIn(("docker_volume_plugin_mounts", ""),
                          metric_samples(reply.read().decode()))
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.address.replace("/metrics", "/"), timeout=10)
        self.assertEqual(caught.exception.code, 404)

    def test_metrics_elsewhere_than_loopback_are_refused(self):
        code, _, err = run_main(self, "serve", "--metrics", "0.0.0.0:9", "--socket",
                                os.path.join(self.dir, "q.sock"), "--root",
                                os.path.join(self.dir, "root2"))
        self.assertEqual(code, 1)
        self.assertIn("refusing the metrics on 0.0.0.0", err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "q.sock")))

    def test_metrics_file_for_the_textfile_collector(self):
        with self.assertRaises(ValueError) as caught:
            dvp._MetricsFile(os.path.join(self.dir, "metrics.txt"), self.metrics)
        self.assertIn("*.prom", str(caught.exception))
        directory = os.path.join(self.dir, "textfile")
        os.mkdir(directory)
        writer = dvp._MetricsFile(os.path.join(directory, "dvp.prom"), self.metrics)
        writer.interval = 0.02
        writer.start()
        self.some_calls()
        deadline = time.time() + 10
        while time.time() < deadline:
            with open(os.path.join(directory, "dvp.prom")) as f:
                samples = metric_samples(f.read())
            if samples.get(("docker_volume_plugin_mounts", "")) == 1:
                break
            time.sleep(0.02)
        writer.stop()
        self.assertEqual(samples[("docker_volume_plugin_mounts", "")], 1)
        self.assertEqual(os.listdir(directory), ["dvp.prom"])  # no temporary file left

    def test_sigusr2_stops_and_starts_the_trace(self):
        sock, trace, log_path = (os.path.join(self.dir, name) for name in ("s.sock", "t.jsonl", "log"))
        with open(log_path, "w") as log_file:
            proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock,
                                 "--root", os.path.join(self.dir, "root3"), "--trace", trace],
                          stderr=log_file, env=dict(os.environ, PYTHONPATH=HERE))
        _wait_for_socket(sock, proc)
        client = dvp.PluginClient(sock)
        self.addCleanup(client.close)

        def switch(expected):
            before = read_text(log_path).count(expected)
            proc.send_signal(signal.SIGUSR2)
            deadline = time.time() + 10
            while read_text(log_path).count(expected) == before and time.time() < deadline:
                time.sleep(0.01)
            self.assertIn(expected, read_text(log_path))

        client.list()
        traced = len(trace_lines(trace, at_least=2))
        self.assertEqual(traced, 2)  # the Activate of _wait_for_socket, and the List
        switch("trace stopped")
        client.list()
        time.sleep(0.2)
        self.assertEqual(len(trace_lines(trace)), traced)
        switch("tracing every call to %s" % trace)
        client.list()
        self.assertEqual(len(trace_lines(trace, at_least=traced + 1)), traced + 1)
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)

    def test_journald_priorities_when_stderr_is_the_journal(self):
        program = ("import docker_volume_plugin as dvp\n"
                   "dvp._configure_logging('DEBUG')\n"
                   "dvp.log.debug('d'); dvp.log.info('i'); dvp.log.warning('w')\n"
                   "dvp.log.error('e\\nsecond line')\n")
        for journal in (True, False):
            path = os.path.join(self.dir, "stderr-%s" % journal)
            with open(path, "w") as stderr:
                st = os.fstat(stderr.fileno())
                env = dict(os.environ, PYTHONPATH=HERE,
                           JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino + (0 if journal else 1)))
                subprocess.run([sys.executable, "-c", program], stderr=stderr, env=env,
                               check=True, timeout=30)
            with open(path) as f:
                lines = f.read().splitlines()
            if journal:
                self.assertEqual(lines, ["<7>DEBUG docker_volume_plugin: d",
                                         "<6>INFO docker_volume_plugin: i",
                                         "<4>WARNING docker_volume_plugin: w",
                                         "<3>ERROR docker_volume_plugin: e", "<3>second line"])
            else:  # JOURNAL_STREAM names another file: a redirection, no prefixes
                self.assertTrue(lines[0].endswith(" DEBUG docker_volume_plugin: d"), lines)
                self.assertRegex(lines[0], r"^\d{4}-\d\d-\d\d ")


def read_text(path):
    with open(path) as f:
        return f.read()


def start_tap(test, name, trace, log_path, extra=(), socket_dir=dvp.PLUGIN_SOCKET_DIR):
    """Start ``tap NAME``; return its process once its socket stands in the plugin's place."""
    with open(log_path, "a") as log_file:
        proc = _spawn(test, [sys.executable, MODULE, "tap", name, "--trace", trace] + list(extra),
                      stderr=log_file)
    socket_dir = dict(zip(extra[::2], extra[1::2])).get("--socket-dir", socket_dir)
    record = os.path.join(socket_dir, ".tap", name + ".json")
    deadline = time.time() + 10
    while time.time() < deadline and proc.poll() is None:
        try:  # the record is written before the tap's socket takes the plugin's place
            with open(record) as f:
                data = json.load(f)
            tap_inode = data["tap_inode"][1] if data["pid"] == proc.pid else None
            if tap_inode == os.stat(os.path.join(socket_dir, name + ".sock")).st_ino:
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError("the tap did not start: %s" % read_text(log_path))


class TapTests(QuietLogs, unittest.TestCase):
    """``tap`` in front of a plain http.server plugin and of a spec file's."""

    def setUp(self):
        QuietLogs.setUp(self)
        self.dir = temp_dir(self)
        self.specs = os.path.join(self.dir, "specs")
        os.mkdir(self.specs)
        self.sock = os.path.join(self.dir, "indep.sock")
        self.driver = MemoryDriver()
        self.plugin = IndependentServer(self.sock, IndependentPlugin)
        self.plugin.driver = self.driver
        thread = threading.Thread(target=self.plugin.serve_forever, args=(0.01,))
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(self.plugin.server_close)
        self.addCleanup(self.plugin.shutdown)
        self.inode = os.stat(self.sock).st_ino
        self.trace = os.path.join(self.dir, "trace.jsonl")

    def tap(self, name="indep", *extra):
        return subprocess.run([sys.executable, MODULE, "tap", name, "--socket-dir", self.dir,
                               "--spec-dir", self.specs] + list(extra), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=30)

    def start_tap(self, name="indep"):
        return start_tap(self, name, self.trace, os.path.join(self.dir, "tap.log"),
                         ["--socket-dir", self.dir, "--spec-dir", self.specs])

    def leftovers(self):
        directory = os.path.join(self.dir, ".tap")
        return os.listdir(directory) if os.path.lexists(directory) else []

    def calls(self):
        with dvp.PluginClient(self.sock) as client:
            self.assertEqual(client.activate(), ["VolumeDriver"])
            client.create("v1", {"size": "1G"})
            self.assertEqual(client.mount("v1", MOUNT_ID), "/mnt/v1")
            with self.assertRaises(dvp.PluginCallError) as caught:
                client.get("missing")
            self.assertIn("no such volume", str(caught.exception))
            client.unmount("v1", MOUNT_ID)

    def test_tap_traces_every_call_and_puts_the_socket_back(self):
        tap = self.start_tap()
        self.calls()
        tap.terminate()
        self.assertEqual(tap.wait(10), 0)
        self.assertEqual(os.stat(self.sock).st_ino, self.inode)
        self.assertFalse(os.path.lexists(os.path.join(self.dir, ".tap")))
        lines = trace_lines(self.trace, at_least=5)
        self.assertEqual([(line["endpoint"], line["status"]) for line in lines], [
            ("/Plugin.Activate", 200), ("/VolumeDriver.Create", 200), ("/VolumeDriver.Mount", 200),
            ("/VolumeDriver.Get", 500), ("/VolumeDriver.Unmount", 200)])
        self.assertEqual(lines[1]["request"], {"Name": "v1", "Opts": {"size": "1G"}})
        self.assertEqual(lines[3]["reply"], {"Err": "no such volume"})
        self.assertEqual(lines[0]["peer"]["pid"], os.getpid())
        self.assertEqual(self.driver.calls["mount"], 1)
        self.calls()  # straight to the plugin again

    def test_after_kill_9_the_next_tap_or_restore_puts_the_socket_back(self):
        tap = self.start_tap()
        tap.kill()
        tap.wait(10)
        self.assertNotEqual(os.stat(self.sock).st_ino, self.inode)  # the tap's, dead
        with self.assertRaises(dvp.PluginCallError):
            dvp.PluginClient(self.sock, timeout=2).activate()
        tap = self.start_tap()  # repairs, then taps again
        self.calls()
        tap.terminate()
        self.assertEqual(tap.wait(10), 0)
        self.assertIn("was not stopped cleanly", read_text(os.path.join(self.dir, "tap.log")))
        self.assertEqual(os.stat(self.sock).st_ino, self.inode)
        tap = self.start_tap()
        tap.kill()
        tap.wait(10)
        restored = self.tap("indep", "--restore")
        self.assertEqual(restored.returncode, 0, restored.stderr)
        self.assertIn("put the plugin's socket back", restored.stdout)
        self.assertEqual(os.stat(self.sock).st_ino, self.inode)
        self.assertEqual(self.leftovers(), [])
        self.calls()

    def test_a_second_tap_is_refused_while_one_runs(self):
        tap = self.start_tap()
        second = self.tap()
        self.assertEqual(second.returncode, 1)
        self.assertIn("a tap of indep runs already, as pid %d" % tap.pid, second.stderr)
        tap.terminate()
        self.assertEqual(tap.wait(10), 0)
        self.assertEqual(os.stat(self.sock).st_ino, self.inode)

    def test_tap_in_front_of_a_spec_file_plugin(self):
        driver = MemoryDriver()
        server = dvp.TCPPluginServer(("127.0.0.1", 0), driver, name="viaspec", spec_dir=self.specs)
        server.start()
        self.addCleanup(server.stop)
        tap = self.start_tap("viaspec")
        with dvp.PluginClient(os.path.join(self.dir, "viaspec.sock")) as client:
            client.create("v2", {})
            self.assertEqual([v["Name"] for v in client.list()], ["v2"])
        tap.terminate()
        self.assertEqual(tap.wait(10), 0)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "viaspec.sock")))
        self.assertTrue(os.path.exists(server.spec_path))
        self.assertEqual(driver.calls["create"], 1)
        self.assertEqual([line["endpoint"] for line in trace_lines(self.trace, at_least=2)],
                         ["/VolumeDriver.Create", "/VolumeDriver.List"])

    def test_a_mount_the_engine_gave_up_on_is_undone_behind_the_tap(self):
        driver = MemoryDriver()
        driver.volumes["v3"] = {"Name": "v3", "Mountpoint": "/mnt/v3"}
        driver.mount_gate = threading.Event()
        sock = os.path.join(self.dir, "ours.sock")
        server = dvp.UnixPluginServer(sock, driver)
        server.start()
        self.addCleanup(server.stop)
        self.inode = os.stat(sock).st_ino
        tap = self.start_tap("ours")
        with dvp.PluginClient(sock, timeout=0.3) as client:
            with self.assertRaises(dvp.PluginCallError):  # gave up, as Podman after 5 s
                client.mount("v3", MOUNT_ID)
        # The tap forwarded the Mount, and hung up on the plugin in turn.
        deadline = time.time() + 10
        while time.time() < deadline and not (driver.calls.get("mount") == 1 and any(
                handler._client_gone() for handler in server.handlers())):
            time.sleep(0.01)
        driver.mount_gate.set()
        while driver.calls.get("unmount") != 1 and time.time() < deadline:
            time.sleep(0.01)
        self.assertEqual(driver.calls.get("unmount"), 1)  # the plugin undid it
        tap.terminate()
        self.assertEqual(tap.wait(10), 0)


def run_main(test, *args):
    """``main(args)`` in this process, for what ends before serving: (exit
    status, stdout, stderr). A server it would start fails the test instead
    of serving for ever; the logging it configures is undone."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def restore():
        root.handlers[:] = handlers
        root.setLevel(level)
    test.addCleanup(restore)
    never_serve = unittest.mock.patch.object(
        socketserver.BaseServer, "serve_forever",
        side_effect=AssertionError("main(%r) went on to serve" % (args,)))
    with never_serve, contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        code = dvp.main(list(args))
    return code, out.getvalue(), err.getvalue()


class CommandLineTests(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([sys.executable, MODULE] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=30)

    def test_help_lists_options_with_defaults(self):
        result = self.run_cli("serve", "--help")
        self.assertEqual(result.returncode, 0)
        for option in ("--name", "--root", "--socket", "--tcp", "--spec-dir", "--group",
                       "--log-level", "--driver", "/var/lib/docker-volumes"):
            self.assertIn(option, result.stdout)
        self.assertNotIn("(default: None)", result.stdout)  # each default said once, where it matters
        self.assertEqual(result.stdout.count("(default: dirs)"), 1)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            self.assertEqual(dvp.main(["--version"]), 0)
        self.assertEqual(out.getvalue(), "docker_volume_plugin %s\n" % dvp.__version__)

    def test_names_and_addresses_are_checked_with_a_plain_message(self):
        for args, message in ((["serve", "--name", ""], "a plugin name is 1-64 letters"),
                              (["serve", "--name", "../x"], "a plugin name is 1-64 letters"),
                              (["serve", "--name", "a/b"], "a plugin name is 1-64 letters"),
                              (["serve", "--tcp", "x"], "'x': expected HOST:PORT"),
                              (["serve", "--tcp", "h:99999999"], "expected HOST:PORT"),
                              (["serve", "--limit", "nothing=1"], "NAME one of max_connections"),
                              (["serve", "--limit", "max_connections=1.5"],
                               "expected a positive whole number"),
                              (["serve", "--limit", "request_timeout=nan"],
                               "expected a positive number of seconds")):
            code, _, stderr = run_main(self, *args)
            self.assertEqual(code, 2, args)
            self.assertIn(message, stderr)
            self.assertNotIn("_parse_tcp", stderr)

    def test_bad_values_give_one_line_and_no_traceback(self):
        for args, code in ((["serve", "--tcp", "nohost"], 2), (["serve", "--log-level", "LOUD"], 2),
                           (["frobnicate"], 2), ([], 2),
                           (["serve", "--root", "/proc/version/x"], 1),
                           (["serve", "--driver", "nosuchmodule_xyz:Driver"], 2),
                           (["serve", "--driver", "json"], 2),
                           (["serve", "--driver", "json:loads"], 2),
                           (["serve", "--driver", "json:nothing"], 2)):
            status, _, stderr = run_main(self, *args)  # a traceback would fail the test
            self.assertEqual(status, code, args)
            self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
            self.assertIn("error:", stderr)
        # and as a program: one line, the exit status, no traceback
        result = self.run_cli("serve", "--root", "/proc/version/x")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_module_and_script_forms_start(self):
        base = temp_dir(self)
        for index, command in enumerate(([sys.executable, "-m", "docker_volume_plugin"],
                                         [sys.executable, MODULE])):
            sock = os.path.join(base, "s%d.sock" % index)
            proc = _spawn(self, command + ["serve", *QUICK_STOP, "--root",
                                           os.path.join(base, "r%d" % index), "--socket", sock],
                          cwd=HERE, stderr=subprocess.PIPE,
                          universal_newlines=True)
            _wait_for_socket(sock, proc)
            with dvp.PluginClient(sock) as client:
                client.create("v")
                self.assertTrue(os.path.isdir(client.mount("v", MOUNT_ID)))
            proc.terminate()
            self.assertEqual(proc.wait(10), 0)

    def test_driver_from_module_name_with_factory(self):
        base = temp_dir(self)
        with open(os.path.join(base, "mymod.py"), "w") as f:
            f.write(SLOW_DRIVER + "\ndef make():\n    return Slow()\n")
        sock = os.path.join(base, "p.sock")
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock,
                             "--driver", "mymod:make"],
                      cwd=base, env=dict(os.environ, PYTHONPATH=HERE), stderr=subprocess.PIPE,
                      universal_newlines=True)
        _wait_for_socket(sock, proc)
        with dvp.PluginClient(sock) as client:
            with self.assertRaises(dvp.PluginCallError) as caught:
                client.capabilities()
        # the driver's dvp.PluginError is the running module's: logged without traceback
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)
        log_text = proc.stderr.read()
        self.assertIn("WARNING", log_text)
        self.assertNotIn("Traceback", log_text)
        self.assertEqual(str(caught.exception),
                             "VolumeDriver.Capabilities: capabilities from the test driver")


# -- examples/sshfs.py, against a real sshd ------------------------------------------


def _sshfs_problem():
    """Why the sshfs driver cannot be tried here, or None."""
    if os.geteuid() != 0:
        return "needs root, for FUSE mounts and a private /etc/shadow"
    missing = [program for program in ("sshfs", "fusermount3", "ssh-keygen", "openssl")
               if shutil.which(program) is None] + [
        path for path in ("/usr/sbin/sshd", "/dev/fuse") if not os.path.exists(path)]
    return ("missing %s (Debian's sshfs and openssh-server; .ci/run installs them)"
            % ", ".join(missing)) if missing else None


class SSHServer(object):
    """A throwaway sshd on loopback: its own host key, a client key made
    here, root's password PASSWORD in sshd's own view of /etc/shadow (the
    host's is left alone), and every process of it in a PID namespace of its
    own, so that :meth:`stop` ends its sessions too, as a server going away.
    ``export`` is a directory to serve; ``options(path)`` are the sshfs
    driver's options for a volume of it."""

    PASSWORD = "s3cret-pass"

    def __init__(self, test, base):
        self.test, self.base = test, base
        self.port = free_port()
        self.export = os.path.join(base, "export")
        os.makedirs(self.export)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            os.path.join(base, key)], check=True)
        self.identity = os.path.join(base, "client_key")
        shutil.copy(self.identity + ".pub", os.path.join(base, "authorized_keys"))
        with open(os.path.join(base, "host_key.pub")) as f:
            host_key = " ".join(f.read().split()[:2])
        self.known_hosts = os.path.join(base, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (self.port, host_key))
        hashed = subprocess.run(["openssl", "passwd", "-6", self.PASSWORD], check=True,
                                stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
        with open("/etc/shadow") as f:
            shadow = re.sub(r"(?m)^root:[^:]*:", lambda m: "root:%s:" % hashed, f.read())
        self.shadow = os.path.join(base, "shadow")
        with open(os.open(self.shadow, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(shadow)
        self.config = os.path.join(base, "sshd_config")
        with open(self.config, "w") as f:
            f.write("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\n"
                    "PidFile none\nStrictModes no\nUsePAM no\nPermitRootLogin yes\n"
                    "PasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
                    "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
                    % (self.port, os.path.join(base, "host_key"),
                       os.path.join(base, "authorized_keys")))
        self.proc = None
        self.start()
        test.addCleanup(self.stop)

    def start(self):
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
        with open(os.path.join(self.base, "sshd.log"), "a") as log:
            self.proc = _spawn(self.test, [
                "unshare", "--pid", "--fork", "--kill-child", "--mount", "sh", "-c",
                'mount --bind "$1" /etc/shadow && exec /usr/sbin/sshd -D -e -f "$2"', "sshd",
                self.shadow, self.config], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise AssertionError("sshd did not start: %s" % self.log())
                time.sleep(0.05)

    def stop(self):
        """Kill it and its sessions at once, as a server that goes away."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self):
        with open(os.path.join(self.base, "sshd.log")) as f:
            return f.read()

    def options(self, path, **more):
        options = {"sshcmd": "root@127.0.0.1:" + os.path.join(self.export, path),
                   "port": str(self.port), "UserKnownHostsFile": self.known_hosts}
        if "password" not in more:
            options["IdentityFile"] = self.identity
        options.update(more)
        return options

    def create_arguments(self, path, **more):
        """``options(path)`` as ``volume create``'s ``-o KEY=VALUE`` arguments."""
        arguments = []
        for item in sorted(self.options(path, **more).items()):
            arguments += ["-o", "%s=%s" % item]
        return arguments


def _sshfs_example():
    path = os.path.join(HERE, "examples")
    if path not in sys.path:
        sys.path.insert(0, path)
    import sshfs
    return sshfs


class SSHFSTests(QuietLogs, unittest.TestCase):
    """examples/sshfs.py against a real sshd and sshfs, without an engine."""

    @classmethod
    def setUpClass(cls):
        problem = _sshfs_problem()
        if problem:
            raise unittest.SkipTest(problem)

    def setUp(self):
        self.base = temp_dir(self)
        self.server = SSHServer(self, os.path.join(self.base, "server"))
        self.root = os.path.join(self.base, "plugin")
        self.driver = self.new_driver()

    def new_driver(self):
        driver = _sshfs_example().SSHFSVolumes(self.root)
        self.addCleanup(driver.close)
        self.addCleanup(lambda: [subprocess.run(["fusermount3", "-u", "-z", os.path.join(
            driver.mounts, name)], stderr=subprocess.DEVNULL) for name in os.listdir(driver.mounts)])
        return driver

    def test_a_volume_is_the_remote_directory_while_mounted(self):
        os.mkdir(os.path.join(self.server.export, "data"))
        self.driver.create("data", self.server.options("data"))
        status = self.driver.get("data")["Status"]
        self.assertEqual(status["mounted"], False)
        self.assertEqual(status["options"]["allow_other"], "yes")  # the defaults, recorded
        path = self.driver.mount("data", MOUNT_ID)
        self.assertEqual(self.driver.mount("data", MOUNT_ID2), path)  # one sshfs for both
        with open(os.path.join(path, "f"), "w") as f:
            f.write("over ssh\n")
        with open(os.path.join(self.server.export, "data", "f")) as f:
            self.assertEqual(f.read(), "over ssh\n")  # on the server's side
        self.assertTrue(self.driver.get("data")["Status"]["mounted"])
        self.driver.unmount("data", MOUNT_ID)
        self.assertTrue(sshfs_mounted(path))  # another mount uses it
        self.driver.unmount("data", MOUNT_ID2)
        self.assertFalse(sshfs_mounted(path))
        self.driver.remove("data")
        self.assertEqual(os.listdir(self.driver.mounts), [])
        with open(os.path.join(self.server.export, "data", "f")) as f:
            self.assertEqual(f.read(), "over ssh\n")  # the data stays on the server

    def test_a_password_is_used_and_never_shown(self):
        os.mkdir(os.path.join(self.server.export, "p"))
        self.driver.create("p", self.server.options("p", password=SSHServer.PASSWORD))
        self.assertEqual(self.driver.get("p")["Status"]["options"]["password"], "****")
        with self.assertLogs("docker_volume_plugin", "DEBUG") as logs:
            path = self.driver.mount("p", MOUNT_ID)
            dvp.log.debug("mounted")
        self.assertTrue(sshfs_mounted(path))
        self.assertNotIn(SSHServer.PASSWORD, "\n".join(logs.output))
        for pid in os.listdir("/proc"):  # on no command line
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    self.assertNotIn(SSHServer.PASSWORD.encode(), f.read())
            except OSError:
                pass
        self.driver.unmount("p", MOUNT_ID)

    def test_a_failed_login_or_connection_fails_the_mount_with_ssh_s_own_words(self):
        for name, options, message in (
                ("badpass", self.server.options("x", password="wrong, with spaces"),
                 "Permission denied"),
                ("nokey", self.server.options("x", IdentityFile=self.server.identity + ".pub"),
                 "Permission denied"),
                ("closed", self.server.options("x", port=str(free_port())), "Connection refused"),
                ("unknown", self.server.options("x", UserKnownHostsFile="/dev/null",
                                                StrictHostKeyChecking="yes"),
                 "Host key verification failed")):
            self.driver.create(name, options)
            with self.assertRaises(dvp.PluginError) as caught:
                self.driver.mount(name, MOUNT_ID)
            # sshfs's own words, as the ssh it started went: then ssh's
            self.assertRegex(str(caught.exception), "sshfs failed: (read: Connection reset by "
                             "peer|write: Broken pipe)")
            self.assertIn(message, str(caught.exception), name)
            self.assertNotIn("wrong", str(caught.exception))
            self.assertEqual(self.driver.volumes()[name]["mounts"], {})
            self.driver.remove(name)

    def test_options_that_could_reach_sshfs_s_command_line_are_refused(self):
        for options, message in (
                ({"sshcmd": "-oProxyCommand=touch /tmp/x:/"}, "must be [user@]host:[path]"),
                ({"sshcmd": "h:/", "umask": "0,allow_root"}, "must be octal"),
                ({"sshcmd": "h:/", "UserKnownHostsFile": "/k,allow_root"}, "without commas"),
                ({"sshcmd": "h:/", "IdentityFile": "key"}, "absolute path"),
                ({"sshcmd": "h:/", "ssh_command": "touch /tmp/x"}, "ssh_command"),
                ({"sshcmd": "h:/", "StrictHostKeyChecking": "maybe"}, "one of yes, no, accept-new"),
                ({"port": "22"}, "option sshcmd is required")):
            with self.assertRaisesRegex(dvp.PluginError, re.escape(message)):
                self.driver.create("refused", options)
        self.assertEqual(self.driver.list(), [])

    def test_the_server_going_away_under_a_mount_and_the_plugin_restarting(self):
        os.mkdir(os.path.join(self.server.export, "v"))
        self.driver.create("v", self.server.options("v"))
        path = self.driver.mount("v", MOUNT_ID)
        with open(os.path.join(path, "f"), "w") as f:
            f.write("before\n")
        self.driver.close()  # the plugin restarts: the mount is sshfs's, it stays
        self.driver = self.new_driver()
        self.assertEqual(self.driver.volumes()["v"]["mounts"], {MOUNT_ID: 1})
        self.server.stop()  # then the server goes away under the mount
        self.driver.unmount("v", MOUNT_ID)  # still unmounted, nothing pending
        self.assertFalse(sshfs_mounted(path))
        self.assertNotIn("detach pending", self.driver.get("v")["Status"])
        self.server.start()
        path = self.driver.mount("v", MOUNT_ID)  # and back once it is
        with open(os.path.join(path, "f")) as f:
            self.assertEqual(f.read(), "before\n")
        self.driver.unmount("v", MOUNT_ID)

    def test_a_mount_whose_sshfs_died_is_mounted_anew_for_the_next_container(self):
        os.mkdir(os.path.join(self.server.export, "v"))
        self.driver.create("v", self.server.options("v"))
        path = self.driver.mount("v", MOUNT_ID)
        with open(os.path.join(path, "f"), "w") as f:
            f.write("kept\n")
        sshfs = [pid for pid in os.listdir("/proc") if pid.isdigit() and
                 _command_line(pid)[:1] == ["sshfs"] and path in _command_line(pid)]
        self.assertEqual(len(sshfs), 1)
        os.kill(int(sshfs[0]), signal.SIGKILL)  # as `docker plugin upgrade` does
        deadline = time.time() + 5
        while _sshfs_example()._connected(path) and time.time() < deadline:
            time.sleep(0.05)
        with self.assertRaises(OSError) as caught:
            os.stat(path)
        self.assertEqual(caught.exception.errno, errno.ENOTCONN)
        self.assertEqual(self.driver.mount("v", MOUNT_ID2), path)
        with open(os.path.join(path, "f")) as f:
            self.assertEqual(f.read(), "kept\n")
        self.assertEqual(self.driver.volumes()["v"]["mounts"], {MOUNT_ID: 1, MOUNT_ID2: 1})
        self.driver.unmount("v", MOUNT_ID)
        self.driver.unmount("v", MOUNT_ID2)
        self.assertFalse(sshfs_mounted(path))

    def test_passes_check(self):
        os.mkdir(os.path.join(self.server.export, "checked"))
        sock = os.path.join(self.base, "s.sock")
        server = dvp.UnixPluginServer(sock, self.driver).start()
        self.addCleanup(server.stop, 1.0)
        results = dvp.check_plugin(sock, options=self.server.options("checked"),
                                   bad_options={"port": "ssh"})
        self.assertEqual([(r["rule"], r["detail"]) for r in results if not r["passed"]], [])
        with open(_sshfs_example().__file__) as source:
            lines = [l for l in source if l.strip() and not l.strip().startswith("#")]
        self.assertLess(len(lines), 140)


def _command_line(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def sshfs_mounted(path):
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == path and " fuse.sshfs " in line for line in mountinfo)


# -- README --------------------------------------------------------------------------


def readme_example():
    """The README's driver example, as text (between its two marker comments)."""
    with open(os.path.join(HERE, "README.rst")) as f:
        text = f.read()
    block = text.split(".. example-start")[1].split(".. example-end")[0]
    code = block.split("::", 1)[1]
    return textwrap.dedent(code)


class ReadmeTests(QuietLogs, unittest.TestCase):
    def test_reference_lists_exactly_the_public_names(self):
        with open(os.path.join(HERE, "README.rst")) as f:
            reference = f.read().split(".. reference-start")[1].split(".. reference-end")[0]
        listed = set()
        for line in reference.splitlines():
            if line.startswith("``"):  # a definition's term: the names it documents
                listed.update(re.findall(r"``([A-Za-z_][A-Za-z_0-9]*)", line))
        self.assertEqual(listed, set(dvp.__all__))
        for name in dvp.__all__:
            self.assertTrue(hasattr(dvp, name), name)

    def test_readme_example_serves_a_working_driver(self):
        namespace = {"__name__": "readme_example"}
        exec(compile(readme_example(), "README.rst", "exec"), namespace)
        directory = temp_dir(self)
        path = os.path.join(directory, "m.sock")
        with dvp.UnixPluginServer(path, namespace["MemoryDriver"]()):
            with dvp.PluginClient(path) as client:
                self.assertEqual(client.activate(), ["VolumeDriver"])
                client.create("v", {"a": "b"})
                self.assertEqual(client.get("v")["Status"], {"a": "b"})
                self.assertTrue(client.mount("v", MOUNT_ID).startswith("/"))
                client.unmount("v", MOUNT_ID)
                self.assertEqual([v["Name"] for v in client.list()], ["v"])
                client.remove("v")
                with self.assertRaises(dvp.PluginCallError):
                    client.get("v")

    def test_readme_commands_are_the_real_ones(self):
        with open(os.path.join(HERE, "README.rst")) as f:
            text = f.read()
        self.assertIn("python3 -m docker_volume_plugin serve --name dirs --root /srv/vols", text)
        self.assertIn("python3 -m unittest -v test_docker_volume_plugin", text)
        with open(os.path.join(HERE, ".ci", "run")) as f:
            self.assertIn("-m unittest -v test_docker_volume_plugin", f.read())

# -- the real Docker engine ----------------------------------------------------------

DOCKER = os.environ.get("DVP_DOCKER_CLI") or (
    "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker")
IMAGE = os.environ.get("DVP_TEST_IMAGE", "busybox:local")

REFUSING_DRIVER = '''
import docker_volume_plugin as dvp

class Refusing(object):
    def create(self, name, options):
        raise dvp.PluginError("quota exceeded: tenant blue may have 3 volumes")
    def remove(self, name): pass
    def mount(self, name, mount_id): return "/nonexistent"
    def unmount(self, name, mount_id): pass
    def get(self, name): return None
    def list(self): return []
'''


def _engine_problem():
    """Why the engine tests cannot run here, or None."""
    if os.environ.get("DVP_ENGINE_TESTS") == "skip":
        return "DVP_ENGINE_TESTS=skip"
    if os.geteuid() != 0:
        return "needs root, to put plugin sockets in /run/docker/plugins"
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine: set DOCKER_HOST, e.g. eval \"$(.ci/engine start)\""
    try:
        if subprocess.run([DOCKER, "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=30).returncode != 0:
            return "the engine at %s does not answer" % os.environ.get("DOCKER_HOST", "default")
        if subprocess.run([DOCKER, "image", "inspect", IMAGE], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=30).returncode != 0:
            return "no image %s (.ci/engine start builds it)" % IMAGE
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "cannot run %s: %s" % (DOCKER, exc)
    return None


def _skip_or_fail(what, problem):
    """Skip when an engine is missing, or fail in CI (DVP_ENGINE_TESTS=require)."""
    if problem is not None:
        if os.environ.get("DVP_ENGINE_TESTS") == "require":
            raise AssertionError("%s required but cannot run: %s" % (what, problem))
        raise unittest.SkipTest(problem)


def _forget_test_plugins():
    """Restart the private engine, so that it forgets the tests' plugins.

    The engine keeps every volume driver it has used until it restarts (moby
    volume/drivers/extpoint.go), and an unfiltered ``docker volume ls`` asks
    each: one whose plugin is gone costs about 15 s of retries. Only an
    engine from .ci/engine is restarted; on another, run the tests' plugins'
    names past ``docker volume ls --filter driver=...`` or restart it.
    """
    engine_dir = os.environ.get("DVP_ENGINE_DIR")
    if not engine_dir or _engine_problem() is not None:
        return
    subprocess.run(["bash", os.path.join(HERE, ".ci", "engine"), "restart"], check=True,
                   env=dict(os.environ, DVP_ENGINE_DIR=engine_dir), timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # what a user runs next: it must not wait for a test plugin
        _command([DOCKER, "volume", "ls", "-q"], timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("after the engine tests, `docker volume ls` still waits for a "
                             "plugin that is gone")


def _command(argv, check=True, timeout=120, env=None):
    """Run an engine's command line; with ``check``, fail the test on an error."""
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(argv), result.returncode,
                                                     result.stderr.strip()))
    return result


CRASHING_QUOTA = '''
import os, signal, sys
sys.path.insert(0, %r)
import quota


class CrashingQuota(quota.QuotaVolumes):
    """examples/quota.py, killed (SIGKILL) inside attach or detach."""

    def __init__(self, root, crash=""):
        self.crash = crash
        quota.QuotaVolumes.__init__(self, root)

    def attach(self, name, options):
        path = quota.QuotaVolumes.attach(self, name, options)
        if self.crash == "attach":  # mounted, not yet counted
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    def detach(self, name, options, mountpoint):
        if self.crash == "detach":  # the count gone, not yet unmounted
            os.kill(os.getpid(), signal.SIGKILL)
        quota.QuotaVolumes.detach(self, name, options, mountpoint)
'''


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unlink_if_there(path):
    if os.path.exists(path):
        os.unlink(path)


class DirMemoryDriver(MemoryDriver):
    """MemoryDriver whose volumes are directories under ``base``, for containers."""

    def __init__(self, base):
        MemoryDriver.__init__(self)
        self.base = base

    def create(self, name, options):
        MemoryDriver.create(self, name, options)
        self.volumes[name]["Mountpoint"] = os.path.join(self.base, name)
        os.makedirs(self.volumes[name]["Mountpoint"])


class RecordingHandler(dvp.PluginRequestHandler):
    """The plugin's handler, noting who made each call and with what headers."""

    def do_POST(self):
        self.server.recorded.append((self.peer.get("command"), self.path.lstrip("/"),
                                     dict((k.lower(), v) for k, v in self.headers.items())))
        dvp.PluginRequestHandler.do_POST(self)


class RecordingServer(dvp.UnixPluginServer):
    """A plugin that remembers the calls an engine made since :meth:`take`."""

    handler_class = RecordingHandler

    def __init__(self, *args, **kwargs):
        self.recorded = []
        dvp.UnixPluginServer.__init__(self, *args, **kwargs)

    def take(self, engine):
        """The calls ``engine`` made (short names) since the last take, and
        their headers; a test's own clients are left out."""
        taken = self.recorded[:]
        del self.recorded[:len(taken)]  # a call arriving meanwhile stays for the next
        calls = [(path.replace("VolumeDriver.", ""), headers)
                 for command, path, headers in taken if command == engine]
        return [call for call, _ in calls], [headers for _, headers in calls]


def header_forms(headers):
    """The (Host, Accept, Content-Type) combinations among recorded headers."""
    return set((h.get("host"), h.get("accept"), h.get("content-type")) for h in headers)


def mount_tmpfs_inside(test, volume_dir):
    """A tmpfs at VOLUME_DIR/inner, as a driver that mounts under its
    Mountpoint makes one; unmounted at the test's end."""
    inner = os.path.join(volume_dir, "inner")
    os.mkdir(inner)
    subprocess.run(["mount", "-t", "tmpfs", "dvp-inner", inner], check=True)
    test.addCleanup(subprocess.run, ["umount", "-l", inner])
    return inner


def _server_version(command):
    """An engine's (major, minor), e.g. (20, 10), (26, 1), (5, 4)."""
    fmt = "{{.Server.Version}}" if "docker" in os.path.basename(command[0]) else "{{.Client.Version}}"
    out = _command(command + ["version", "--format", fmt]).stdout.strip()
    return tuple(int(part) for part in re.findall(r"\d+", out)[:2])


class EngineTests(unittest.TestCase):
    """Plugins started from the command line, driven through the docker CLI.

    Every test uses its own plugin name, and only calls that reach that
    plugin (``-d``, ``--volume-driver``, ``--filter driver=``): the engine
    caches every plugin it has used, and enumerating one that is gone costs
    about 15 s of retries (moby pkg/plugins/client.go, plugins.go).
    """

    counter = 0

    @classmethod
    def setUpClass(cls):
        _skip_or_fail("engine tests", _engine_problem())

    @classmethod
    def tearDownClass(cls):
        _forget_test_plugins()

    def setUp(self):
        self.base = temp_dir(self, prefix="dvp-engine-")
        self.emptied = set()  # drivers whose engine objects are removed already

    def docker(self, *args, **kwargs):
        return _command([DOCKER] + list(args), **kwargs)

    def start_plugin(self, name=None, root=None, extra=()):
        """Start the command line as users do; returns (name, root, process)."""
        if name is None:
            EngineTests.counter += 1
            name = "dvpt%d-%d" % (os.getpid(), EngineTests.counter)
        root = root or os.path.join(self.base, "root")
        sock = os.path.join(dvp.PLUGIN_SOCKET_DIR, name + ".sock")
        log_path = os.path.join(self.base, "plugin-%s.log" % name)
        log_file = open(log_path, "a")
        args = [sys.executable, MODULE, "serve", *QUICK_STOP, "--name", name, "--log-level", "DEBUG"]
        args += list(extra) or ["--root", root]
        proc = _spawn(self, args, stderr=log_file, env=dict(os.environ, PYTHONPATH=HERE))
        log_file.close()
        self.addCleanup(self._stop_plugin, proc, sock)
        self.addCleanup(self._remove_engine_objects, name)
        _wait_for_socket(sock, proc)
        self.plugin_log = log_path
        return name, root, proc

    def _stop_plugin(self, proc, sock):
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        if os.path.exists(sock) and proc.returncode != 0:
            os.unlink(sock)  # never leave a stale socket for the engine to hang on

    def _remove_engine_objects(self, driver):
        """Remove what the test left of DRIVER's, once: the cleanup of its
        latest start comes first, while that plugin still serves."""
        if driver in self.emptied:
            return
        self.emptied.add(driver)
        containers, volumes = self._leftovers(driver)
        for container in containers:
            self.docker("rm", "-f", container, check=False)
        for volume in volumes:
            self.docker("volume", "rm", "-f", volume, check=False)

    def _leftovers(self, driver):
        """The test's containers and DRIVER's volumes that the engine knows."""
        return (self.docker("ps", "-aq", "--filter", "label=dvp-test=" + driver).stdout.split(),
                self.docker("volume", "ls", "-q", "--filter", "driver=" + driver).stdout.split())

    def assert_left_nothing(self, driver):
        """Assert, while DRIVER's plugin serves, that the test left none of
        its containers or volumes, so that the cleanup need not ask again
        after the plugin is gone: each ask would then cost about 15 s of the
        engine's retries (moby pkg/plugins/plugins.go)."""
        self.assertEqual(self._leftovers(driver), ([], []))
        self.emptied.add(driver)

    def run_container(self, driver, *args, **kwargs):
        return self.docker("run", "--label", "dvp-test=" + driver, *args, **kwargs)

    def inspect(self, volume):
        return json.loads(self.docker("volume", "inspect", volume).stdout)[0]

    def listed(self, driver):
        return self.docker("volume", "ls", "-q", "--filter", "driver=" + driver).stdout.split()

    def test_create_ls_inspect_rm(self):
        name, root, _ = self.start_plugin()
        self.docker("volume", "create", "-d", name, "-o", "mode=0750", "-o", "uid=1000", "vol1")
        self.assertEqual(self.listed(name), ["vol1"])
        info = self.inspect("vol1")
        self.assertEqual(info["Driver"], name)
        self.assertEqual(info["Scope"], "local")
        self.assertEqual(info["Mountpoint"], os.path.join(root, "vol1"))
        self.assertEqual(info["Status"], {"options": {"mode": "0750", "uid": "1000"}, "mounts": 0})
        created = datetime.datetime.strptime(info["CreatedAt"][:19], "%Y-%m-%dT%H:%M:%S")
        self.assertLess(abs(created - datetime.datetime.utcnow()), datetime.timedelta(minutes=5))
        st = os.stat(os.path.join(root, "vol1"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o750, 1000))
        self.docker("volume", "rm", "vol1")
        self.assertEqual(self.listed(name), [])
        self.assertFalse(os.path.exists(os.path.join(root, "vol1")))

    def test_containers_write_and_read_through_the_volume(self):
        name, root, _ = self.start_plugin()
        self.run_container(name, "--rm", "-v", "shared:/data", "--volume-driver", name, IMAGE,
                           "sh", "-c", "echo written-by-one > /data/file")
        with open(os.path.join(root, "shared", "file")) as f:
            self.assertEqual(f.read(), "written-by-one\n")
        read = self.run_container(name, "--rm", "-v", "shared:/data", "--volume-driver", name, IMAGE,
                                  "cat", "/data/file")
        self.assertEqual(read.stdout, "written-by-one\n")
        self.assertEqual(self.inspect("shared")["Status"]["mounts"], 0)

    def test_two_containers_count_mounts(self):
        name, root, _ = self.start_plugin()
        self.docker("volume", "create", "-d", name, "both")
        for container in ("one", "two"):
            self.run_container(name, "-d", "--name", "%s-%s" % (name, container), "-v", "both:/data",
                               IMAGE, "sleep", "300")
        self.assertEqual(self.inspect("both")["Status"]["mounts"], 2)
        self.docker("stop", "-t", "0", name + "-one")
        self.assertEqual(self.inspect("both")["Status"]["mounts"], 1)  # still mounted for two
        self.docker("exec", name + "-two", "sh", "-c", "echo still-here > /data/f")
        with open(os.path.join(root, "both", "f")) as f:
            self.assertEqual(f.read(), "still-here\n")
        self.docker("stop", "-t", "0", name + "-two")
        self.assertEqual(self.inspect("both")["Status"]["mounts"], 0)

    def test_docker_cp_keeps_the_volume_mounted(self):
        name, root, _ = self.start_plugin()
        container = name + "-cp"
        self.run_container(name, "-d", "--name", container, "-v", "cpvol:/data", "--volume-driver", name,
                           IMAGE, "sh", "-c", "echo payload > /data/f; sleep 300")
        for _ in range(50):
            if os.path.exists(os.path.join(root, "cpvol", "f")):
                break
            time.sleep(0.1)
        self.docker("cp", container + ":/data/f", os.path.join(self.base, "copied"))
        with open(os.path.join(self.base, "copied")) as f:
            self.assertEqual(f.read(), "payload\n")
        with open(self.plugin_log) as f:  # docker cp mounted and unmounted the running ID
            mount_ids = re.findall(r"VolumeDriver\.Mount name='cpvol' id='(\w+)'", f.read())
        self.assertGreaterEqual(mount_ids.count(mount_ids[-1]), 2, mount_ids)
        self.assertEqual(self.inspect("cpvol")["Status"]["mounts"], 1)
        self.docker("exec", container, "sh", "-c", "echo after-cp > /data/g")
        self.assertTrue(os.path.exists(os.path.join(root, "cpvol", "g")))
        self.docker("stop", "-t", "0", container)
        self.assertEqual(self.inspect("cpvol")["Status"]["mounts"], 0)

    def test_rm_of_a_volume_in_use_is_refused(self):
        name, root, _ = self.start_plugin()
        self.docker("volume", "create", "-d", name, "busy")
        self.run_container(name, "-d", "--name", name + "-user", "-v", "busy:/data", IMAGE, "sleep", "300")
        refused = self.docker("volume", "rm", "busy", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("in use", refused.stderr)
        self.assertTrue(os.path.isdir(os.path.join(root, "busy")))
        self.docker("rm", "-f", name + "-user")
        self.docker("volume", "rm", "busy")
        self.assertFalse(os.path.exists(os.path.join(root, "busy")))

    def test_anonymous_volume_is_created_and_removed(self):
        name, root, _ = self.start_plugin()
        self.run_container(name, "--rm", "-v", "/data", "--volume-driver", name, IMAGE,
                           "sh", "-c", "touch /data/x")
        with open(self.plugin_log) as f:
            created = re.findall(r"VolumeDriver\.Create name='([0-9a-f]{64})'", f.read())
        self.assertEqual(len(created), 1)
        with open(self.plugin_log) as f:
            self.assertIn("VolumeDriver.Remove name='%s'" % created[0], f.read())
        self.assertEqual(self.listed(name), [])
        self.assertEqual([e for e in os.listdir(root) if not e.startswith(".")], [])

    def test_driver_error_reaches_the_user_verbatim(self):
        module = os.path.join(self.base, "refusing.py")
        with open(module, "w") as f:
            f.write(REFUSING_DRIVER)
        name, _, _ = self.start_plugin(extra=["--driver", module + ":Refusing"])
        result = self.docker("volume", "create", "-d", name, "nope", check=False)
        self.assertNotEqual(result.returncode, 0)
        # A 500 + Err, shown as every Go plugin's errors are (moby pkg/plugins/client.go).
        self.assertIn("VolumeDriver.Create: quota exceeded: tenant blue may have 3 volumes",
                      result.stderr)
        self.assertEqual(self.listed(name), [])

    def test_names_that_escape_the_root_are_refused(self):
        name, root, _ = self.start_plugin()
        for bad in ("../escaped", "..", "a/../../escaped2", ".hidden"):
            result = self.docker("volume", "create", "-d", name, bad, check=False)
            self.assertNotEqual(result.returncode, 0, bad)
            self.assertIn("invalid volume name", result.stderr)
        self.assertEqual(sorted(os.listdir(self.base)), ["plugin-%s.log" % name, "root"])
        self.assertEqual([e for e in os.listdir(root) if not e.startswith(".")], [])

    def test_plugin_sigkill_and_restart_loses_nothing(self):
        name, root, proc = self.start_plugin()
        self.docker("volume", "create", "-d", name, "-o", "mode=0700", "kept")
        self.run_container(name, "--rm", "-v", "kept:/data", IMAGE, "sh", "-c", "echo precious > /data/f")
        self.run_container(name, "-d", "--name", name + "-running", "-v", "kept:/data", IMAGE, "sleep", "300")
        proc.kill()  # SIGKILL: the socket stays behind, stale
        proc.wait()
        self.start_plugin(name=name, root=root)
        self.assertEqual(self.listed(name), ["kept"])
        info = self.inspect("kept")
        self.assertEqual(info["Status"], {"options": {"mode": "0700"}, "mounts": 1})
        read = self.run_container(name, "--rm", "-v", "kept:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "precious\n")
        self.docker("stop", "-t", "0", name + "-running")
        self.assertEqual(self.inspect("kept")["Status"]["mounts"], 0)

    def test_a_damaged_record_keeps_the_volume_the_engines_know(self):
        """A Get that failed made Docker forget the volume, and the next
        ``docker run -v kept`` made an empty local volume of that name."""
        name, root, proc = self.start_plugin()
        self.docker("volume", "create", "-d", name, "-o", "uid=1000", "kept")
        self.run_container(name, "--rm", "-v", "kept:/data", IMAGE, "sh", "-c", "echo precious > /data/f")
        proc.terminate()
        proc.wait(15)
        record = os.path.join(root, ".docker-volume-plugin", "kept.json")
        with open(record) as f:
            damaged = json.load(f)
        damaged["options"] = {"uid": 1000}  # a hand edit: not a string
        with open(record, "w") as f:
            json.dump(damaged, f)
        self.start_plugin(name=name, root=root)
        info = self.inspect("kept")
        self.assertEqual(info["Driver"], name)
        self.assertIn("kept.json is damaged", info["Status"]["problem"])
        self.assertEqual(self.listed(name), ["kept"])
        run = self.run_container(name, "--rm", "-v", "kept:/data", IMAGE, "ls", "/data", check=False)
        self.assertNotEqual(run.returncode, 0, run.stdout)
        self.assertIn("its state is damaged", run.stderr)
        self.assertEqual(self.inspect("kept")["Driver"], name)  # not a new local volume
        with open(os.path.join(root, "kept", "f")) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_a_refused_create_beside_an_existing_image_keeps_its_data(self):
        """A loop-mounted ext4 driver (examples/quota.py) whose state was wiped:
        ``docker volume create`` of the name reformatted the image."""
        root = os.path.join(self.base, "quota")
        extra = ["--driver", os.path.join(HERE, "examples", "quota.py") + ":QuotaVolumes",
                 "--driver-opt", "root=" + root]
        name, _, proc = self.start_plugin(extra=extra)
        self.docker("volume", "create", "-d", name, "-o", "size=16M", "db")
        self.run_container(name, "--rm", "-v", "db:/data", IMAGE, "sh", "-c", "echo precious > /data/f")
        proc.terminate()
        proc.wait(15)
        image = os.path.join(root, "images", "db.ext4")
        with open(image, "rb") as f:
            before = f.read()
        shutil.rmtree(os.path.join(root, "state"))  # wiped by mistake; the image stays
        self.start_plugin(name=name, extra=extra)
        self.docker("volume", "rm", "-f", "db", check=False)  # the engine forgets it too
        create = self.docker("volume", "create", "-d", name, "-o", "size=16M", "db", check=False)
        self.assertNotEqual(create.returncode, 0)
        self.assertIn("its storage is there already, with no record", create.stderr)
        with open(image, "rb") as f:
            self.assertEqual(f.read(), before)  # neither deleted nor reformatted
        self.assertEqual(self.listed(name), [])

    def test_a_busy_umount_is_retried_and_the_volume_removed_once_the_holder_is_gone(self):
        """The engine forgets a mount whose Unmount failed: the count stayed,
        and the volume was "in use" until someone ran ``mounts --release``."""
        root = os.path.join(self.base, "quota")
        name, _, _ = self.start_plugin(extra=[
            "--driver", os.path.join(HERE, "examples", "quota.py") + ":QuotaVolumes",
            "--driver-opt", "root=" + root])
        self.docker("volume", "create", "-d", name, "-o", "size=16M", "db")
        container = name + "-c"
        self.run_container(name, "-d", "--name", container, "-v", "db:/data", IMAGE, "sleep", "300")
        mountpoint = os.path.join(root, "mnt", "db")
        self.assertTrue(os.path.ismount(mountpoint))
        holder = subprocess.Popen(["sleep", "300"], cwd=mountpoint)  # umount: target is busy
        self.addCleanup(holder.kill)
        self.docker("rm", "-f", container)
        self.assertTrue(os.path.ismount(mountpoint))
        self.assertEqual(self.inspect("db")["Status"]["mounts"], 0)  # as the engine believes
        self.assertTrue(self.inspect("db")["Status"]["detach pending"])
        refused = self.docker("volume", "rm", "db", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("still attached", refused.stderr)
        holder.kill()
        holder.wait()
        self.docker("volume", "rm", "db")  # no manual step
        self.assertFalse(os.path.ismount(mountpoint))
        self.assertEqual(os.listdir(os.path.join(root, "images")), [])
        with open(self.plugin_log) as log_file:
            self.assertIn("detaching it after its last unmount failed: umount failed", log_file.read())

    def test_kill_9_inside_attach_or_detach_of_a_loop_mount_is_undone_at_start(self):
        """The loop driver killed at a chosen point: inside attach() once the
        image is mounted, inside detach() before it is unmounted. Restarted
        while the engine still retries the call it was killed in (for about
        15 s, moby pkg/plugins/client.go), as systemd's ``Restart=`` would: it
        detaches at start, before it serves, and refuses the retry, which
        comes without its body."""
        module = os.path.join(self.base, "crashing.py")
        with open(module, "w") as f:
            f.write(CRASHING_QUOTA % os.path.join(HERE, "examples"))
        root = os.path.join(self.base, "quota")
        mountpoint = os.path.join(root, "mnt", "db")

        def start(crash, name=None):
            return self.start_plugin(name=name, extra=[
                "--driver", module + ":CrashingQuota", "--driver-opt", "root=" + root,
                "--driver-opt", "crash=" + crash])
        for point in ("attach", "detach"):
            with self.subTest(point):
                name, _, proc = start(point)
                self.docker("volume", "create", "-d", name, "-o", "size=16M", "db")
                run = _spawn(self, [DOCKER, "run", "--label", "dvp-test=" + name, "--rm",
                                    "-v", "db:/data", IMAGE, "true"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
                self.assertEqual(proc.wait(30), -signal.SIGKILL)
                self.assertTrue(os.path.ismount(mountpoint))  # attached when it died
                os.unlink(os.path.join(dvp.PLUGIN_SOCKET_DIR, name + ".sock"))
                killed_log_size = os.path.getsize(self.plugin_log)
                restarted = start("", name)[2]
                stderr = run.communicate(timeout=60)[1]
                with open(self.plugin_log) as log_file:
                    log_file.seek(killed_log_size)
                    restarted_log = log_file.read()
                # Detached at start, before serving, with no call needed.
                self.assertRegex(restarted_log, r"\A[^\n]* volume 'db': its %s was cut short or "
                                 r"failed; detaching it\n[^\n]* volume 'db': detached at last\n"
                                 r"[^\n]* serving VolumeDriver " % point)
                # The engine's retry resends no body: refused with a word on why.
                self.assertRegex(restarted_log, r"VolumeDriver\.%s [0-9.]+ms failed: request has "
                                 r"no Name \(Docker resends" % ("Mount" if point == "attach"
                                                                 else "Unmount"))
                if point == "attach":  # the container never started
                    self.assertEqual(run.returncode, 125)
                    self.assertIn("VolumeDriver.Mount: request has no Name", stderr)
                else:  # it ran; the engine logs the failed Unmount and moves on
                    self.assertEqual((run.returncode, stderr), (0, ""))
                self.assertFalse(os.path.ismount(mountpoint))
                self.assertEqual(self.inspect("db")["Status"]["mounts"], 0)
                self.docker("volume", "rm", "db")
                self.assertEqual(os.listdir(os.path.join(root, "images")), [])
                self.assert_left_nothing(name)
                restarted.terminate()  # its lock on the root goes with it
                self.assertEqual(restarted.wait(15), 0)

    def test_readme_driver_served_with_driver_option(self):
        module = os.path.join(self.base, "memory.py")
        with open(module, "w") as f:
            f.write(readme_example())
        name, _, _ = self.start_plugin(extra=["--driver", module + ":MemoryDriver"])
        self.docker("volume", "create", "-d", name, "-o", "color=blue", "mem")
        self.assertEqual(self.inspect("mem")["Status"], {"color": "blue"})
        self.run_container(name, "--rm", "-v", "mem:/data", IMAGE, "sh", "-c", "echo hi > /data/f")
        read = self.run_container(name, "--rm", "-v", "mem:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "hi\n")
        self.assertEqual(self.listed(name), ["mem"])
        self.docker("volume", "rm", "mem")
        self.assertEqual(self.listed(name), [])

    def test_readme_base_class_driver_with_driver_options(self):
        module = os.path.join(self.base, "hostdirs.py")
        with open(module, "w") as f:
            f.write(hostdirs_example())
        allowed = os.path.join(self.base, "srv")
        os.mkdir(allowed, 0o700)
        name, _, _ = self.start_plugin(extra=["--driver", module + ":HostDirectories", "--driver-opt",
                                              "state_dir=" + os.path.join(self.base, "state"),
                                              "--driver-opt", "allowed=" + allowed])
        refused = self.docker("volume", "create", "-d", name, "-o", "path=/etc", "bad", check=False)
        self.assertIn("VolumeDriver.Create: path /etc is not under", refused.stderr)
        self.docker("volume", "create", "-d", name, "-o", "path=" + os.path.join(allowed, "web"), "web")
        self.run_container(name, "--rm", "-v", "web:/data", IMAGE, "sh", "-c", "echo hi > /data/index")
        read = self.run_container(name, "--rm", "-v", "web:/data", IMAGE, "cat", "/data/index")
        self.assertEqual(read.stdout, "hi\n")
        self.assertEqual(self.inspect("web")["Mountpoint"], os.path.join(allowed, "web"))
        self.docker("volume", "rm", "web")
        self.assertEqual(self.listed(name), [])
        with open(os.path.join(allowed, "web", "index")) as f:  # the host's data stays
            self.assertEqual(f.read(), "hi\n")

    def test_mounts_command_refuses_while_a_container_uses_the_volume(self):
        name, root, _ = self.start_plugin()
        self.docker("volume", "create", "-d", name, "held")
        self.run_container(name, "-d", "--name", name + "-user", "-v", "held:/data", IMAGE, "sleep", "300")
        command = [sys.executable, MODULE, "mounts", "--root", root, "--plugin", name]
        shown = _command(command)
        self.assertRegex(shown.stdout, r"\nheld\s+1\s+%s-user\s+[0-9a-f]{64}\(1\)\n" % name)
        refused = _command(command + ["--release", "held"], check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("Docker's running container(s) %s-user use volume held" % name, refused.stderr)
        self.docker("rm", "-f", name + "-user")
        # A mount that no container of this Docker holds: another engine's
        # (Podman, a second Docker), or a container removed since. Not proved
        # unused, so kept without --force.
        with dvp.PluginClient(name) as client:
            client.mount("held", "f" * 64)
        self.assertIn("in use", self.docker("volume", "rm", "held", check=False).stderr)
        kept = _command(command + ["--release", "held"], check=False)
        self.assertEqual((kept.returncode, kept.stdout), (1, "released 0 mount(s) of volume held, "
                                                             "kept 1\n"))
        self.assertIn("no container of this Docker holds it", kept.stderr)
        released = _command(command + ["--release", "held", "--force"])
        self.assertEqual(released.stdout.splitlines()[-1], "released 1 mount(s) of volume held")
        self.docker("volume", "rm", "held")

    def test_a_container_stopped_while_the_plugin_was_down_leaves_a_mount_shown_and_released(self):
        name, root, proc = self.start_plugin()
        self.docker("volume", "create", "-d", name, "kept")
        self.run_container(name, "-d", "--name", name + "-c", "-v", "kept:/data", IMAGE, "sleep", "300")
        proc.terminate()  # the plugin is down: an upgrade, a restart
        proc.wait(15)
        # Its Unmount fails: the engine retries for 15 s, logs "Failed to umount
        # volumes" and moves on, and never sends it again. The stopped
        # container keeps the mount's ID: proof that this Docker mounted it.
        self.docker("stop", "-t", "0", name + "-c")
        self.start_plugin(name=name, root=root)
        self.assertEqual(self.inspect("kept")["Status"]["mounts"], 1)  # still counted
        self.assertIn("in use", self.docker("volume", "rm", "kept", check=False).stderr)
        command = [sys.executable, MODULE, "mounts", "--root", root, "--plugin", name]
        shown = _command(command)
        self.assertRegex(shown.stdout, r"\nkept\s+1\s+none: stale\?\s+[0-9a-f]{64}\(1\)\n")
        released = _command(command + ["--release", "kept"])
        self.assertRegex(released.stdout, r"\Areleased mount [0-9a-f]{64} \(1\) of volume kept: "
                         r"Docker's container %s-c holds it and has stopped\nreleased 1 mount\(s\) "
                         r"of volume kept\n\Z" % name)
        self.docker("rm", name + "-c")
        self.docker("volume", "rm", "kept")

    def test_socket_activated_plugin_is_started_by_the_engines_first_call(self):
        EngineTests.counter += 1
        name = "dvpt%d-%d" % (os.getpid(), EngineTests.counter)
        sock = os.path.join(dvp.PLUGIN_SOCKET_DIR, name + ".sock")
        root = os.path.join(self.base, "root")
        with open(os.path.join(self.base, "plugin.log"), "a") as log_file:
            proc = _spawn(self, ["systemd-socket-activate", "-l", sock, sys.executable, MODULE,
                                 "serve", *QUICK_STOP, "--name", name, "--root", root], stderr=log_file,
                          env=dict(os.environ, PYTHONPATH=HERE))
        # The socket is systemd's: it stays after the plugin stops, so remove it.
        self.addCleanup(lambda: os.path.exists(sock) and os.unlink(sock))
        self.addCleanup(self._stop_plugin, proc, sock)
        self.addCleanup(self._remove_engine_objects, name)
        _wait_for_listening(sock)
        self.assertFalse(os.path.exists(root))  # listening, not started
        self.docker("volume", "create", "-d", name, "-o", "mode=0750", "activated")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(root, "activated")).st_mode), 0o750)
        self.run_container(name, "--rm", "-v", "activated:/data", IMAGE, "sh", "-c", "echo on > /data/f")
        read = self.run_container(name, "--rm", "-v", "activated:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "on\n")
        self.docker("volume", "rm", "activated")

    def test_remote_plugin_over_mutual_tls_through_a_json_spec(self):
        problem = _tls_problem()
        if problem:
            self.fail(problem) if os.environ.get("DVP_ENGINE_TESTS") == "require" else self.skipTest(problem)
        certs = make_certificates(temp_dir(self))
        EngineTests.counter += 1
        name = "dvpt%d-%d" % (os.getpid(), EngineTests.counter)
        spec = os.path.join(dvp.PLUGIN_SPEC_DIR, name + ".json")
        with open(os.path.join(self.base, "plugin.log"), "a") as log_file:
            proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--name", name, "--root",
                                 os.path.join(self.base, "root"), "--tcp", "127.0.0.1:0",
                                 "--tls-cert", certs["plugin"], "--tls-key", certs["plugin-key"],
                                 "--tls-ca", certs["ca"], "--tls-client-cert", certs["engine"],
                                 "--tls-client-key", certs["engine-key"]],
                          stderr=log_file, env=dict(os.environ, PYTHONPATH=HERE))
        self.addCleanup(self._stop_plugin, proc, spec)
        self.addCleanup(self._remove_engine_objects, name)
        for _ in range(200):
            if os.path.exists(spec):
                break
            time.sleep(0.05)
        with open(spec) as f:
            self.assertTrue(json.load(f)["Addr"].startswith("https://127.0.0.1:"))
        self.docker("volume", "create", "-d", name, "-o", "mode=0700", "remote")
        self.run_container(name, "--rm", "-v", "remote:/data", IMAGE, "sh", "-c", "echo tls > /data/f")
        read = self.run_container(name, "--rm", "-v", "remote:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "tls\n")
        self.assertEqual(self.listed(name), ["remote"])
        self.docker("volume", "rm", "remote")
        with open(os.path.join(self.base, "plugin.log")) as f:
            self.assertNotIn("handshake", f.read())  # the engine presented its certificate
        self.assert_left_nothing(name)
        proc.terminate()
        self.assertEqual(proc.wait(15), 0)
        self.assertFalse(os.path.exists(spec))

    def test_check_by_name_passes_on_the_engine_host(self):
        name, root, _ = self.start_plugin()
        result = subprocess.run([sys.executable, MODULE, "check", name], stdout=subprocess.PIPE,
                                universal_newlines=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("PASS reachable: unix://%s/%s.sock" % (dvp.PLUGIN_SOCKET_DIR, name), result.stdout)
        self.assertEqual([e for e in os.listdir(root) if not e.startswith(".")], [])

    def start_recording_plugin(self):
        """The directory driver in this process, recording the engine's calls."""
        EngineTests.counter += 1
        name = "dvpr%d-%d" % (os.getpid(), EngineTests.counter)
        root = os.path.join(self.base, "root")
        server = RecordingServer(os.path.join(dvp.PLUGIN_SOCKET_DIR, name + ".sock"),
                                 dvp.DirectoryDriver(root)).start()
        self.addCleanup(server.stop, 1.0)
        self.addCleanup(self._remove_engine_objects, name)
        return name, root, server

    def test_each_command_makes_the_calls_its_engine_version_makes(self):
        """What each Docker sends for each command, as recorded here on 20.10.24,
        26.1.5 and 28.5.2 (moby volume/service, daemon/volumes*.go): a change in
        an engine's sequence fails this test. The first command to use the
        plugin starts with Plugin.Activate and Capabilities. Not here: an
        anonymous volume without --volume-driver, which 20.10-27 make by asking
        every plugin the engine knows (each one gone costs 15 s of retries:
        seen alone, one Get here; none on 28, moby c1652ab357).
        """
        version = _server_version([DOCKER])
        name, root, server = self.start_recording_plugin()
        mount = ["Get", "Mount", "Get", "Unmount"]  # each Mount and Unmount after a Get
        commands = [
            ("volume create", ["volume", "create", "-d", name, "seq"],
             ["Plugin.Activate", "Capabilities", "Get", "Create"]),
            ("volume inspect", ["volume", "inspect", "seq"], ["Get"]),
            ("volume ls", ["volume", "ls", "--filter", "driver=" + name], ["List"]),
            # a Get for the mount point's volume, then one pair to copy the
            # image's /data in (any existing path on 20.10) and one to run
            ("run -v", ["run", "--rm", "--label", "dvp-test=" + name, "-v", "seq:/data", IMAGE,
                        "true"], ["Get"] + mount + mount),
            ("run -v --volume-driver, new", ["run", "--rm", "--label", "dvp-test=" + name, "-v",
                                             "new:/data", "--volume-driver", name, IMAGE, "true"],
             ["Get", "Create"] + mount + mount),
            # a named volume without -d goes to local, asking no plugin
            ("volume create, no -d", ["volume", "create", "local-one"], []),
            # prune is the local driver's alone; -a (23+) takes named volumes too
            ("volume prune", ["volume", "prune", "-f"] + (["-a"] if version >= (23, 0) else []),
             []),
            ("volume rm", ["volume", "rm", "seq", "new"], ["Get", "Get", "Remove"] * 2),
        ]
        headers = []
        for label, command, calls in commands:
            self.docker(*command)
            seen, their_headers = server.take("dockerd")
            self.assertEqual((label, seen), (label, calls), "Docker %d.%d" % version)
            headers += their_headers
            if label == "volume prune":  # the local volume went, the plugin's stayed
                self.assertEqual(sorted(self.listed(name)), ["new", "seq"])
                self.assertNotIn("local-one", self.listed("local"))
                server.take("dockerd")  # this check's List
        self.assertEqual([e for e in os.listdir(root) if not e.startswith(".")], [])
        # The Host header: empty from 20.10.24, plugin.moby.localhost from
        # 20.10.26, 23.0.7, 24.0.5 and 25 (moby pkg/plugins/client.go); Accept
        # always, never a Content-Type.
        host = "" if version < (23, 0) else "plugin.moby.localhost"
        self.assertEqual(header_forms(headers),
                         {(host, "application/vnd.docker.plugins.v1.2+json", None)})

    def test_volume_subpath_is_used_refused_when_missing_and_never_escapes(self):
        """--mount's volume-subpath, from Docker 26 (API 1.45): after Mount the
        engine opens the path inside the Mountpoint, and Unmounts at once if it
        cannot (moby daemon/volume/mounts/mounts.go); 20.10's CLI refuses it."""
        version = _server_version([DOCKER])
        name, root, server = self.start_recording_plugin()
        self.docker("volume", "create", "-d", name, "sp")
        os.mkdir(os.path.join(root, "sp", "sub"))
        with open(os.path.join(root, "sp", "sub", "f"), "w") as f:
            f.write("in sub\n")
        server.take("dockerd")

        def run(subpath):
            return self.run_container(name, "--rm", "--mount", "type=volume,src=sp,dst=/d,"
                                      "volume-subpath=" + subpath, IMAGE, "cat", "/d/f", check=False)
        if version < (26, 0):
            refused = run("sub")
            self.assertNotEqual(refused.returncode, 0)
            self.assertIn("volume-subpath", refused.stderr)
            self.assertEqual(server.take("dockerd")[0], [])
            return
        self.assertEqual(run("sub").stdout, "in sub\n")
        self.assertEqual(server.take("dockerd")[0], ["Get", "Get", "Mount", "Get", "Unmount"])
        missing = run("missing")
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("cannot access path %s" % os.path.join(root, "sp", "missing"), missing.stderr)
        self.assertEqual(server.take("dockerd")[0], ["Get", "Get", "Mount", "Get", "Unmount"])
        self.assertEqual(self.inspect("sp")["Status"]["mounts"], 0)  # undone at once
        server.take("dockerd")
        escaping = run("../sp")
        self.assertNotEqual(escaping.returncode, 0)
        self.assertIn("subpath must be a relative path within the volume", escaping.stderr)
        self.assertEqual(server.take("dockerd")[0], [])  # refused before any call

    def test_ro_reaches_what_the_driver_mounted_inside_from_docker_25(self):
        """:ro is recursively read-only from Docker 25 (moby daemon/oci_linux.go,
        kernel 5.12+): a file system the driver mounted under its Mountpoint is
        read-only in the container too; on 20.10 it stays writable."""
        version = _server_version([DOCKER])
        name, root, _ = self.start_recording_plugin()
        self.docker("volume", "create", "-d", name, "ro")
        inner = mount_tmpfs_inside(self, os.path.join(root, "ro"))

        def write(path):
            return self.run_container(name, "--rm", "-v", "ro:/d:ro", IMAGE, "touch", path,
                                      check=False)
        self.assertIn("Read-only file system", write("/d/top").stderr)
        inside = write("/d/inner/x")
        if version >= (25, 0):
            self.assertIn("Read-only file system", inside.stderr)
            self.assertFalse(os.path.exists(os.path.join(inner, "x")))
        else:
            self.assertEqual(inside.returncode, 0, inside.stderr)
            self.assertTrue(os.path.exists(os.path.join(inner, "x")))

    def start_sshfs_plugin(self):
        """examples/sshfs.py from the command line, and an sshd to mount from."""
        _skip_or_fail("the sshfs driver's engine tests", _sshfs_problem())
        ssh = SSHServer(self, os.path.join(self.base, "server"))
        extra = ["--driver", os.path.join(HERE, "examples", "sshfs.py") + ":SSHFSVolumes",
                 "--driver-opt", "root=" + os.path.join(self.base, "sshfs")]
        name, _, proc = self.start_plugin(extra=extra)
        return ssh, name, proc, extra

    def create_sshfs_volume(self, driver, ssh, volume, check=True, **options):
        os.makedirs(os.path.join(ssh.export, volume), exist_ok=True)
        return self.docker("volume", "create", "-d", driver, *ssh.create_arguments(volume, **options),
                           volume, check=check)

    def test_sshfs_volumes_are_the_servers_directory_shared_by_containers(self):
        ssh, name, _, _ = self.start_sshfs_plugin()
        self.create_sshfs_volume(name, ssh, "remote", password=SSHServer.PASSWORD)
        info = self.inspect("remote")
        self.assertEqual(info["Status"]["options"]["password"], "****")
        # Docker keeps the options it was given in its own database, and shows
        # them to whoever may run docker (moby volume/service): a key is safer.
        self.assertEqual(info["Options"]["password"], SSHServer.PASSWORD)
        mountpoint = os.path.join(self.base, "sshfs", "mnt", "remote")
        reader = name + "-reader"
        self.run_container(name, "-d", "--name", reader, "-v", "remote:/data", IMAGE, "sleep", "300")
        self.assertTrue(sshfs_mounted(mountpoint))
        self.run_container(name, "--rm", "-v", "remote:/data", IMAGE, "sh", "-c",
                           "echo from a container > /data/f")
        with open(os.path.join(ssh.export, "remote", "f")) as f:
            self.assertEqual(f.read(), "from a container\n")  # written on the server
        self.assertEqual(self.docker("exec", reader, "cat", "/data/f").stdout, "from a container\n")
        self.docker("rm", "-f", reader)
        self.assertFalse(sshfs_mounted(mountpoint))  # unmounted after the last container
        self.docker("volume", "rm", "remote")
        self.assertTrue(os.path.exists(os.path.join(ssh.export, "remote", "f")))  # kept there
        # A refused login fails the container with ssh's words.
        self.create_sshfs_volume(name, ssh, "refused", password="not-the-password")
        failed = self.run_container(name, "--rm", "-v", "refused:/data", IMAGE, "true", check=False)
        self.assertNotEqual(failed.returncode, 0)
        self.assertIn("Permission denied", failed.stderr)
        self.assertEqual(self.inspect("refused")["Status"]["mounted"], False)
        with open(self.plugin_log) as f:
            log = f.read()
        for secret in (SSHServer.PASSWORD, "not-the-password"):
            self.assertNotIn(secret, log)

    def test_sshfs_mount_outlives_a_plugin_kill_and_its_server_going_away(self):
        ssh, name, proc, extra = self.start_sshfs_plugin()
        self.create_sshfs_volume(name, ssh, "kept")  # not "v": "v:/data" is a drive letter to -v
        user = name + "-user"
        self.run_container(name, "-d", "--name", user, "-v", "kept:/data", IMAGE, "sleep", "300")
        self.docker("exec", user, "sh", "-c", "echo kept > /data/f")
        mountpoint = self.inspect("kept")["Mountpoint"]
        self.assertTrue(sshfs_mounted(mountpoint))
        proc.kill()  # kill -9 of the plugin: the mount is sshfs's, and stays
        proc.wait()
        self.start_plugin(name=name, extra=extra)
        self.assertEqual(self.docker("exec", user, "cat", "/data/f").stdout, "kept\n")
        self.assertEqual(self.inspect("kept")["Status"]["mounted"], True)
        ssh.stop()  # then the server goes away under the running container
        self.docker("rm", "-f", user)  # its Unmount still unmounts
        self.assertFalse(sshfs_mounted(mountpoint))
        self.assertNotIn("detach pending", self.inspect("kept")["Status"])
        ssh.start()
        read = self.run_container(name, "--rm", "-v", "kept:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "kept\n")
        self.docker("volume", "rm", "kept")

    def test_trace_of_docker_run_shows_the_engines_call_sequence(self):
        trace = os.path.join(self.base, "trace.jsonl")
        name, root, _ = self.start_plugin(extra=["--root", os.path.join(self.base, "root"),
                                                 "--trace", trace])
        self.run_container(name, "--rm", "-v", "traced:/data", "--volume-driver", name, IMAGE,
                           "sh", "-c", "echo hi > /data/f")
        self.docker("volume", "rm", "traced")
        lines = trace_lines(trace)
        while not any(line["endpoint"] == "/VolumeDriver.Remove" for line in lines):
            lines = trace_lines(trace, at_least=len(lines) + 1)
        self.assert_docker_sequence(lines, "traced", os.path.join(self.base, "root", "traced"))

    def assert_docker_sequence(self, lines, volume, mountpoint):
        """Docker's calls for run -v and volume rm, in order, and from dockerd alone."""
        engine = [line for line in lines if line["peer"].get("command") == "dockerd"]
        endpoints = [line["endpoint"] for line in engine]
        self.assertEqual(endpoints[0], "/Plugin.Activate", endpoints)
        first = dict((endpoint, endpoints.index(endpoint)) for endpoint in reversed(endpoints))
        order = [first.get("/VolumeDriver." + call) for call in ("Create", "Mount", "Unmount",
                                                                  "Remove")]
        self.assertEqual(order, sorted(order), endpoints)
        self.assertNotIn(None, order, endpoints)
        mount, unmount = engine[order[1]], engine[order[2]]
        self.assertEqual(mount["request"]["Name"], volume)
        self.assertEqual(mount["request"]["ID"], unmount["request"]["ID"])
        self.assertEqual(mount["reply"], {"Mountpoint": mountpoint})
        self.assertEqual(set(line["peer"]["uid"] for line in engine), {0})
        return endpoints

    def test_prometheus_scrapes_the_metrics_of_a_plugin_the_engine_uses(self):
        import urllib.parse
        import urllib.request
        prometheus = shutil.which("prometheus")
        _skip_or_fail("the Prometheus test", None if prometheus else
                      "no prometheus (Debian's package; .ci/run installs it)")
        port, web = free_port(), free_port()
        name, root, _ = self.start_plugin(extra=["--root", os.path.join(self.base, "root"),
                                                 "--metrics", "127.0.0.1:%d" % port])
        self.run_container(name, "-d", "--name", name + "-c", "-v", "scraped:/data",
                           "--volume-driver", name, IMAGE, "sleep", "300")
        config = os.path.join(self.base, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dvp\n"
                    "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % port)
        with open(os.path.join(self.base, "prometheus.log"), "w") as log_file:
            _spawn(self, [prometheus, "--config.file=" + config,
                          "--storage.tsdb.path=" + os.path.join(self.base, "tsdb"),
                          "--web.listen-address=127.0.0.1:%d" % web], stdout=log_file,
                   stderr=subprocess.STDOUT)

        def query(expression):
            url = "http://127.0.0.1:%d/api/v1/query?%s" % (web, urllib.parse.urlencode(
                {"query": expression}))
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    result = json.loads(reply.read().decode())["data"]["result"]
            except OSError:  # not listening yet
                return None
            return [float(series["value"][1]) for series in result]

        def wait_for(expression, value):
            deadline = time.time() + 60
            while query(expression) != [value] and time.time() < deadline:
                time.sleep(0.5)
            self.assertEqual(query(expression), [value], "%s; Prometheus's log: %s" % (
                expression, read_text(os.path.join(self.base, "prometheus.log"))[-2000:]))

        wait_for('up{job="dvp"}', 1)
        wait_for("docker_volume_plugin_mounts", 1)
        wait_for("docker_volume_plugin_volumes", 1)
        # Docker mounts a new volume once more at create, to copy the image's
        # files into it (moby daemon/create_unix.go): the counters agree with
        # the gauge all the same.
        held = " - ".join('(sum(docker_volume_plugin_calls_total{endpoint="/VolumeDriver.%s",'
                          'outcome="ok"}) or vector(0))' % call for call in ("Mount", "Unmount"))
        wait_for(held, 1)
        wait_for('docker_volume_plugin_call_duration_seconds_count{endpoint="/VolumeDriver.Create"}', 1)
        self.docker("stop", "-t", "0", name + "-c")
        wait_for("docker_volume_plugin_mounts", 0)
        wait_for(held, 0)
        # README's alert on errors: the engine's probing (a Get of a volume not
        # made yet) is not_found, no error.
        wait_for('sum(docker_volume_plugin_calls_total{outcome=~"refused|exception"}) or vector(0)', 0)

    def test_tap_in_front_of_a_plain_http_server_plugin_the_engine_uses(self):
        EngineTests.counter += 1
        name = "dvpt%d-%d" % (os.getpid(), EngineTests.counter)
        sock = os.path.join(dvp.PLUGIN_SOCKET_DIR, name + ".sock")
        driver = DirMemoryDriver(os.path.join(self.base, "dirs"))
        server = IndependentServer(sock, IndependentPlugin)
        server.driver = driver
        thread = threading.Thread(target=server.serve_forever, args=(0.01,))
        thread.start()
        self.addCleanup(_unlink_if_there, sock)
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.addCleanup(self._remove_engine_objects, name)
        inode = os.stat(sock).st_ino
        trace = os.path.join(self.base, "tap.jsonl")
        tap = start_tap(self, name, trace, os.path.join(self.base, "tap.log"))
        self.docker("volume", "create", "-d", name, "tapped")
        self.run_container(name, "--rm", "-v", "tapped:/data", IMAGE, "sh", "-c",
                           "echo through-the-tap > /data/f")
        self.assertEqual(read_text(os.path.join(self.base, "dirs", "tapped", "f")),
                         "through-the-tap\n")
        self.docker("volume", "rm", "tapped")
        tap.terminate()
        self.assertEqual(tap.wait(15), 0, read_text(os.path.join(self.base, "tap.log")))
        self.assertEqual(os.stat(sock).st_ino, inode)
        self.assert_docker_sequence(trace_lines(trace), "tapped",
                                    os.path.join(self.base, "dirs", "tapped"))
        # Its connections to the tap closed, the engine reaches the plugin itself.
        self.docker("volume", "create", "-d", name, "after")
        self.assertIn("after", driver.volumes)
        self.docker("volume", "rm", "after")

    def test_zz_engine_restart_keeps_volumes(self):
        engine_dir = os.environ.get("DVP_ENGINE_DIR")
        if not engine_dir:
            if os.environ.get("DVP_ENGINE_TESTS") == "require":
                self.fail("DVP_ENGINE_DIR is not set: cannot restart the engine")
            self.skipTest("restarting needs an engine from .ci/engine (DVP_ENGINE_DIR)")
        name, root, _ = self.start_plugin()
        self.docker("volume", "create", "-d", name, "-o", "gid=42", "--label", "keep=yes", "survivor")
        self.run_container(name, "--rm", "-v", "survivor:/data", IMAGE, "sh", "-c", "echo x > /data/f")
        # At start the engine restores every volume with concurrent Gets.
        crowd = ["crowd%02d" % i for i in range(30)]
        for volume in crowd:
            self.docker("volume", "create", "-d", name, "--label", "crowd=yes", volume)
        engine_log = os.path.join(engine_dir, "dockerd.log")
        log_start = os.path.getsize(engine_log)
        subprocess.run(["bash", os.path.join(HERE, ".ci", "engine"), "restart"], check=True,
                       env=dict(os.environ, DVP_ENGINE_DIR=engine_dir), timeout=120)
        labelled = self.docker("volume", "ls", "-q", "--filter", "driver=" + name,
                               "--filter", "label=crowd=yes").stdout.split()
        self.assertEqual(sorted(labelled), crowd)  # none forgotten, labels kept
        with open(engine_log, errors="replace") as f:
            f.seek(log_start)
            refused = [line for line in f if name in line and "Unable to connect" in line]
        self.assertEqual(refused, [])  # every concurrent connect got in: no retries
        info = self.inspect("survivor")
        self.assertEqual(info["Driver"], name)
        self.assertEqual(info["Labels"], {"keep": "yes"})  # Docker kept its metadata
        self.assertEqual(info["Options"], {"gid": "42"})
        read = self.run_container(name, "--rm", "-v", "survivor:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "x\n")



class SwarmEngineTests(unittest.TestCase):
    """Plugin volumes for services, with the engine in swarm mode (a one-node swarm).

    The engine is put in swarm mode for these tests and taken out again after.
    """

    setUp = EngineTests.setUp
    docker = EngineTests.docker
    start_plugin = EngineTests.start_plugin
    _stop_plugin = EngineTests._stop_plugin
    inspect = EngineTests.inspect
    _leftovers = EngineTests._leftovers

    @classmethod
    def setUpClass(cls):
        _skip_or_fail("engine tests", _engine_problem())
        state = _command([DOCKER, "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()
        cls.joined = state != "active"
        if cls.joined:
            _command([DOCKER, "swarm", "init", "--advertise-addr", "127.0.0.1"])

    @classmethod
    def tearDownClass(cls):
        if cls.joined:
            _command([DOCKER, "swarm", "leave", "--force"], check=False)
        _forget_test_plugins()

    def _remove_engine_objects(self, driver):
        for service in self.docker("service", "ls", "-q", "--filter", "label=dvp-test=" + driver).stdout.split():
            self.docker("service", "rm", service, check=False)
        self.wait_for(lambda: not self.docker("ps", "-aq", "--filter", "label=com.docker.swarm.service.name",
                                              "--filter", "volume=" + driver + "-vol").stdout.split(),
                      "the service's containers to go")
        EngineTests._remove_engine_objects(self, driver)

    def wait_for(self, predicate, what, seconds=90):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        self.fail("gave up waiting for " + what)

    def advertise(self, driver):
        """Have the engine look the plugin up: a node offers swarm only the volume
        drivers it has used, and tasks wait for one that does ("missing plugin")."""
        self.docker("volume", "ls", "-q", "--filter", "driver=" + driver)
        self.wait_for(lambda: "Volume=" + driver in self.docker(
            "node", "inspect", "self", "--format",
            "{{range .Description.Engine.Plugins}}{{.Type}}={{.Name}} {{end}}").stdout,
            "the node to advertise the plugin")

    def service(self, driver, service, *args):
        volume = "type=volume,source=%s-vol,target=/d,volume-driver=%s,volume-opt=mode=0750" % (driver, driver)
        self.docker("service", "create", "--detach", "--name", service, "--label", "dvp-test=" + driver,
                    "--restart-delay", "1s", "--stop-grace-period", "1s", "--mount", volume, *args)

    def mounts(self, driver):
        """The plugin's own mount count for the test volume, by mount ID."""
        with dvp.PluginClient(driver, timeout=10) as client:
            try:
                client.get(driver + "-vol")
            except dvp.PluginCallError:
                return {}
        state = os.path.realpath(os.path.join(self.base, "root", ".docker-volume-plugin"))
        run = dvp._default_run_dir(state)
        if os.path.isdir(os.path.join(state, "nodes")):  # --scope global: shared state
            run = os.path.join(state, "nodes", socket.gethostname())
        try:
            with open(os.path.join(run, driver + "-vol.json")) as f:
                return json.load(f)["mounts"]
        except FileNotFoundError:
            return {}

    def test_service_replicas_rolling_update_and_removal(self):
        name, root, _ = self.start_plugin(extra=["--root", os.path.join(self.base, "root"),
                                                 "--scope", "global"])
        service = name + "-svc"
        self.advertise(name)
        self.service(name, service, IMAGE, "sh", "-c", "hostname >> /d/tasks; sleep 600")
        self.wait_for(lambda: len(self.mounts(name)) == 1, "the task to mount the volume")
        volume_dir = os.path.join(root, name + "-vol")
        self.assertEqual(stat.S_IMODE(os.stat(volume_dir).st_mode), 0o750)  # volume-opt applied
        self.wait_for(lambda: os.path.exists(os.path.join(volume_dir, "tasks")), "the task to write")
        self.assertEqual(self.inspect(name + "-vol")["Scope"], "global")
        self.docker("service", "scale", "--detach", service + "=3")
        self.wait_for(lambda: len(self.mounts(name)) == 3, "three replicas to mount")
        self.assertEqual(sorted(self.mounts(name).values()), [1, 1, 1])  # three IDs, one each
        self.docker("service", "update", "--detach", "--force", service)  # a rolling restart
        self.wait_for(lambda: self.docker("service", "inspect", service, "--format",
                                          "{{.UpdateStatus.State}}").stdout.strip() == "completed",
                      "the rolling update")
        self.wait_for(lambda: len(self.mounts(name)) == 3, "three mounts after the update")
        self.assertEqual(sorted(self.mounts(name).values()), [1, 1, 1])  # none leaked
        with open(os.path.join(volume_dir, "tasks")) as f:
            self.assertGreaterEqual(len(f.read().split()), 6)  # the new tasks found the same data
        self.docker("service", "rm", service)
        self.wait_for(lambda: self.mounts(name) == {}, "every mount to be released")

    def test_task_on_a_plugin_that_is_down_fails_naming_it_then_recovers(self):
        name, root, proc = self.start_plugin()
        self.docker("volume", "create", "-d", name, name + "-vol")
        proc.terminate()
        proc.wait(15)
        service = name + "-svc"
        self.service(name, service, IMAGE, "sleep", "600")
        errors = lambda: self.docker("service", "ps", service, "--no-trunc", "--format",
                                     "{{.Error}}").stdout
        self.wait_for(lambda: name in errors(), "the task to fail naming the plugin", seconds=120)
        self.start_plugin(name=name, root=root)
        self.wait_for(lambda: len(self.mounts(name)) == 1, "the task to recover", seconds=120)


def _nodes_problem():
    """Why the two-node swarm tests cannot run here, or None."""
    if os.environ.get("DVP_ENGINE_TESTS") == "skip":
        return "DVP_ENGINE_TESTS=skip"
    if os.geteuid() != 0:
        return "needs root, to enter the nodes' namespaces"
    if not os.environ.get("DVP_NODES_DIR"):
        return "no two-node swarm: eval \"$(.ci/nodes start)\""
    if shutil.which("nsenter") is None:
        return "no nsenter (util-linux)"
    return None


class TwoNodeSwarmEngineTests(unittest.TestCase):
    """A service's task moves between the two nodes of .ci/nodes (two engines,
    each in its own network, UTS and mount namespaces) and finds its data: the
    built-in driver, one plugin process per node, on a root both nodes see,
    scope global."""

    wait_for = SwarmEngineTests.wait_for

    @classmethod
    def setUpClass(cls):
        _skip_or_fail("two-node swarm tests", _nodes_problem())
        cls.nodes_dir = os.environ["DVP_NODES_DIR"]

    def setUp(self):
        self.base = temp_dir(self, prefix="dvp-nodes-")
        self.name = "dvpn%d" % os.getpid()

    def on(self, node, *args, **kwargs):
        env = dict(os.environ, DOCKER_HOST="unix://%s/node%d/docker.sock" % (self.nodes_dir, node))
        return _command([DOCKER] + list(args), env=env, **kwargs)

    def start_plugin(self, node, root):
        """The command line, in the node's namespaces, where its engine looks."""
        with open(os.path.join(self.nodes_dir, "node%d" % node, "ns.pid")) as f:
            pid = f.read().strip()  # the node's namespaces, with the host's files
        log_path = os.path.join(self.base, "plugin-node%d.log" % node)
        with open(log_path, "a") as log_file:
            proc = _spawn(self, ["nsenter", "-t", pid, "-m", "-u", "-n", sys.executable, MODULE,
                                 "serve", *QUICK_STOP, "--name", self.name, "--root", root, "--scope",
                                 "global", "--log-level", "DEBUG"],
                          stderr=log_file, env=dict(os.environ, PYTHONPATH=HERE))
        sock = os.path.join(self.nodes_dir, "node%d" % node, "plugins", self.name + ".sock")
        self.addCleanup(EngineTests._stop_plugin, self, proc, sock)
        _wait_for_socket(sock, proc)
        return sock

    def node_plugins(self, node):
        return self.on(1, "node", "inspect", "dvp-node%d" % node, "--format",
                       "{{range .Description.Engine.Plugins}}{{.Type}}={{.Name}} {{end}}").stdout

    def mounts(self, root, node, volume):
        """What one node's plugin counts for ``volume``, by mount ID."""
        path = os.path.join(root, ".docker-volume-plugin", "nodes", "dvp-node%d" % node,
                            volume + ".json")
        try:
            with open(path) as f:
                return json.load(f)["mounts"]
        except FileNotFoundError:
            return {}

    def test_task_moves_to_the_other_node_and_finds_its_data(self):
        root = os.path.join(self.base, "shared")  # the shared file system, seen by both
        volume, service = self.name + "-vol", self.name + "-svc"
        for node in (1, 2):
            self.start_plugin(node, root)
            self.on(node, "volume", "ls", "-q", "--filter", "driver=" + self.name)
        for node in (1, 2):
            self.wait_for(lambda: "Volume=" + self.name in self.node_plugins(node),
                          "node %d to advertise the plugin" % node)
        self.addCleanup(self.on, 1, "service", "rm", service, check=False)
        self.on(1, "service", "create", "--detach", "--name", service,
                "--constraint", "node.hostname==dvp-node1", "--env", "NODE={{.Node.Hostname}}",
                "--restart-delay", "1s", "--stop-grace-period", "1s", "--mount",
                "type=volume,source=%s,target=/d,volume-driver=%s,volume-opt=mode=0750"
                % (volume, self.name),
                IMAGE, "sh", "-c", "echo $NODE >> /d/nodes; sleep 600")
        volume_dir = os.path.join(root, volume)
        nodes_file = os.path.join(volume_dir, "nodes")

        def written():
            try:
                with open(nodes_file) as f:
                    return f.read().split()
            except FileNotFoundError:
                return []
        self.wait_for(lambda: written() == ["dvp-node1"], "the task on node 1 to write")
        self.assertEqual(stat.S_IMODE(os.stat(volume_dir).st_mode), 0o750)
        self.assertEqual(len(self.mounts(root, 1, volume)), 1)

        # Move it: node 2's plugin mounts what node 1's created and wrote.
        self.on(1, "service", "update", "--detach", "--constraint-rm", "node.hostname==dvp-node1",
                "--constraint-add", "node.hostname==dvp-node2", service)
        self.wait_for(lambda: written()[-1:] == ["dvp-node2"], "the task on node 2 to write")
        self.assertEqual(written(), ["dvp-node1", "dvp-node2"])  # it found node 1's line
        self.wait_for(lambda: self.mounts(root, 1, volume) == {}, "node 1 to release its mount")
        self.assertEqual(len(self.mounts(root, 2, volume)), 1)
        inspected = json.loads(self.on(2, "volume", "inspect", volume).stdout)[0]
        self.assertEqual((inspected["Scope"], inspected["Mountpoint"]), ("global", volume_dir))

        # Node 1's engine no longer uses it (once the old task's container is
        # gone), but it is mounted on node 2: kept.
        for container in self.on(1, "ps", "-aq", "--filter", "volume=" + volume).stdout.split():
            self.on(1, "rm", "-f", container)
        refused = self.on(1, "volume", "rm", volume, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("mounted on node dvp-node2", refused.stderr)
        self.assertTrue(os.path.exists(nodes_file))

        self.on(1, "service", "rm", service)
        self.wait_for(lambda: self.mounts(root, 2, volume) == {}, "node 2 to release its mount")
        self.wait_for(lambda: not self.on(2, "ps", "-aq", "--filter", "volume=" + volume)
                      .stdout.split(), "node 2 to remove the task's container")
        self.on(2, "volume", "rm", volume)
        self.assertFalse(os.path.exists(volume_dir))
        # Node 1's engine asks again: the volume is gone for every node.
        self.on(1, "volume", "rm", "-f", volume, check=False)
        self.assertEqual(self.on(1, "volume", "ls", "-q", "--filter", "driver=" + self.name)
                         .stdout.split(), [])


# -- Managed (v2) plugins ---------------------------------------------------------------

BUILD = os.path.join(HERE, "examples", "managed", "build.sh")


def _build_problem():
    """Why examples/managed/build.sh cannot run here, or None."""
    if os.geteuid() != 0:
        return "build.sh needs root: docker plugin create keeps the files' owners"
    if not os.path.exists("/usr/bin/python3") or shutil.which("ldd") is None:
        return "build.sh takes the host's /usr/bin/python3 and ldd"
    return None


def build_plugin(test, outdir, *args):
    """Run build.sh; returns its config.json."""
    result = _command(["bash", BUILD, outdir] + list(args), timeout=120)
    test.assertIn("docker plugin create NAME", result.stderr)
    with open(os.path.join(outdir, "config.json")) as f:
        return json.load(f)


def _tree_bytes(path):
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


class PluginConfigTests(unittest.TestCase):
    """`plugin-config` and examples/managed/build.sh, without an engine."""

    def config(self, *args):
        code, out, err = run_main(self, "plugin-config", *args)
        return code, (json.loads(out) if code == 0 else err)

    def test_built_in_driver_keeps_everything_under_the_propagated_mount(self):
        code, config = self.config()
        self.assertEqual(code, 0, config)
        self.assertEqual(config["interface"], {"types": ["docker.volumedriver/1.0"],
                                               "socket": "dirs.sock"})
        self.assertEqual(config["propagatedMount"], "/mnt/volumes")
        entrypoint = config["entrypoint"]
        self.assertEqual(entrypoint[:5], ["/usr/bin/python3", "-m", "docker_volume_plugin",
                                          "serve", "--name"])
        self.assertEqual(entrypoint[entrypoint.index("--socket") + 1],
                         "/run/docker/plugins/dirs.sock")
        self.assertTrue(entrypoint[entrypoint.index("--run-dir") + 1].startswith("/mnt/volumes/"))
        self.assertEqual(config["args"]["value"], ["--root", "/mnt/volumes"])
        self.assertEqual(config["args"]["settable"], ["value"])
        env = dict((e["name"], e) for e in config["env"])
        self.assertEqual(env["PYTHONUNBUFFERED"]["value"], "1")
        self.assertEqual(env["DVP_LOG_LEVEL"]["settable"], ["value"])
        self.assertEqual(env["DVP_PROPAGATED_MOUNT"], {"name": "DVP_PROPAGATED_MOUNT",
                                                       "value": "/mnt/volumes"})
        # nothing beyond Docker's defaults for a directory driver
        self.assertEqual(config["network"], {"type": ""})
        self.assertEqual(config["linux"]["capabilities"], [])
        self.assertEqual(config["linux"]["devices"], [])
        self.assertEqual(config["mounts"], [])
        self.assertFalse(config["linux"]["allowAllDevices"])

    def test_own_driver_with_what_it_needs(self):
        code, config = self.config("--driver", "/plugin/quota.py:QuotaDriver", "--driver-opt",
                                   "root=/mnt/volumes", "--capability", "cap_sys_admin",
                                   "--device", "/dev/loop-control", "--mount", "/dev:/dev",
                                   "--propagated-mount", "/data/", "--log-level", "debug",
                                   "--host-network")
        self.assertEqual(code, 0, config)
        self.assertEqual(config["network"], {"type": "host"})
        self.assertIn({"name": "DVP_PROPAGATED_MOUNT", "value": "/data"}, config["env"])
        self.assertIn("/plugin/quota.py:QuotaDriver", config["entrypoint"])
        self.assertNotIn("--run-dir", config["entrypoint"])
        self.assertEqual(config["args"]["value"], ["--driver-opt", "root=/mnt/volumes"])
        self.assertEqual(config["propagatedMount"], "/data")
        self.assertEqual(config["linux"]["capabilities"], ["CAP_SYS_ADMIN"])
        self.assertEqual(config["linux"]["devices"], [{"path": "/dev/loop-control"}])
        self.assertEqual([(m["source"], m["destination"]) for m in config["mounts"]],
                         [("/dev", "/dev")])
        self.assertEqual([e["value"] for e in config["env"] if e["name"] == "DVP_LOG_LEVEL"],
                         ["DEBUG"])

    def test_a_driver_in_a_managed_plugin_keeps_its_state_under_the_propagated_mount(self):
        problem = _build_problem()
        if problem is not None:
            raise unittest.SkipTest(problem)
        base = temp_dir(self)
        propagated, rootfs_state = os.path.join(base, "propagated"), os.path.join(base, "state")
        os.makedirs(propagated)
        # As in a plugin: the propagated mount is a bind mount, the rest the root's.
        code = textwrap.dedent("""
            import json, os, sys
            import docker_volume_plugin as dvp
            os.environ["DVP_PROPAGATED_MOUNT"] = sys.argv[1]
            driver = dvp.Driver(os.path.join(sys.argv[1], "state"))
            result = {"run_dir": driver.run_dir, "root": dvp._mount_point_of(sys.argv[2])}
            try:
                dvp.Driver(sys.argv[2])
            except dvp.PluginError as exc:
                result["refused"] = str(exc)
            print(json.dumps(result))
            """)
        result = _command(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$1" "$1" && exec "$2" -c "$3" "$1" "$4"', "sh",
                           propagated, sys.executable, code, rootfs_state],
                          env=dict(os.environ, PYTHONPATH=HERE))
        result = json.loads(result.stdout)
        self.assertTrue(result["run_dir"].startswith(
            os.path.join(propagated, ".docker-volume-plugin-run") + "/"), result)
        if result["root"] != "/":
            raise unittest.SkipTest("%s is not on the root file system" % base)
        self.assertIn("refusing to keep volume records in %s" % rootfs_state,
                      result.get("refused", ""))
        self.assertIn("docker plugin upgrade replaces it", result["refused"])

    def test_serve_options_that_cannot_apply_to_a_driver_are_refused(self):
        base = temp_dir(self)
        module = os.path.join(base, "perhost.py")
        with open(module, "w") as f:
            f.write("import docker_volume_plugin as dvp\n"
                    "class PerHost(dvp.Driver):\n"
                    "    def __init__(self, state_dir):\n"
                    "        dvp.Driver.__init__(self, state_dir)\n"
                    "class Shared(PerHost):\n"
                    "    scope = 'global'\n")
        state = "state_dir=" + os.path.join(base, "state")
        for args, message in (
                (["--driver", module + ":PerHost", "--driver-opt", state, "--root", "/srv/x"],
                 "--root is the built-in driver's"),
                (["--driver", module + ":PerHost", "--driver-opt", state, "--scope", "global"],
                 "PerHost keeps its state per node")):
            code, _, stderr = run_main(self, "serve", "--socket", os.path.join(base, "p.sock"),
                                       *args)
            self.assertEqual(code, 2, args)
            self.assertIn(message, stderr)
        self.assertFalse(os.path.exists("/srv/x"))
        with self.assertRaisesRegex(AssertionError, "went on to serve"):  # accepted: shared state
            run_main(self, "serve", "--socket", os.path.join(base, "p.sock"), "--driver",
                     module + ":Shared", "--driver-opt", state, "--scope", "global")

    def test_what_docker_plugin_set_could_not_carry_is_refused(self):
        for args, message in ((["--driver-opt", "x=1"], "--driver-opt goes with --driver"),
                              (["--driver", "/p/d.py:D", "--driver-opt", "x=a b"], "splits"),
                              (["--propagated-mount", "/"], "expected an absolute path"),
                              (["--propagated-mount", "rel"], "expected an absolute path"),
                              (["--mount", "/dev"], "SOURCE:DESTINATION")):
            code, stderr = self.config(*args)
            self.assertEqual(code, 2, args)
            self.assertIn(message, stderr)

    def test_log_level_from_the_environment(self):
        base = temp_dir(self)
        sock = os.path.join(base, "p.sock")
        with unittest.mock.patch.dict(os.environ, DVP_LOG_LEVEL="loud"):
            code, _, stderr = run_main(self, "serve", "--socket", sock)
        self.assertEqual(code, 2)
        self.assertIn("DVP_LOG_LEVEL='LOUD'", stderr)
        proc = _spawn(self, [sys.executable, MODULE, "serve", *QUICK_STOP, "--socket", sock, "--root",
                             os.path.join(base, "root"), "--run-dir", os.path.join(base, "run"),
                             "--limit", "max_body_bytes=100"],
                      env=dict(os.environ, DVP_LOG_LEVEL="debug"), stderr=subprocess.PIPE,
                      universal_newlines=True)
        _wait_for_socket(sock, proc)
        with dvp.PluginClient(sock) as client:
            client.list()
        # --limit is used. In one write, as the engine sends it: the reply
        # comes before the body is read, and the connection is then closed.
        big = json.dumps({"Name": "v", "Opts": {"x": "y" * 100}}).encode()
        reply = _parse_responses(_exchange_raw(sock, _docker_request("VolumeDriver.Create", big)))
        self.assertEqual(reply[0][0], 413)
        self.assertIn("over the 100-byte limit", reply[0][2]["Err"])
        self.assertTrue(os.path.exists(os.path.join(base, "run", "lock")))  # --run-dir is used
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)
        self.assertIn("DEBUG docker_volume_plugin: VolumeDriver.List", proc.stderr.read())

    def test_build_makes_a_small_rootfs_that_serves(self):
        problem = _build_problem()
        if problem is not None:
            raise unittest.SkipTest(problem)
        out = temp_dir(self, prefix="dvp-build-")
        config = build_plugin(self, out)
        rootfs = os.path.join(out, "rootfs")
        size = _tree_bytes(rootfs)
        self.assertLess(size, 20 * 2 ** 20, "rootfs of %.1f MB" % (size / 2 ** 20))
        for where in ("run/docker/plugins", "mnt/volumes", "plugin/docker_volume_plugin.py"):
            self.assertTrue(os.path.exists(os.path.join(rootfs, where)), where)
        # The plugin's argv, run in its rootfs alone: every module it needs is there.
        entrypoint = config["entrypoint"] + config["args"]["value"]
        sock = os.path.join(rootfs, "run/docker/plugins/dirs.sock")
        proc = _spawn(self, [shutil.which("chroot") or "/usr/sbin/chroot", rootfs] + entrypoint,
                      env={"PYTHONUNBUFFERED": "1", "PYTHONPATH": "/plugin"},
                      stderr=subprocess.PIPE, universal_newlines=True)
        _wait_for_socket(sock, proc)
        with dvp.PluginClient(sock) as client:
            client.create("v", {"mode": "0750"})
            self.assertEqual(client.mount("v", MOUNT_ID), "/mnt/volumes/v")
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(rootfs, "mnt/volumes/v")).st_mode),
                             0o750)
            client.unmount("v", MOUNT_ID)
            client.remove("v")
        proc.terminate()
        self.assertEqual(proc.wait(10), 0)
        log_text = proc.stderr.read()
        self.assertNotIn("Traceback", log_text)
        self.assertFalse(os.path.exists(os.path.join(rootfs, "mnt/volumes/v")))


def _registry_problem():
    if not os.environ.get("DVP_REGISTRY"):
        return "no local registry: DVP_REGISTRY (.ci/engine start runs one)"
    return _build_problem()


class ManagedEngineTests(unittest.TestCase):
    """A managed plugin built by examples/managed/build.sh, through its whole
    life on the real engine: create, push to a registry on loopback, install,
    use, disable, set, upgrade to a second version, remove."""

    docker = EngineTests.docker

    @classmethod
    def setUpClass(cls):
        _skip_or_fail("managed plugin tests", _engine_problem() or _registry_problem())
        cls.base = tempfile.mkdtemp(prefix="dvp-managed-")
        cls.versions = []
        for version in ("1", "2"):
            out = os.path.join(cls.base, "v" + version)
            _command(["bash", BUILD, out, "--description", "dvp test plugin v" + version])
            # Two versions must differ in content (the engine refuses a twin rootfs).
            with open(os.path.join(out, "rootfs", "plugin", "VERSION"), "w") as f:
                f.write(version + "\n")
            cls.versions.append(out)
        cls.data_root = _command([DOCKER, "info", "--format", "{{.DockerRootDir}}"]).stdout.strip()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base, ignore_errors=True)

    def setUp(self):
        self.alias = "dvpm%d-%s" % (os.getpid(), self._testMethodName[-8:].strip("_"))
        self.addCleanup(self.remove_plugin, self.alias)

    def remove_plugin(self, name):
        # Volumes first: a plugin removed with volumes left leaves their names
        # taken in the engine's store, for good ("volume name must be unique").
        for volume in self.docker("volume", "ls", "-q", "--filter", "driver=%s:latest" % name,
                                  check=False).stdout.split():
            self.docker("volume", "rm", "-f", volume, check=False)
        self.docker("plugin", "rm", "-f", name, check=False)

    def plugin(self, name):
        return json.loads(self.docker("plugin", "inspect", name, "--format", "{{json .}}").stdout)

    def run_container(self, volume, *command):
        return self.docker("run", "--rm", "-v", volume + ":/d", IMAGE, *command).stdout

    def plugin_log(self, plugin_id):
        """What the plugin printed, from the engine's log (lines tagged plugin=ID)."""
        path = os.path.join(os.environ.get("DVP_ENGINE_DIR", "/nonexistent"), "dockerd.log")
        if not os.path.exists(path):
            _skip_or_fail("the engine's log", "no dockerd.log under DVP_ENGINE_DIR")
        with open(path, errors="replace") as f:
            return [line for line in f if "plugin=" + plugin_id in line]

    def wait_for_log(self, plugin_id, text, seconds=15):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if any(text in line for line in self.plugin_log(plugin_id)):
                return
            time.sleep(0.2)
        self.fail("the plugin never logged %r; it logged:\n%s"
                  % (text, "".join(self.plugin_log(plugin_id)[-20:])))

    def test_lifecycle_through_a_registry(self):
        registry, alias = os.environ["DVP_REGISTRY"], self.alias
        v1, v2 = ("%s/%s:%s" % (registry, alias, tag) for tag in ("1", "2"))
        for reference, out in ((v1, self.versions[0]), (v2, self.versions[1])):
            self.docker("plugin", "create", reference, out)
            self.addCleanup(self.remove_plugin, reference)
            self.docker("plugin", "push", reference)
            self.docker("plugin", "rm", reference)
        self.docker("plugin", "install", "--grant-all-permissions", "--alias", alias, v1)
        volume = alias + "-v"
        info = self.plugin(alias)
        self.assertTrue(info["Enabled"])
        plugin_id = info["Id"]
        propagated = os.path.join(self.data_root, "plugins", plugin_id, "propagated-mount")

        # Create, write from one container, read from another.
        self.docker("volume", "create", "-d", alias, "-o", "mode=0750", "-o", "uid=1000", volume)
        self.run_container(volume, "sh", "-c", "echo kept > /d/f")
        self.assertEqual(self.run_container(volume, "cat", "/d/f"), "kept\n")
        volume_dir = os.path.join(propagated, volume)
        st = os.stat(volume_dir)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o750, 1000))
        self.assertEqual(json.loads(self.docker("volume", "inspect", volume).stdout)[0]["Driver"],
                         alias + ":latest")  # the engine's name for it

        # check, on the socket Docker dials: every rule passes.
        sock = os.path.join(dvp.PLUGIN_SOCKET_DIR, plugin_id, "dirs.sock")
        results = dvp.check_plugin("unix://" + sock)
        self.assertEqual([r for r in results if r["status"] == "fail"], [])

        # Disable is refused while a volume exists; forced, nothing is lost.
        refused = self.docker("plugin", "disable", alias, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("in use", refused.stderr)
        self.docker("plugin", "disable", "-f", alias)
        self.wait_for_log(plugin_id, "docker_volume_plugin: stopped")  # SIGTERM as PID 1
        self.docker("plugin", "enable", alias)
        self.assertEqual(self.run_container(volume, "cat", "/d/f"), "kept\n")

        # `docker plugin set` of an env value and of the args, after a re-enable.
        self.docker("plugin", "disable", "-f", alias)
        self.docker("plugin", "set", alias, "DVP_LOG_LEVEL=DEBUG",
                    "args=--root /mnt/volumes --scope global")
        self.docker("plugin", "enable", alias)
        self.assertEqual(json.loads(self.docker("volume", "inspect", volume).stdout)[0]["Scope"],
                         "global")
        self.wait_for_log(plugin_id, "DEBUG docker_volume_plugin: VolumeDriver.")

        # Upgrade to version 2: same volumes, same data, settings kept.
        self.docker("plugin", "disable", "-f", alias)
        self.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check",
                    alias, v2)
        self.docker("plugin", "enable", alias)
        info = self.plugin(alias)
        self.assertEqual(info["PluginReference"], v2)
        self.assertEqual(info["Config"]["Description"], "dvp test plugin v2")
        self.assertIn("DVP_LOG_LEVEL=DEBUG", info["Settings"]["Env"])
        self.assertEqual(self.run_container(volume, "cat", "/d/f"), "kept\n")
        self.assertEqual(self.docker("volume", "ls", "-q", "--filter", "driver=%s:latest"
                                     % alias).stdout.split(), [volume])

        # Removed, the engine is clean.
        self.docker("volume", "rm", volume)
        self.assertFalse(os.path.exists(volume_dir))
        self.docker("plugin", "rm", "-f", alias)
        self.assertNotIn(alias, self.docker("plugin", "ls", "--format", "{{.Name}}").stdout)
        self.assertFalse(os.path.exists(os.path.join(dvp.PLUGIN_SOCKET_DIR, plugin_id)))
        self.assertFalse(os.path.exists(os.path.join(self.data_root, "plugins", plugin_id)))

    def test_sshfs_driver_from_a_registry_through_an_upgrade_under_a_running_container(self):
        _skip_or_fail("the sshfs driver's managed plugin test", _sshfs_problem())
        base = tempfile.mkdtemp(prefix="dvp-managed-sshfs-", dir=self.base)
        ssh = SSHServer(self, os.path.join(base, "server"))
        os.makedirs(os.path.join(ssh.export, "check"))
        check_options = []
        for item in sorted(ssh.options("check").items()):
            check_options += ["--check-opt", "%s=%s" % item]
        registry, alias = os.environ["DVP_REGISTRY"], self.alias
        references = []
        for version in ("1", "2"):
            out = os.path.join(base, "v" + version)
            # The program, the libraries and the files it needs, from this host;
            # the server's keys bound in from it. Checked here on a tmpfs.
            config = build_plugin(
                self, out, "--driver", os.path.join(HERE, "examples", "sshfs.py") + ":SSHFSVolumes",
                "--name", "sshfs", "--driver-opt", "root=/mnt/volumes", "--binary", "sshfs",
                "--binary", "ssh", "--binary", "fusermount3", "--capability", "CAP_SYS_ADMIN",
                "--device", "/dev/fuse", "--host-network", "--mount", "%s:%s" % (ssh.base, ssh.base),
                "--description", "sshfs v" + version, *check_options)
            self.assertEqual((config["network"], config["linux"]["capabilities"],
                              config["linux"]["devices"]),
                             ({"type": "host"}, ["CAP_SYS_ADMIN"], [{"path": "/dev/fuse"}]))
            for program in ("usr/bin/sshfs", "usr/bin/ssh", "usr/bin/fusermount3", "etc/passwd"):
                self.assertTrue(os.path.exists(os.path.join(out, "rootfs", program)), program)
            self.assertFalse(os.path.exists("/mnt/volumes/state"))  # not the build host's
            reference = "%s/%s-sshfs:%s" % (registry, alias, version)
            self.docker("plugin", "create", reference, out)
            self.addCleanup(self.remove_plugin, reference)
            self.docker("plugin", "push", reference)
            self.docker("plugin", "rm", reference)
            references.append(reference)
        self.docker("plugin", "install", "--grant-all-permissions", "--alias", alias,
                    references[0])
        plugin_id = self.plugin(alias)["Id"]
        propagated = os.path.join(self.data_root, "plugins", plugin_id, "propagated-mount")
        volume = alias + "-data"
        os.makedirs(os.path.join(ssh.export, "data"))
        self.docker("volume", "create", "-d", alias, *ssh.create_arguments("data") + [volume])
        self.run_container(volume, "sh", "-c", "echo written > /d/f")
        with open(os.path.join(ssh.export, "data", "f")) as f:
            self.assertEqual(f.read(), "written\n")  # on the server
        # check, by name: found through the engine.
        results = dvp.check_plugin(alias, options=ssh.options("check"))
        self.assertEqual([r for r in results if r["status"] == "fail"], [])
        self.assertIn("managed plugin", results[0]["detail"])

        user = alias + "-user"
        self.docker("run", "-d", "--name", user, "-v", volume + ":/d", IMAGE, "sleep", "600")
        self.addCleanup(self.docker, "rm", "-f", user, check=False)
        counts = glob.glob(os.path.join(propagated, ".docker-volume-plugin-run", "*",
                                        volume + ".json"))
        self.assertEqual(len(counts), 1, "the mount counts are under the propagated mount")
        with open(counts[0]) as f:
            mounted = json.load(f)["mounts"]
        self.assertEqual(len(mounted), 1)
        self.assertEqual(self.inspect_status(volume)["mounted"], True)

        self.docker("plugin", "disable", "-f", alias)
        self.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check",
                    alias, references[1])
        self.docker("plugin", "enable", alias)
        self.assertEqual(self.plugin(alias)["Config"]["Description"], "sshfs v2")
        with open(counts[0]) as f:
            self.assertEqual(json.load(f)["mounts"], mounted)  # the count kept
        # The upgrade killed the plugin's sshfs (the engine unmounts the
        # propagated mount): the next container's Mount mounts it anew.
        self.assertEqual(self.run_container(volume, "cat", "/d/f"), "written\n")
        self.assertEqual(self.inspect_status(volume)["mounted"], True)
        with open(counts[0]) as f:
            self.assertEqual(json.load(f)["mounts"], mounted)  # its own count gone again
        # Its last Unmount, after the upgrade, unmounts.
        self.docker("rm", "-f", user)
        self.assertEqual(self.inspect_status(volume)["mounted"], False)
        self.assertFalse(os.path.exists(counts[0]))
        self.assertEqual(self.run_container(volume, "cat", "/d/f"), "written\n")
        self.docker("volume", "rm", volume)
        self.assertTrue(os.path.exists(os.path.join(ssh.export, "data", "f")))

    def inspect_status(self, volume):
        return json.loads(self.docker("volume", "inspect", volume).stdout)[0]["Status"]

    def test_rootfs_from_an_image(self):
        # An image with Python in it: here, this host's rootfs imported as one.
        image = "dvpm-python:%d" % os.getpid()
        with subprocess.Popen(["tar", "-C", os.path.join(self.versions[0], "rootfs"), "-c", "."],
                              stdout=subprocess.PIPE) as tar:
            imported = subprocess.run([DOCKER, "import", "-", image], stdin=tar.stdout,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(imported.returncode, 0, imported.stderr)
        self.addCleanup(self.docker, "image", "rm", "-f", image, check=False)
        out = os.path.join(self.base, "from-image")
        config = build_plugin(self, out, "--image", image)
        self.assertEqual(config["entrypoint"][0], "/usr/bin/python3")
        self.docker("plugin", "create", self.alias, out)
        self.docker("plugin", "enable", self.alias)
        self.docker("volume", "create", "-d", self.alias, self.alias + "-v")
        self.run_container(self.alias + "-v", "sh", "-c", "echo from-image > /d/f")
        self.assertEqual(self.run_container(self.alias + "-v", "cat", "/d/f"), "from-image\n")
        plugin_id = self.plugin(self.alias)["Id"]
        self.docker("volume", "rm", self.alias + "-v")
        self.docker("plugin", "rm", "-f", self.alias)  # enabled: forced
        self.assertFalse(os.path.exists(os.path.join(dvp.PLUGIN_SOCKET_DIR, plugin_id)))


# -- the shipped systemd units, under a real systemd -----------------------------------

SYSTEMD = os.path.join(HERE, ".ci", "systemd")


def _systemd_problem():
    """Why the units cannot run under .ci/systemd's systemd here, or None."""
    shared = os.environ.get("DVP_SHARED_DIR", "/tmp/dvp-shared")
    if not os.path.realpath(tempfile.gettempdir()).startswith(shared + "/"):
        return ("TMPDIR is not under %s, the one tree the engine shares with .ci/systemd's "
                "systemd (.ci/run sets it)" % shared)
    missing = [program for program in ("nsenter", "unshare", "debootstrap")
               if shutil.which(program) is None]
    return "missing %s (util-linux, debootstrap)" % ", ".join(missing) if missing else None


def _unmount_under(path):
    """Lazily unmount whatever is mounted under PATH (a dead sshfs, say)."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)


class SystemdEngineTests(unittest.TestCase):
    """Both shipped units under a real systemd, PID 1 of namespaces of its own
    (.ci/systemd), installed by the commands of their own comments and started
    by the engine's first call on their sockets.

    That systemd has a root file system of its own: it shares with the host
    (and the engine) only the plugin socket directory and the shared tree
    under /tmp. Drop-ins therefore give each test's plugin a name of its own
    (its socket), put the volumes' root in the shared tree where the engine
    sees it (for the directory unit, whose PrivateTmp would hide it, with
    PrivateTmp=no and the root read-write) and shorten WatchdogSec; the rest
    of each unit runs as shipped.
    """

    docker = EngineTests.docker
    run_container = EngineTests.run_container
    inspect = EngineTests.inspect
    _remove_engine_objects = EngineTests._remove_engine_objects
    _leftovers = EngineTests._leftovers

    WATCHDOG_SECONDS = 3

    @classmethod
    def setUpClass(cls):
        _skip_or_fail("systemd engine tests", _engine_problem() or _systemd_problem())
        cls.base = tempfile.mkdtemp(prefix="dvp-systemd-")
        try:  # the first run debootstraps its root (about 90 s), kept for the next
            cls.pid = _command(["bash", SYSTEMD, "start", cls.base], timeout=900).stdout.strip()
        except BaseException:
            cls.tearDownClass()
            raise
        cls.checkout = os.path.join(cls.base, "checkout")  # where the units' commands run
        os.makedirs(cls.checkout)
        shutil.copy(MODULE, cls.checkout)
        shutil.copytree(os.path.join(HERE, "examples"), os.path.join(cls.checkout, "examples"),
                        ignore=shutil.ignore_patterns("__pycache__"))

    @classmethod
    def tearDownClass(cls):
        _command(["bash", SYSTEMD, "stop", cls.base], check=False)
        _unmount_under(cls.base)
        shutil.rmtree(cls.base, ignore_errors=True)
        _forget_test_plugins()

    def setUp(self):
        self.base = temp_dir(self, prefix="test-", where=self.__class__.base)
        self.emptied = set()  # as in EngineTests

    def in_systemd(self, *argv, **kwargs):
        """Run ARGV in the systemd's namespaces, its root file system."""
        return _command(["nsenter", "-t", self.pid, "-m", "-p"] + list(argv), **kwargs)

    def inside(self, path):
        """PATH of the systemd's root file system, as the host sees it."""
        return "/proc/%s/root%s" % (self.pid, path)

    def show(self, unit):
        properties = self.in_systemd("systemctl", "show", unit).stdout
        return dict(line.split("=", 1) for line in properties.splitlines() if "=" in line)

    def install(self, stem, name, replacements, service_settings=""):
        """Unit docker-volume-plugin-STEM installed as its comment says, as
        plugin NAME; REPLACEMENTS (old: new) are made in its ExecStart and
        SERVICE_SETTINGS added, by drop-ins. Returns the unit's name."""
        unit = "docker-volume-plugin-" + stem
        with open(os.path.join(UNITS, unit + ".service")) as f:
            service = f.read()
        exec_start = re.search(r"(?m)^ExecStart=(.*)$", service).group(1)
        for old, new in replacements.items():
            self.assertIn(old, exec_start)
            exec_start = exec_start.replace(old, new)
        socket_path = os.path.join(dvp.PLUGIN_SOCKET_DIR, name + ".sock")
        drop_ins = {unit + ".socket": "[Socket]\nListenStream=\nListenStream=%s\n" % socket_path,
                    unit + ".service": "[Service]\nExecStart=\nExecStart=%s\nWatchdogSec=%d\n%s"
                    % (exec_start, self.WATCHDOG_SECONDS, service_settings)}
        for unit_file, text in drop_ins.items():
            directory = self.inside("/etc/systemd/system/%s.d" % unit_file)
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "test.conf"), "w") as f:
                f.write(text)
        commands = [line[4:] for line in service.splitlines() if line.startswith("#   ")]
        self.assertIn("systemctl daemon-reload && systemctl enable --now %s.socket" % unit, commands)
        self.addCleanup(_unlink_if_there, socket_path)  # systemd leaves it behind
        self.addCleanup(self.in_systemd, "systemctl", "disable", "--now", unit + ".socket",
                        unit + ".service", check=False)
        self.in_systemd("sh", "-ec", 'cd "$0"\n' + "\n".join(commands), self.checkout)
        self.addCleanup(self._remove_engine_objects, name)
        self.assertEqual(self.show(unit + ".socket")["ActiveState"], "active")
        self.assertEqual(self.show(unit + ".service")["ActiveState"], "inactive")  # not yet
        return unit

    def assert_started_ready(self, unit, name):
        """Started by the engine's first call, and ready (Type=notify: READY=1)."""
        service = self.show(unit + ".service")
        self.assertEqual((service["Type"], service["ActiveState"], service["SubState"]),
                         ("notify", "active", "running"))
        self.assertTrue(service["StatusText"].startswith("serving "), service["StatusText"])
        self.assertIn(name + ".sock", service["StatusText"])
        return service

    def restarted_by_the_watchdog(self, unit):
        """Stop the plugin (SIGSTOP): the watchdog must kill it and start another."""
        before = self.show(unit + ".service")
        self.in_systemd("sh", "-c", 'kill -STOP "$0"', before["MainPID"])
        deadline = time.time() + 10 * self.WATCHDOG_SECONDS
        while time.time() < deadline:
            after = self.show(unit + ".service")
            if after["ActiveState"] == "active" and after["MainPID"] not in ("0", before["MainPID"]):
                self.assertEqual(int(after["NRestarts"]), int(before["NRestarts"]) + 1)
                journal = self.in_systemd("journalctl", "--no-pager", "-u", unit + ".service")
                self.assertIn("Watchdog timeout", journal.stdout)
                return after
            time.sleep(0.2)
        self.fail("the watchdog did not restart %s: %s" % (unit, after))

    def mount_counts(self, volume):
        """The count files the plugin keeps under its RuntimeDirectory."""
        return glob.glob(self.inside("/run/docker-volume-plugin/*/%s.json" % volume))

    def test_the_directory_unit_started_by_the_engine_and_restarted_by_its_watchdog(self):
        name = "sd-dirs-%d" % os.getpid()
        root = os.path.join(self.base, "volumes")
        os.makedirs(root)
        unit = self.install("dirs", name, {"--name dirs": "--name " + name,
                                           "--root /var/lib/docker-volumes": "--root " + root},
                            "PrivateTmp=no\nReadWritePaths=%s\n" % root)
        self.docker("volume", "create", "-d", name, "kept")  # the engine's first call
        self.assert_started_ready(unit, name)
        state = os.stat(self.inside("/var/lib/docker-volumes"))  # StateDirectory=
        self.assertEqual(stat.S_IMODE(state.st_mode), 0o700)
        user = name + "-user"
        self.run_container(name, "-d", "--name", user, "-v", "kept:/data", IMAGE, "sleep", "300")
        self.docker("exec", user, "sh", "-c", "echo kept > /data/f")
        with open(os.path.join(root, "kept", "f")) as f:
            self.assertEqual(f.read(), "kept\n")
        self.assertEqual(len(self.mount_counts("kept")), 1)
        self.restarted_by_the_watchdog(unit)
        # RuntimeDirectoryPreserve=yes: the counts are there for the new process
        self.assertEqual(len(self.mount_counts("kept")), 1)
        self.assertEqual(self.inspect("kept")["Status"]["mounts"], 1)
        self.assertIn("in use", self.docker("volume", "rm", "kept", check=False).stderr)
        self.docker("rm", "-f", user)
        self.assertEqual(self.inspect("kept")["Status"]["mounts"], 0)
        self.docker("volume", "rm", "kept")
        self.assertFalse(os.path.exists(os.path.join(root, "kept")))

    def test_the_mounting_unit_whose_sshfs_mounts_the_containers_see(self):
        _skip_or_fail("the sshfs unit's tests", _sshfs_problem())
        ssh = SSHServer(self, os.path.join(self.base, "server"))
        name = "sd-sshfs-%d" % os.getpid()
        root = os.path.join(self.base, "sshfs")
        self.addCleanup(_unmount_under, root)  # after the unit's end: KillMode=process
        unit = self.install("sshfs", name, {"--name sshfs": "--name " + name,
                                            "root=/var/lib/sshfs-volumes": "root=" + root})
        os.makedirs(os.path.join(ssh.export, "remote"))
        self.docker("volume", "create", "-d", name, *ssh.create_arguments("remote"), "remote")
        self.assert_started_ready(unit, name)
        state = os.stat(self.inside("/var/lib/sshfs-volumes"))
        self.assertEqual(stat.S_IMODE(state.st_mode), 0o700)
        user = name + "-user"
        self.run_container(name, "-d", "--name", user, "-v", "remote:/data", IMAGE, "sleep", "300")
        mountpoint = self.inspect("remote")["Mountpoint"]
        # The service's mount, made in systemd's mount namespace, is where the
        # engine (and this test) see it: what containers write reaches the server.
        self.assertTrue(sshfs_mounted(mountpoint))
        self.run_container(name, "--rm", "-v", "remote:/data", IMAGE, "sh", "-c",
                           "echo from a container > /data/f")
        with open(os.path.join(ssh.export, "remote", "f")) as f:
            self.assertEqual(f.read(), "from a container\n")
        self.assertEqual(self.docker("exec", user, "cat", "/data/f").stdout, "from a container\n")
        self.restarted_by_the_watchdog(unit)
        # KillMode=process: the volume's sshfs outlived the plugin, and serves on
        self.assertEqual(self.docker("exec", user, "cat", "/data/f").stdout, "from a container\n")
        self.assertEqual(self.inspect("remote")["Status"]["mounted"], True)
        self.assertEqual(len(self.mount_counts("remote")), 1)
        read = self.run_container(name, "--rm", "-v", "remote:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "from a container\n")
        self.docker("rm", "-f", user)
        self.assertFalse(sshfs_mounted(mountpoint))  # unmounted after the last container
        self.docker("volume", "rm", "remote")
        self.assertTrue(os.path.exists(os.path.join(ssh.export, "remote", "f")))


# -- Podman: the second engine ---------------------------------------------------------

SLOW_DIRS_DRIVER = """
import os, time, docker_volume_plugin as dvp

class SlowDirs(dvp.DirectoryDriver):
    '''The directory driver, with a Mount slower than the engine waits.'''
    def __init__(self):
        dvp.DirectoryDriver.__init__(self, os.environ["DVP_SLOW_ROOT"])
    def mount(self, name, mount_id):
        time.sleep(float(os.environ["DVP_MOUNT_SECONDS"]))
        return dvp.DirectoryDriver.mount(self, name, mount_id)
"""


def _podman_problem():
    """Why the Podman tests cannot run here, or None."""
    if os.environ.get("DVP_ENGINE_TESTS") == "skip":
        return "DVP_ENGINE_TESTS=skip"
    if os.geteuid() != 0:
        return "needs root (rootful Podman)"
    if not os.environ.get("DVP_PODMAN_DIR") or not os.environ.get("CONTAINERS_CONF"):
        return "no private Podman: eval \"$(.ci/podman start)\""
    try:
        if subprocess.run(["podman", "image", "exists", IMAGE], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=60).returncode != 0:
            return "no image %s in Podman (.ci/podman start imports it)" % IMAGE
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "cannot run podman: %s" % exc
    return None


class PodmanTests(unittest.TestCase):
    """Plugins served by the command line, driven through the podman command.

    Each test gets its own plugin name and socket, listed in its own copy of
    the private containers.conf from .ci/podman; Podman asks plugins only
    through that file.
    """

    counter = 0

    @classmethod
    def setUpClass(cls):
        _skip_or_fail("Podman tests", _podman_problem())

    def setUp(self):
        self.base = temp_dir(self, prefix="dvp-podman-")
        PodmanTests.counter += 1
        self.name = "dvpp%d-%d" % (os.getpid(), PodmanTests.counter)
        self.sock = os.path.join(self.base, "plugin.sock")
        self.root = os.path.join(self.base, "root")
        self.plugin_log = os.path.join(self.base, "plugin.log")
        with open(os.environ["CONTAINERS_CONF"]) as f:
            config = f.read()
        self.conf = os.path.join(self.base, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(config + '\n[engine.volume_plugins]\n%s = "%s"\n' % (self.name, self.sock))

    def podman(self, *args, **kwargs):
        return _command(["podman"] + list(args), env=dict(os.environ, CONTAINERS_CONF=self.conf),
                        **kwargs)

    def start_plugin(self, extra=(), env=None):
        """Serve the plugin from the command line, as users do; returns the process."""
        args = [sys.executable, MODULE, "serve", *QUICK_STOP, "--name", self.name, "--socket", self.sock,
                "--log-level", "DEBUG"] + (list(extra) or ["--root", self.root])
        with open(self.plugin_log, "a") as log_file:
            proc = _spawn(self, args, stderr=log_file,
                          env=dict(os.environ, PYTHONPATH=HERE, **(env or {})))
        self.addCleanup(self._stop_plugin, proc)
        self.addCleanup(self._remove_podman_objects)  # runs first, while the plugin serves
        _wait_for_socket(self.sock, proc)
        return proc

    def _stop_plugin(self, proc):
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)

    def _remove_podman_objects(self):
        containers = self.podman("ps", "-aq", "--filter", "label=dvp-test=" + self.name, check=False)
        for container in containers.stdout.split():
            self.podman("rm", "-f", "-t", "0", container, check=False)
        for volume in self.podman_volumes():
            self.podman("volume", "rm", "-f", volume, check=False)

    def run_container(self, *args, **kwargs):
        return self.podman("run", "--label", "dvp-test=" + self.name, *args, **kwargs)

    def podman_volumes(self):
        return sorted(self.podman("volume", "ls", "-q", "--filter", "driver=" + self.name,
                                  check=False).stdout.split())

    def plugin_volumes(self):
        with dvp.PluginClient(self.sock) as client:
            return sorted(v["Name"] for v in client.list())

    def assert_views_agree(self, expected):
        self.assertEqual(self.podman_volumes(), sorted(expected))
        self.assertEqual(self.plugin_volumes(), sorted(expected))

    def status(self, volume):
        with dvp.PluginClient(self.sock) as client:
            return client.get(volume)["Status"]

    def test_create_with_options_write_read_and_two_containers(self):
        self.start_plugin()
        self.podman("volume", "create", "--driver", self.name, "-o", "uid=1000", "-o", "mode=0750",
                    "data")
        st = os.stat(os.path.join(self.root, "data"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o750, 1000))
        info = json.loads(self.podman("volume", "inspect", "data").stdout)[0]
        self.assertEqual(info["Driver"], self.name)
        self.assertEqual(info["Status"], {"options": {"mode": "0750", "uid": "1000"}, "mounts": 0})
        self.run_container("--rm", "-v", "data:/data", IMAGE, "sh", "-c", "echo one > /data/f")
        read = self.run_container("--rm", "-v", "data:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "one\n")
        for container in ("a", "b"):
            self.run_container("-d", "--name", "%s-%s" % (self.name, container), "-v", "data:/data",
                               IMAGE, "sleep", "300")
        # Podman counts its users itself and mounts once, with one ID.
        self.assertEqual(self.status("data")["mounts"], 1)
        self.podman("stop", "-t", "0", self.name + "-a")
        self.podman("exec", self.name + "-b", "sh", "-c", "echo two > /data/g")
        with open(os.path.join(self.root, "data", "g")) as f:
            self.assertEqual(f.read(), "two\n")
        self.assertEqual(self.status("data")["mounts"], 1)
        self.podman("stop", "-t", "0", self.name + "-b")
        self.assertEqual(self.status("data")["mounts"], 0)
        self.assert_views_agree(["data"])

    def test_mounts_release_keeps_a_mount_a_running_podman_container_uses(self):
        """Podman beside Docker: --release asked Docker, which runs no container
        with the volume, and released Podman's mount under its running
        container; the volume could then be removed under it."""
        self.start_plugin()
        self.podman("volume", "create", "--driver", self.name, "data")
        self.run_container("-d", "--name", self.name + "-c", "-v", "data:/data", IMAGE, "sleep", "300")
        self.assertEqual(self.status("data")["mounts"], 1)
        command = [sys.executable, MODULE, "mounts", "--root", self.root, "--plugin", self.sock,
                   "--release", "data"]
        env = dict(os.environ, CONTAINERS_CONF=self.conf, PYTHONPATH=HERE)
        kept = _command(command, check=False, env=env)
        self.assertEqual(kept.returncode, 1, kept.stderr)
        self.assertIn("mount %s (1) of volume data: Podman's running container(s) %s-c use it"
                      % (dvp._PODMAN_MOUNT_ID, self.name), kept.stderr)
        self.assertEqual(self.status("data")["mounts"], 1)
        self.podman("stop", "-t", "0", self.name + "-c")
        self.assertEqual(self.status("data")["mounts"], 0)
        with dvp.PluginClient(self.sock) as client:  # as left by a stop while the plugin was down
            client.mount("data", dvp._PODMAN_MOUNT_ID)
        released = _command(command, env=env)
        self.assertIn("of volume data: Podman runs no container that uses it\n", released.stdout)
        self.assertEqual(self.status("data")["mounts"], 0)

    def start_recording_plugin(self):
        """The directory driver in this process, recording Podman's calls."""
        server = RecordingServer(self.sock, dvp.DirectoryDriver(self.root)).start()
        self.addCleanup(server.stop, 1.0)
        self.addCleanup(self._remove_podman_objects)
        return server

    def run_podman(self, *args, **kwargs):
        return self.podman("run", "--rm", "--label", "dvp-test=" + self.name, *args, **kwargs)

    def test_each_command_makes_the_calls_its_podman_version_makes(self):
        """What Podman sends, the same on 4.3, 5.4 and 5.8 (libpod/plugin/
        volume_api.go): Podman's own headers, a Get per volume it knows for
        ls, its own mount counting, and a prune that removes unused plugin
        volumes (Docker's never does). Every podman process activates the
        plugin first; a container's cleanup process may too, so Activates are
        counted apart."""
        server = self.start_recording_plugin()
        commands = [
            ("volume create", ["volume", "create", "--driver", self.name, "seq"], ["Get", "Create"]),
            ("volume inspect", ["volume", "inspect", "seq"], ["Get"]),
            ("volume ls", ["volume", "ls"], ["Get"]),
            ("run -v", ["run", "--rm", "-v", "seq:/data", IMAGE, "true"], ["Mount", "Unmount"]),
            ("volume prune", ["volume", "prune", "-f"], ["Get", "Remove"]),
        ]
        headers = []
        for label, command, calls in commands:
            self.podman(*command)
            seen, their_headers = server.take("podman")
            self.assertEqual(seen[:1], ["Plugin.Activate"], label)
            self.assertEqual((label, [call for call in seen if call != "Plugin.Activate"]),
                             (label, calls))
            headers += their_headers
        self.assertEqual([e for e in os.listdir(self.root) if not e.startswith(".")], [])
        # Host: plugin, Podman's Content-Type and no Accept
        self.assertEqual(header_forms(headers),
                         {("plugin", None, "application/vnd.docker.plugins.v1.1+json")})

    def test_subpath_is_used_refused_when_missing_and_never_escapes(self):
        """--mount's subpath, from Podman 4.4: opened under the Mountpoint
        after Mount, and Unmounted when it cannot be (5.4 refuses a path
        leaving the volume; 5.8 opens it inside it, as openat2 RESOLVE_IN_ROOT
        does); 4.3 refuses the option."""
        version = _server_version(["podman"])
        server = self.start_recording_plugin()
        for volume in ("sp", "other"):
            self.podman("volume", "create", "--driver", self.name, volume)
        os.mkdir(os.path.join(self.root, "sp", "sub"))
        for path in (os.path.join(self.root, "sp", "sub", "f"), os.path.join(self.root, "other", "f")):
            with open(path, "w") as f:
                f.write("in %s\n" % os.path.basename(os.path.dirname(path)))
        server.take("podman")

        def run(subpath):
            result = self.run_podman("--mount", "type=volume,src=sp,dst=/d,subpath=" + subpath,
                                     IMAGE, "cat", "/d/f", check=False)
            return result, [call for call in server.take("podman")[0] if call != "Plugin.Activate"]
        if version < (4, 4):
            refused, calls = run("sub")
            self.assertIn("subpath: invalid mount option", refused.stderr)
            self.assertEqual(calls, [])
            return
        used, calls = run("sub")
        self.assertEqual((used.stdout, calls), ("in sub\n", ["Mount", "Unmount"]))
        for subpath in ("missing", "../other"):
            refused, calls = run(subpath)
            self.assertNotEqual(refused.returncode, 0, subpath)
            self.assertNotIn("in other", refused.stdout)
            self.assertIn("outside of the volume" if subpath.startswith("..") and version < (5, 8)
                          else "no such file or directory", refused.stderr)
            self.assertEqual(calls, ["Mount", "Unmount"], subpath)  # undone at once

    def test_ro_leaves_what_the_driver_mounted_inside_writable(self):
        """:ro makes the volume read-only, not what the driver mounted under
        its Mountpoint, on every Podman (Docker's is recursive from 25)."""
        self.start_recording_plugin()
        self.podman("volume", "create", "--driver", self.name, "ro")
        inner = mount_tmpfs_inside(self, os.path.join(self.root, "ro"))
        top = self.run_podman("-v", "ro:/d:ro", IMAGE, "touch", "/d/top", check=False)
        self.assertIn("Read-only file system", top.stderr)
        self.run_podman("-v", "ro:/d:ro", IMAGE, "touch", "/d/inner/x")
        self.assertTrue(os.path.exists(os.path.join(inner, "x")))

    def test_sshfs_volume_written_from_a_podman_container(self):
        _skip_or_fail("the sshfs driver's Podman test", _sshfs_problem())
        ssh = SSHServer(self, os.path.join(self.base, "server"))
        self.start_plugin(extra=["--driver", os.path.join(HERE, "examples", "sshfs.py") +
                                 ":SSHFSVolumes", "--driver-opt", "root=" + self.root])
        os.mkdir(os.path.join(ssh.export, "remote"))
        self.podman("volume", "create", "--driver", self.name, *ssh.create_arguments("remote"),
                    "remote")
        self.run_podman("-v", "remote:/data", IMAGE, "sh", "-c", "echo from podman > /data/f")
        with open(os.path.join(ssh.export, "remote", "f")) as f:
            self.assertEqual(f.read(), "from podman\n")
        self.assertFalse(sshfs_mounted(os.path.join(self.root, "mnt", "remote")))
        self.podman("volume", "rm", "remote")

    def test_rm_prune_and_reload(self):
        self.start_plugin()
        for volume in ("one", "two"):
            self.podman("volume", "create", "--driver", self.name, volume)
        self.assert_views_agree(["one", "two"])
        self.podman("volume", "rm", "one")
        self.assert_views_agree(["two"])
        self.assertFalse(os.path.exists(os.path.join(self.root, "one")))
        self.podman("volume", "prune", "-f")  # unlike Docker's, Podman's prune reaches plugins
        self.assert_views_agree([])
        with dvp.PluginClient(self.sock) as client:
            client.create("outside", {})  # made behind Podman's back
        self.assertEqual(self.podman_volumes(), [])
        self.podman("volume", "reload")
        self.assert_views_agree(["outside"])
        with dvp.PluginClient(self.sock) as client:
            client.remove("outside")
        self.podman("volume", "reload")
        self.assert_views_agree([])

    def test_every_refusal_fails_the_command_and_both_views_agree(self):
        self.start_plugin()
        result = self.podman("volume", "create", "--driver", self.name, "-o", "bogus=1", "bad",
                             check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown option(s) 'bogus'", result.stderr)
        self.assert_views_agree([])
        long_name = "n" * (dvp.DirectoryDriver.max_name_length + 1)  # Podman's own name check lets it through
        result = self.podman("volume", "create", "--driver", self.name, long_name, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("invalid volume name", result.stderr)
        self.assert_views_agree([])
        # A Mount that fails: the container must not start on anything else.
        self.podman("volume", "create", "--driver", self.name, "broken")
        os.rmdir(os.path.join(self.root, "broken"))
        result = self.run_container("--rm", "-v", "broken:/data", IMAGE, "sh", "-c",
                                    "touch /data/written", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("is missing; not mounting an empty one", result.stderr)
        self.assert_views_agree(["broken"])
        self.podman("volume", "rm", "broken")
        self.assert_views_agree([])
        # A Remove the plugin refuses: another engine still has the volume mounted.
        self.podman("volume", "create", "--driver", self.name, "held")
        with dvp.PluginClient(self.sock) as client:
            client.mount("held", MOUNT_ID)
        result = self.podman("volume", "rm", "held", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("is in use", result.stderr)
        self.assert_views_agree(["held"])
        self.assertTrue(os.path.isdir(os.path.join(self.root, "held")))
        with dvp.PluginClient(self.sock) as client:
            client.unmount("held", MOUNT_ID)
        self.podman("volume", "rm", "held")
        self.assert_views_agree([])

    def test_plugin_restarted_and_stopped(self):
        proc = self.start_plugin()
        self.podman("volume", "create", "--driver", self.name, "-o", "mode=0700", "kept")
        self.run_container("--rm", "-v", "kept:/data", IMAGE, "sh", "-c", "echo precious > /data/f")
        proc.terminate()
        self.assertEqual(proc.wait(15), 0)
        result = self.run_container("--rm", "-v", "kept:/data", IMAGE, "cat", "/data/f", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("plugin %s" % self.name, result.stderr)  # says which plugin is missing
        proc = self.start_plugin()
        read = self.run_container("--rm", "-v", "kept:/data", IMAGE, "cat", "/data/f")
        self.assertEqual(read.stdout, "precious\n")
        proc.kill()  # a stale socket now: Podman fails at once, no retry loop
        proc.wait()
        started = time.time()
        result = self.podman("volume", "inspect", "kept", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertLess(time.time() - started, 10)
        self.start_plugin()
        self.assertEqual(self.status("kept")["options"], {"mode": "0700"})
        self.assert_views_agree(["kept"])

    def test_mount_past_podman_deadline_is_undone(self):
        module = os.path.join(self.base, "slowdirs.py")
        with open(module, "w") as f:
            f.write(SLOW_DIRS_DRIVER)
        self.start_plugin(extra=["--driver", module + ":SlowDirs"],
                          env={"DVP_SLOW_ROOT": self.root, "DVP_MOUNT_SECONDS": "2.5"})
        # Podman's per-volume deadline (default 5 s), lowered to keep the test short.
        self.podman("volume", "create", "--driver", self.name, "-o", "o=timeout=1", "slow")
        result = self.run_container("--rm", "-v", "slow:/data", IMAGE, "true", check=False)
        self.assertNotEqual(result.returncode, 0)
        for _ in range(100):
            with open(self.plugin_log) as f:
                if "undone" in f.read():
                    break
            time.sleep(0.1)
        with open(self.plugin_log) as f:
            self.assertIn("undone: the client hung up", f.read())
        self.assertEqual(self.status("slow")["mounts"], 0)  # removable again
        self.podman("volume", "rm", "slow")
        self.assert_views_agree([])

    def test_check_finds_the_plugin_in_containers_conf(self):
        self.start_plugin()
        result = subprocess.run([sys.executable, MODULE, "check", self.name], stdout=subprocess.PIPE,
                                universal_newlines=True, timeout=120,
                                env=dict(os.environ, CONTAINERS_CONF=self.conf))
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("PASS reachable: unix://%s, from Podman's %s" % (self.sock, self.conf),
                      result.stdout)


if __name__ == "__main__":
    unittest.main()
