#!/usr/bin/env bash
# Make a managed (v2) Docker volume plugin: OUTDIR/config.json and OUTDIR/rootfs/
# for `docker plugin create NAME OUTDIR`.
#
#   examples/managed/build.sh OUTDIR [--driver FILE.py:ATTR] [--image IMAGE]
#                             [--python PATH] [plugin-config options...]
#
# The rootfs holds docker_volume_plugin.py (and the --driver file) in /plugin.
# Its Python comes from
#   - this host (the default, no network): the interpreter, the shared
#     libraries it links, and only the standard-library modules the plugin
#     imported when this script ran it and `check`ed it, as bytecode; or
#   - --image IMAGE, any image with Python in it (python:3-alpine, your
#     distribution's), exported with `docker create` + `docker export`.
# Other options (--driver-opt, --capability, --mount, --device, --log-level,
# --description, --name, --propagated-mount) go to `plugin-config`.
# Run it as root: `docker plugin create` keeps the files' owners, and the
# plugin refuses a root file system that another user could change.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "build.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
OUT=$1
shift
DRIVER= IMAGE= PLUGIN_PYTHON= CONFIG_ARGS=() DRIVER_OPTS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --driver) DRIVER=${2:?--driver needs FILE.py:ATTR}; shift 2 ;;
        --image) IMAGE=${2:?--image needs an image}; shift 2 ;;
        --python) PLUGIN_PYTHON=${2:?--python needs a path}; shift 2 ;;
        --driver-opt) DRIVER_OPTS+=("$1" "${2:?--driver-opt needs KEY=VALUE}"); shift 2 ;;
        -h|--help) usage ;;
        *) CONFIG_ARGS+=("$1"); shift ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run it as root: docker plugin create keeps the files' owners"

HERE=$(cd "$(dirname "$0")" && pwd)
MODULE=${DVP_MODULE:-$HERE/../../docker_volume_plugin.py}
HOST_PYTHON=${DVP_BUILD_PYTHON:-/usr/bin/python3}
[ -f "$MODULE" ] || die "no $MODULE"
ROOTFS=$OUT/rootfs
if [ -e "$ROOTFS" ] && [ -n "$(ls -A "$ROOTFS")" ]; then
    die "$ROOTFS is not empty"
