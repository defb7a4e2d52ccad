#!/usr/bin/env bash
# Make a managed (v2) Docker volume plugin: OUTDIR/config.json and OUTDIR/rootfs/
# for `docker plugin create NAME OUTDIR`.
#
#   examples/managed/build.sh OUTDIR [--driver FILE.py:ATTR] [--image IMAGE]
#       [--python PATH] [--binary PROGRAM]... [--file PATH]...
#       [--check-opt KEY=VALUE]... [plugin-config options...]
#
# The rootfs holds docker_volume_plugin.py (and the --driver file) in /plugin.
# Its Python comes from
#   - this host (the default, no network): the interpreter, the shared
#     libraries it links, and only the standard-library modules the plugin
#     imported when this script ran it and `check`ed it, as bytecode; or
#   - --image IMAGE, any image with Python in it (python:3-alpine, your
#     distribution's), exported with `docker create` + `docker export`.
# --binary PROGRAM (a name on PATH, or a path) copies a program the driver
# runs, with the shared libraries it links, to the same path; --file PATH
# copies any other file it reads. Without --image the rootfs also gets an
# /etc/passwd, /etc/group and /etc/nsswitch.conf of root alone.
# Without --image the plugin is first run here, with its own --driver-opt
# and `check` driving every call, in a mount namespace of this script's own
# with a tmpfs on the propagated mount: what it makes and mounts there is
# gone when the script ends. --check-opt KEY=VALUE is an option of check's
# scratch volumes (such as sshcmd=... for a driver that needs one).
# Other options (--driver-opt, --capability, --mount, --device,
# --host-network, --log-level, --description, --name, --propagated-mount)
# go to `plugin-config`.
# Run it as root: `docker plugin create` keeps the files' owners, and the
# plugin refuses a root file system that another user could change.
set -euo pipefail

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "build.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
[ "$(id -u)" = 0 ] || die "run it as root: docker plugin create keeps the files' owners"
# Every mount from here on (the tmpfs, what the driver mounts while it is
# checked) stays in a mount namespace of this script's own.
if [ -z "${_DVP_BUILD_NAMESPACE:-}" ]; then
    _DVP_BUILD_NAMESPACE=1 exec unshare --mount --propagation private -- bash "$0" "$@"
