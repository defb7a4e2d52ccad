"""The baseline: the minimal volume plugin a person writes by hand.

http.server's BaseHTTPRequestHandler on a threaded Unix socket server,
HTTP/1.1 keep-alive, json; an in-memory driver. Usage:
    python3 baseline_plugin.py SOCKET_PATH [PRELOADED_VOLUMES]
"""
import http.server
import json
import os
import socketserver
import sys

VOLUMES = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self):  # client_address is '' on a Unix socket
        return "unix"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        name = request.get("Name")
        if self.path == "/Plugin.Activate":
            reply = {"Implements": ["VolumeDriver"]}
        elif self.path == "/VolumeDriver.Get":
            volume = VOLUMES.get(name)
            reply = {"Volume": volume} if volume else {"Err": "no such volume"}
        elif self.path == "/VolumeDriver.List":
            reply = {"Volumes": list(VOLUMES.values())}
        elif self.path == "/VolumeDriver.Create":
            VOLUMES[name] = {"Name": name, "Mountpoint": "/mnt/" + name}
            reply = {}
        else:
            reply = {"Err": "not implemented"}
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if __name__ == "__main__":
    for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 0):
        VOLUMES["vol%d" % i] = {"Name": "vol%d" % i, "Mountpoint": "/mnt/vol%d" % i}
    if os.path.exists(sys.argv[1]):
        os.unlink(sys.argv[1])
    Server(sys.argv[1], Handler).serve_forever()
