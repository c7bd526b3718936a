#!/usr/bin/env bash
# Provides the python3.12 Lambda base image that `sam local invoke --invoke-image` runs functions in.
#
#   local/sam/build-lambda-image.sh      last line on stdout: the image to pass to --invoke-image
#                                        exit 3: no Docker engine, or the stand-in cannot be built here
#
# 1. The official image (public.ecr.aws/lambda/python:3.12) is used when it is already on this engine.
#    It is pulled only when BACKDROP_LAMBDA_IMAGE_PULL=1 (a machine that may reach that registry):
#    nothing here contacts a registry on its own.
# 2. Otherwise a stand-in is built from what this machine can reach, and tagged
#    $BACKDROP_LAMBDA_IMAGE (default backdrop/lambda-python:3.12-local):
#      - a minimal Debian root file system of this machine's own release (debootstrap --variant=minbase
#        from the apt mirror this machine is configured with), because the interpreter below was
#        built against this release's shared libraries;
#      - this machine's self-contained python3.12 prefix (pyenv's, found as the Makefile finds it, or
#        $PY312) copied to /var/lang, /var/lang/lib in ld.so.conf;
#      - PyPI's awslambdaric (the runtime interface client) and the boto3 that layers/core pins, in
#        /var/runtime like the runtime's own SDK;
#      - /var/runtime/bootstrap and /lambda-entrypoint.sh doing what the official image's do. The
#        runtime interface emulator is not included: SAM CLI adds its bundled one itself.
#    The build is skipped when an image with the same inputs hash (label) already exists.
# How the stand-in differs from the official image: local/sam/README.md.
set -euo pipefail

readonly UNAVAILABLE=3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
readonly HERE ROOT
readonly OFFICIAL_IMAGE=public.ecr.aws/lambda/python:3.12
readonly IMAGE=${BACKDROP_LAMBDA_IMAGE:-backdrop/lambda-python:3.12-local}
readonly PULL=${BACKDROP_LAMBDA_IMAGE_PULL:-0}
readonly PULL_TIMEOUT=${BACKDROP_LAMBDA_IMAGE_PULL_TIMEOUT_SECONDS:-120}
readonly STEP_TIMEOUT=${BACKDROP_LAMBDA_IMAGE_STEP_TIMEOUT_SECONDS:-600}
readonly CACHE_DIR=${BACKDROP_DEBOOTSTRAP_CACHE:-/var/cache/backdrop-debootstrap}
readonly LOCK_FILE=${BACKDROP_LAMBDA_IMAGE_LOCK:-/tmp/backdrop-lambda-image.lock}
readonly LABEL=org.backdrop.lambda-image
# Pinned so that the inputs hash names exactly what goes into the image.
readonly RIC_VERSION=4.2.2
readonly PIP_VERSION=25.3
# Shared libraries python3.12's extension modules link against (most are in minbase already).
readonly PACKAGES=libssl3,libffi8,libsqlite3-0,libexpat1,libbz2-1.0,liblzma5,zlib1g,libncursesw6,libreadline8,libuuid1,libnsl2,libcrypt1,ca-certificates

log() { echo "lambda-image: [${SECONDS}s] $*" >&2; }
unavailable() {
    echo "lambda-image: UNAVAILABLE: $*" >&2
    exit "$UNAVAILABLE"
}
die() {
    echo "lambda-image: ERROR: $*" >&2
    exit 1
}

find_python() {
    # Same search as the Makefile: python3.12 on PATH (pyenv's shim resolves to the real one), else
    # pyenv's own versions directory.
    local candidate
    if [[ -n ${PY312:-} ]]; then
        echo "$PY312"
        return
    fi
    if candidate=$(python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null) && [[ -n $candidate ]]; then
        echo "$candidate"
        return
    fi
    for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        [[ -x $candidate ]] && { echo "$candidate"; return; }
    done
    return 1
}

apt_mirror() {
    # The Debian mirror this machine's apt uses for $1 (deb822 .sources first, then one-line lists).
    local suite=$1 files=() uri=""
    shopt -s nullglob
    files=(/etc/apt/sources.list.d/*.sources)
    if ((${#files[@]})); then
        uri=$(awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
            { types = ""; uris = ""; suites = ""
              for (i = 1; i <= NF; i++) {
                if ($i ~ /^Types:/) types = $i; if ($i ~ /^URIs:/) uris = $i; if ($i ~ /^Suites:/) suites = $i }
              if (types ~ /[ \t]deb([ \t]|$)/ && (suites " ") ~ ("[ \t]" s " ")) {
                sub(/^URIs:[ \t]*/, "", uris); split(uris, a, /[ \t]+/); print a[1]; exit } }' "${files[@]}")
    fi
    if [[ -z $uri ]]; then
        files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
        uri=$(awk -v s="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == s) { print $i; exit } }' "${files[@]}" 2>/dev/null || true)
    fi
    shopt -u nullglob
    echo "$uri"
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout "$STEP_TIMEOUT" apt-get install -y --no-install-recommends "$@" >&2; then
        log "apt-get install $* failed; refreshing the package lists once"
        timeout "$STEP_TIMEOUT" apt-get update >&2 || return 1
        timeout "$STEP_TIMEOUT" apt-get install -y --no-install-recommends "$@" >&2 || return 1
    fi
}