fi
OUT=$1
shift
DRIVER= IMAGE= PLUGIN_PYTHON= CONFIG_ARGS=() DRIVER_OPTS=() PROGRAMS=() FILES=()
CHECK_OPTS=() MOUNT=/mnt/volumes
while [ $# -gt 0 ]; do
    case "$1" in
        --driver) DRIVER=${2:?--driver needs FILE.py:ATTR}; shift 2 ;;
        --image) IMAGE=${2:?--image needs an image}; shift 2 ;;
        --python) PLUGIN_PYTHON=${2:?--python needs a path}; shift 2 ;;
        --driver-opt) DRIVER_OPTS+=("$1" "${2:?--driver-opt needs KEY=VALUE}"); shift 2 ;;
        --binary)
            found=$(command -v "${2:?--binary needs a program}") && [ -f "$found" ] ||
                die "--binary $2: no such program"
            PROGRAMS+=("$found"); shift 2 ;;
        --file)
            case "${2:?--file needs a path}" in /*) ;; *) die "--file $2: expected an absolute path" ;; esac
            [ -f "$2" ] || die "--file $2: no such file"
            FILES+=("$2"); shift 2 ;;
        --check-opt) CHECK_OPTS+=(-o "${2:?--check-opt needs KEY=VALUE}"); shift 2 ;;
        --propagated-mount)
            MOUNT=${2:?--propagated-mount needs a path}; CONFIG_ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) usage ;;
        *) CONFIG_ARGS+=("$1"); shift ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
MODULE=${DVP_MODULE:-$HERE/../../docker_volume_plugin.py}
HOST_PYTHON=${DVP_BUILD_PYTHON:-/usr/bin/python3}
[ -f "$MODULE" ] || die "no $MODULE"
ROOTFS=$OUT/rootfs
if [ -e "$ROOTFS" ] && [ -n "$(ls -A "$ROOTFS")" ]; then
    die "$ROOTFS is not empty"
fi
plugin_config() {
    "$HOST_PYTHON" "$MODULE" plugin-config --python "$1" \
        ${DRIVER:+--driver "/plugin/$(basename "${DRIVER%:*}"):${DRIVER##*:}"} \
        "${DRIVER_OPTS[@]}" "${CONFIG_ARGS[@]}"
}
plugin_config /usr/bin/python3 >/dev/null || exit 2  # its options checked before any work
mkdir -p "$ROOTFS/plugin"
cp "$MODULE" "$ROOTFS/plugin/docker_volume_plugin.py"
if [ -n "$DRIVER" ]; then
    file=${DRIVER%:*}
    [ -f "$file" ] && [ "$file" != "$DRIVER" ] || die "--driver $DRIVER: expected FILE.py:ATTR"
    cp "$file" "$ROOTFS/plugin/"
fi
# What Docker binds into the plugin needs somewhere to go: the socket
# directory (PROTOCOL.md 4.2) and the propagated mount.
mkdir -p "$ROOTFS/run/docker/plugins" "$ROOTFS$MOUNT" "$ROOTFS/tmp" \
         "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/etc"
chmod 1777 "$ROOTFS/tmp"
scratch=$(mktemp -d) server= cid= made=
cleanup() {
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    [ -z "$cid" ] || docker rm -f "$cid" >/dev/null 2>&1 || true
    [ -z "$made" ] || rmdir "$made" 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
: >"$scratch/modules"

if [ -n "$IMAGE" ]; then
    cid=$(docker create "$IMAGE" true)
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
    # The plugin as the config runs it: its options, its propagated mount
    # (a tmpfs of this namespace; the directory made here if it is missing,
    # and removed after), check driving every call; then the list of the
    # modules it imported.
    if [ ! -d "$MOUNT" ]; then
        mkdir "$MOUNT" || die "--propagated-mount $MOUNT: cannot make it on this host to try the plugin"
        made=$MOUNT
    fi
    mount -t tmpfs -o mode=0755 dvp-build "$MOUNT"
    cp "$ROOTFS/plugin/"*.py "$scratch/"
    if [ -n "$DRIVER" ]; then
        driver_here=(--driver "$scratch/$(basename "${DRIVER%:*}"):${DRIVER##*:}")
    else
        driver_here=(--root "$MOUNT" --run-dir "$MOUNT/.docker-volume-plugin-run")
    fi
    (cd "$scratch" && DVP_PROPAGATED_MOUNT=$MOUNT exec "$HOST_PYTHON" -c '
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
    if ! "$HOST_PYTHON" "$MODULE" check "${CHECK_OPTS[@]}" "unix://$scratch/build.sock" \
            >"$scratch/check"; then
        cat "$scratch/check" "$scratch/log" >&2
        die "the plugin did not pass check on this host"
    fi
    kill -TERM "$server"
    wait "$server" || die "the plugin did not stop cleanly: $(cat "$scratch/log")"
    server=
    umount "$MOUNT"
    # Root alone, for the programs that look a user up (ssh, for its ~/.ssh).
    echo "root:x:0:0:root:/root:/bin/sh" >"$ROOTFS/etc/passwd"
    echo "root:x:0:" >"$ROOTFS/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"
    mkdir -p -m 0700 "$ROOTFS/root"
fi
"$HOST_PYTHON" - "$ROOTFS" "$scratch/modules" "$PLUGIN_PYTHON" "${PROGRAMS[@]}" "${FILES[@]}" <<'EOF'
"""Copy this host's Python and the modules the plugin imported (if it
ran), and the programs and files asked for, each with what it links."""
import os, py_compile, shutil, subprocess, sys, sysconfig
rootfs, listing, python = sys.argv[1:4]
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
    """The shared libraries a binary loads, the dynamic loader included
    (none for a file that is not a dynamic executable)."""
    out = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         universal_newlines=True).stdout
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/"):
                yield word

copied = set(sys.argv[4:])
wanted = set(open(listing).read().split())
if wanted:  # the plugin ran on this host's Python
    copied.add(python)
    # Never loaded on a UTF-8 host, but needed where the locale falls back.
    wanted.update(os.path.join(stdlib, "encodings", m + ".py") for m in ("ascii", "latin_1", "utf_8"))
    # Python finds its prefix by os.py(c) and lib-dynload (Modules/getpath).
    os.makedirs(rootfs + dynload, exist_ok=True)
for path in sorted(wanted):
    path = os.path.realpath(path)
    if not path.startswith(stdlib + os.sep):
        continue  # the plugin's own files
    if path.endswith(".py"):
        target = rootfs + path + "c"  # bytecode beside the source's place, no source
        os.makedirs(os.path.dirname(target), exist_ok=True)
        py_compile.compile(path, cfile=target, dfile=path, doraise=True)
    else:
        copied.add(path)
for path in sorted(copied):
    place(path)
    for library in libraries(path):
        place(library)
link = rootfs + "/usr/bin/python3"
if wanted and not os.path.lexists(link):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.basename(python), link) if os.path.dirname(python) == "/usr/bin" \
        else os.symlink(python, link)
EOF
[ -n "$IMAGE" ] || "$HOST_PYTHON" -m compileall -q "$ROOTFS/plugin" >/dev/null

plugin_config "$PLUGIN_PYTHON" >"$OUT/config.json"
echo "build.sh: $OUT/config.json and $OUT/rootfs ($(du -sh --apparent-size "$ROOTFS" | cut -f1)B); then:" >&2
echo "  docker plugin create NAME $OUT && docker plugin enable NAME" >&2