fi
mkdir -p "$ROOTFS/plugin"
cp "$MODULE" "$ROOTFS/plugin/docker_volume_plugin.py"
DRIVER_IN_PLUGIN=()
if [ -n "$DRIVER" ]; then
    file=${DRIVER%:*} attr=${DRIVER##*:}
    [ -f "$file" ] && [ "$file" != "$DRIVER" ] || die "--driver $DRIVER: expected FILE.py:ATTR"
    cp "$file" "$ROOTFS/plugin/"
    DRIVER_IN_PLUGIN=(--driver "/plugin/$(basename "$file"):$attr")
fi
# What Docker binds into the plugin needs somewhere to go: the socket
# directory (PROTOCOL.md 4.2) and the propagated mount.
mkdir -p "$ROOTFS/run/docker/plugins" "$ROOTFS/mnt/volumes" "$ROOTFS/tmp" \
         "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/etc"
chmod 1777 "$ROOTFS/tmp"

if [ -n "$IMAGE" ]; then
    cid=$(docker create "$IMAGE" true)
    trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
    docker export "$cid" | tar -x -C "$ROOTFS" --exclude=dev --exclude=proc --exclude=sys
    if [ -z "$PLUGIN_PYTHON" ]; then
        for candidate in /usr/local/bin/python3 /usr/bin/python3; do
            if [ -e "$ROOTFS$candidate" ] || [ -L "$ROOTFS$candidate" ]; then
                PLUGIN_PYTHON=$candidate
                break
            fi
        done
        [ -n "$PLUGIN_PYTHON" ] || die "no python3 in $IMAGE; name it with --python"
    fi
    # The plugin's Python writes its bytecode on the first start.
else
    PLUGIN_PYTHON=${PLUGIN_PYTHON:-$(readlink -f "$HOST_PYTHON")}
    scratch=$(mktemp -d)
    trap 'kill "$server" 2>/dev/null || true; rm -rf "$scratch"' EXIT
    # Run the plugin as the config will run it, with `check` driving every
    # call, and list the modules it imported.
    cp "$ROOTFS/plugin/"*.py "$scratch/"
    driver_here=()
    [ -n "$DRIVER" ] && driver_here=(--driver "$scratch/$(basename "${DRIVER%:*}"):${DRIVER##*:}")
    if [ ${#driver_here[@]} -eq 0 ]; then
        driver_here=(--root "$scratch/volumes" --run-dir "$scratch/run")
    fi
    (cd "$scratch" && exec "$HOST_PYTHON" -c '
import atexit, runpy, sys
listing = sys.argv.pop(1)
def record():
    with open(listing, "w") as out:
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if path:
                out.write(path + "\n")
atexit.register(record)
sys.argv[0] = "docker_volume_plugin"
runpy.run_module("docker_volume_plugin", run_name="__main__", alter_sys=True)
' "$scratch/modules" serve --name build --socket "$scratch/build.sock" "${driver_here[@]}" \
        "${DRIVER_OPTS[@]}" --limit poll_interval=0.02 2>"$scratch/log") &
    server=$!
    for _ in $(seq 1 500); do [ -S "$scratch/build.sock" ] && break; sleep 0.02; done
    if ! "$HOST_PYTHON" "$MODULE" check "unix://$scratch/build.sock" >"$scratch/check"; then
        cat "$scratch/check" "$scratch/log" >&2
        die "the plugin did not pass check on this host"
    fi
    kill -TERM "$server"
    wait "$server" || die "the plugin did not stop cleanly: $(cat "$scratch/log")"
    "$HOST_PYTHON" - "$ROOTFS" "$scratch/modules" "$PLUGIN_PYTHON" <<'EOF'
"""Copy the interpreter, its libraries and the modules it imported."""
import os, py_compile, shutil, subprocess, sys, sysconfig
rootfs, listing, python = sys.argv[1:]
stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
dynload = os.path.join(stdlib, "lib-dynload")

def place(path):
    """Copy a host file to the same path in the rootfs, links and all."""
    target = rootfs + path
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        link = os.readlink(path)
        os.symlink(link, target)
        place(os.path.normpath(os.path.join(os.path.dirname(path), link)))
    else:
        shutil.copy2(path, target)

def libraries(binary):
    """The shared libraries a binary loads, the dynamic loader included."""
    out = subprocess.run(["ldd", binary], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    for line in out.splitlines():
        words = line.split()
        for word in words:
            if word.startswith("/"):
                yield word

shared = {python}
wanted = set(open(listing).read().split())
# Never loaded on a UTF-8 host, but needed where the locale falls back.
wanted.update(os.path.join(stdlib, "encodings", m + ".py") for m in ("ascii", "latin_1", "utf_8"))
for path in sorted(wanted):
    path = os.path.realpath(path)
    if not path.startswith(stdlib + os.sep):
        continue  # the plugin's own files
    if path.endswith(".py"):
        target = rootfs + path + "c"  # bytecode beside the source's place, no source
        os.makedirs(os.path.dirname(target), exist_ok=True)
        py_compile.compile(path, cfile=target, dfile=path, doraise=True)
    else:
        place(path)
        shared.add(path)
# Python finds its prefix by os.py(c) and lib-dynload (Modules/getpath).
os.makedirs(rootfs + dynload, exist_ok=True)
for binary in sorted(shared):
    place(binary)
    for library in libraries(binary):
        place(library)
for name in ("python3",):
    link = rootfs + "/usr/bin/" + name
    if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.basename(python), link) if os.path.dirname(python) == "/usr/bin" \
            else os.symlink(python, link)
EOF
    "$HOST_PYTHON" -m compileall -q "$ROOTFS/plugin" >/dev/null
fi

"$HOST_PYTHON" "$MODULE" plugin-config --python "$PLUGIN_PYTHON" "${DRIVER_IN_PLUGIN[@]}" \
    "${DRIVER_OPTS[@]}" "${CONFIG_ARGS[@]}" >"$OUT/config.json"
echo "build.sh: $OUT/config.json and $OUT/rootfs ($(du -sh --apparent-size "$ROOTFS" | cut -f1)B); then:" >&2
echo "  docker plugin create NAME $OUT && docker plugin enable NAME" >&2