# Every docker call is bounded: a wedged engine must fail the build, not hang it.
dk() { timeout 60 docker "$@"; }
image_label() { dk image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------- engine
"$HERE/docker-engine.sh" || exit $?

if dk image inspect "$OFFICIAL_IMAGE" >/dev/null 2>&1; then
    log "using the official image $OFFICIAL_IMAGE (present on this engine)"
    echo "$OFFICIAL_IMAGE"
    exit 0
fi
if [[ $PULL == 1 ]]; then
    log "pulling $OFFICIAL_IMAGE (at most ${PULL_TIMEOUT}s)"
    if timeout "$PULL_TIMEOUT" docker pull --quiet "$OFFICIAL_IMAGE" >&2; then
        log "using the official image $OFFICIAL_IMAGE (pulled)"
        echo "$OFFICIAL_IMAGE"
        exit 0
    fi
    log "could not pull $OFFICIAL_IMAGE; falling back to the stand-in"
else
    log "$OFFICIAL_IMAGE is not on this engine and pulling is off (BACKDROP_LAMBDA_IMAGE_PULL=1 allows it); using the stand-in"
fi

# ---------------------------------------------------------------------------------------------- inputs
PY=$(find_python) || unavailable "no python3.12 found (PATH, ~/.pyenv/versions/3.12*); set PY312=/path/to/python3.12"
PREFIX=$("$PY" -c 'import sys; print(sys.base_prefix)')
PYVERSION=$("$PY" -c 'import sys; print(sys.version.split()[0])')
[[ $PYVERSION == 3.12.* ]] || unavailable "$PY is Python $PYVERSION, not 3.12"
# Only a self-contained prefix (pyenv's, or one built with --prefix) can be copied whole; a system
# prefix such as /usr holds the whole distribution.
if [[ $PREFIX == /usr || $PREFIX == /usr/local || ! -f $PREFIX/lib/libpython3.12.so.1.0 ]]; then
    unavailable "$PY ($PREFIX) is not a self-contained shared-library build of Python; set PY312 to one (e.g. pyenv's)"
fi
BOTO3_VERSION=$(sed -n 's/^boto3==\([0-9][0-9.]*\).*/\1/p' "$ROOT/layers/core/requirements.txt" | head -n 1)
[[ -n $BOTO3_VERSION ]] || die "layers/core/requirements.txt pins no boto3==VERSION"
# shellcheck source=/dev/null
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $SUITE ]] || unavailable "cannot tell this machine's Debian release (/etc/os-release has no VERSION_CODENAME)"
ARCH=$(uname -m)

INPUTS=$(
    printf 'script %s\n' "$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
    printf 'python %s %s\n' "$PYVERSION" "$PREFIX"
    sha256sum "$PREFIX/bin/python3.12" "$PREFIX/lib/libpython3.12.so.1.0" | cut -d' ' -f1
    printf 'awslambdaric %s\npip %s\nboto3 %s\n' "$RIC_VERSION" "$PIP_VERSION" "$BOTO3_VERSION"
    printf 'debian %s %s %s\n' "$SUITE" "$(cat /etc/debian_version 2>/dev/null || true)" "$ARCH"
)
HASH=$(sha256sum <<<"$INPUTS" | cut -c1-32)

# Builds of the same image are serialised (two test runs at once); the second then finds it built.
exec 9>"$LOCK_FILE"
flock -w "$STEP_TIMEOUT" 9 || die "another build holds $LOCK_FILE for more than ${STEP_TIMEOUT}s"

if [[ $(image_label "$IMAGE" "$LABEL.inputs") == "$HASH" ]]; then
    log "stand-in $IMAGE is up to date (inputs $HASH)"
    echo "$IMAGE"
    exit 0
fi

# ---------------------------------------------------------------------------------------------- build
[[ $(id -u) -eq 0 ]] || unavailable "building the stand-in needs root (debootstrap, chroot); build it once as root or provide $OFFICIAL_IMAGE"
if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || unavailable "debootstrap is missing and there is no apt-get to install it"
    log "installing debootstrap"
    apt_install debootstrap || unavailable "apt-get install debootstrap failed"
fi
MIRROR=$(apt_mirror "$SUITE")

started=$SECONDS
WORK=$(mktemp -d /var/tmp/backdrop-lambda-image.XXXXXX)
ROOTFS=$WORK/rootfs
cleanup() {
    # debootstrap mounts /proc and /sys inside the tree; never delete through a mount.
    if command -v findmnt >/dev/null 2>&1; then
        { findmnt -R -n -l -o TARGET "$ROOTFS" 2>/dev/null || true; } | sort -r | while read -r target; do
            [[ $target == "$ROOTFS" ]] || umount -l "$target" 2>/dev/null || true
        done
    fi
    rm -rf --one-file-system "$WORK" || true
}
trap cleanup EXIT

log "building the stand-in $IMAGE: Debian $SUITE minbase + Python $PYVERSION ($PREFIX) + awslambdaric $RIC_VERSION + boto3 $BOTO3_VERSION"
mkdir -p "$CACHE_DIR"
log "debootstrap $SUITE from ${MIRROR:-the default mirror of debootstrap}"
# shellcheck disable=SC2086 # MIRROR is one word or nothing
timeout "$STEP_TIMEOUT" debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE_DIR" \
    "$SUITE" "$ROOTFS" $MIRROR >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

log "copying Python $PYVERSION to /var/lang"
mkdir -p "$ROOTFS/var/lang"
# Left out: the test suite, IDLE/Tk (no display), the static library and build config (nothing is
# compiled in the image), the host's site-packages (only what is installed below belongs there).
tar -C "$PREFIX" -cf - \
    --exclude=./lib/python3.12/test --exclude=./lib/python3.12/idlelib --exclude=./lib/python3.12/tkinter \
    --exclude=./lib/python3.12/turtledemo --exclude='./lib/python3.12/lib-dynload/_tkinter*' \
    --exclude='./lib/python3.12/config-3.12-*' --exclude='./lib/python3.12/site-packages/*' \
    --exclude=./lib/python3.12/ensurepip --exclude=./share --exclude='./bin/idle*' --exclude='./bin/pip*' \
    --exclude='./bin/2to3*' --exclude='./bin/pydoc*' --exclude='*/__pycache__/*.opt-[12].pyc' . |
    tar -C "$ROOTFS/var/lang" -xf -
echo /var/lang/lib >"$ROOTFS/etc/ld.so.conf.d/00-var-lang.conf"
chroot "$ROOTFS" /sbin/ldconfig

log "installing pip $PIP_VERSION, awslambdaric $RIC_VERSION and boto3 $BOTO3_VERSION"
mkdir -p "$ROOTFS/tmp/wheels" "$ROOTFS/var/runtime" "$ROOTFS/var/task" "$ROOTFS/opt"
timeout "$STEP_TIMEOUT" "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --dest "$ROOTFS/tmp/wheels" "pip==$PIP_VERSION" "awslambdaric==$RIC_VERSION" "boto3==$BOTO3_VERSION" >&2 ||
    die "pip download failed"
in_root() {
    # A clean environment: nothing of this machine's pip or Python configuration leaks into the image.
    timeout "$STEP_TIMEOUT" chroot "$ROOTFS" /usr/bin/env -i PATH=/var/lang/bin:/usr/bin:/bin HOME=/root \
        LANG=C.UTF-8 "$@"
}
pip_wheel=$(cd "$ROOTFS/tmp/wheels" && ls pip-*.whl)
in_root /var/lang/bin/python3.12 "/tmp/wheels/$pip_wheel/pip" install --quiet --no-index \
    --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check --root-user-action=ignore "pip==$PIP_VERSION" >&2
in_root /var/lang/bin/python3.12 -m pip install --quiet --no-index --find-links /tmp/wheels --no-cache-dir \
    --disable-pip-version-check --root-user-action=ignore --target /var/runtime "awslambdaric==$RIC_VERSION" "boto3==$BOTO3_VERSION" >&2
rm -rf "$ROOTFS/tmp/wheels" "$ROOTFS/var/runtime/bin"
BOTOCORE_VERSION=$(in_root /var/lang/bin/python3.12 -c 'import sys; sys.path.insert(0, "/var/runtime"); import botocore; print(botocore.__version__)')

log "writing the bootstrap and entrypoint"
cat >"$ROOTFS/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
# Runtime bootstrap (what the official python3.12 image's does): name the runtime, then hand the
# function's handler to the runtime interface client.
export AWS_EXECUTION_ENV="${AWS_EXECUTION_ENV:-AWS_Lambda_python3.12}"
exec /var/lang/bin/python3.12 /var/runtime/bootstrap.py "$@"
EOF
cat >"$ROOTFS/var/runtime/bootstrap.py" <<'EOF'
"""Starts awslambdaric on the function's handler with Lambda's python3.12 module search order:
the function, the layers, the runtime (awslambdaric, boto3), then the standard library."""

import os
import sys


def main() -> None:
    handler = (
        (sys.argv[1] if len(sys.argv) > 1 else "")
        or os.environ.get("_HANDLER", "")
        or os.environ.get("AWS_LAMBDA_FUNCTION_HANDLER", "")
    )
    if not handler:
        sys.exit("bootstrap: no handler (argument, _HANDLER or AWS_LAMBDA_FUNCTION_HANDLER)")
    os.environ["_HANDLER"] = handler
    front = [
        os.environ.get("LAMBDA_TASK_ROOT", "/var/task"),
        "/opt/python/lib/python3.12/site-packages",
        "/opt/python",
        os.environ.get("LAMBDA_RUNTIME_DIR", "/var/runtime"),
    ]
    sys.path[:] = front + [p for p in sys.path if p not in front]

    from awslambdaric.__main__ import main as run

    run([sys.argv[0], handler])


if __name__ == "__main__":
    main()
EOF
cat >"$ROOTFS/lambda-entrypoint.sh" <<'EOF'
#!/bin/sh
# As in the official image: the handler is the only argument; outside Lambda the runtime interface
# emulator fronts the runtime. This image ships no emulator (SAM CLI adds its own at
# /var/rapid/aws-lambda-rie and makes it the entrypoint), so one found at either path is used.
if [ $# -ne 1 ]; then
    echo "entrypoint requires the handler name to be the first argument" >&2
    exit 142
fi
export _HANDLER="$1"
if [ -n "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /var/runtime/bootstrap
fi
for rie in /usr/local/bin/aws-lambda-rie /var/rapid/aws-lambda-rie; do
    if [ -x "$rie" ]; then
        exec "$rie" /var/runtime/bootstrap
    fi
done
echo "no runtime interface emulator in this image: use sam local, or mount one at /usr/local/bin/aws-lambda-rie" >&2
exit 142
EOF
chmod 0755 "$ROOTFS/var/runtime/bootstrap" "$ROOTFS/lambda-entrypoint.sh"

log "checking the interpreter inside the image"
missing=$(in_root /bin/sh -c 'ldd /var/lang/bin/python3.12 /var/lang/lib/python3.12/lib-dynload/*.so /var/runtime/*.so 2>&1 | grep "not found" || true')
[[ -z $missing ]] || die "shared libraries missing in the image: $missing"
in_root /var/lang/bin/python3.12 -c '
import sys
sys.path.insert(0, "/var/runtime")
import bz2, ctypes, decimal, hashlib, json, lzma, readline, sqlite3, ssl, uuid, zlib  # noqa: F401
import awslambdaric, boto3  # noqa: F401
assert sys.prefix == "/var/lang", sys.prefix
' || die "the interpreter in the image cannot import its standard modules"

log "trimming the root file system"
rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/man/* \
    "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* \
    "$ROOTFS"/var/cache/debconf/*-old
# Documentation goes; the copyright files stay with the packages they describe.
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete

log "importing the root file system as $IMAGE"
# One layer (docker import), with the official image's configuration.
tar --numeric-owner -C "$ROOTFS" -cf - . | timeout "$STEP_TIMEOUT" docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV TZ=:/etc/localtime' \
    --change 'ENV PATH=/var/lang/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib' \
    --change 'ENV LAMBDA_TASK_ROOT=/var/task' \
    --change 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    --change 'WORKDIR /var/task' \
    --change 'ENTRYPOINT ["/lambda-entrypoint.sh"]' \
    --change "LABEL $LABEL.inputs=$HASH" \
    --change "LABEL $LABEL.stand-in-for=$OFFICIAL_IMAGE" \
    --change "LABEL $LABEL.versions=\"debian-$SUITE python-$PYVERSION awslambdaric-$RIC_VERSION boto3-$BOTO3_VERSION botocore-$BOTOCORE_VERSION\"" \
    - "$IMAGE" >/dev/null || die "docker import failed"

# Superseded stand-ins and the images SAM CLI built on them (they inherit the label) are untagged
# now; remove those (children before parents, hence two passes) unless a container still uses them.
for _ in 1 2; do
    # shellcheck disable=SC2046 # one id per word
    dk image rm $(dk images -q --filter dangling=true --filter "label=$LABEL.inputs") >/dev/null 2>&1 || true
done
size=$(dk image inspect --format '{{ .Size }}' "$IMAGE")
log "built $IMAGE in $((SECONDS - started))s, $((size / 1000000)) MB (inputs $HASH)"
echo "$IMAGE"
