# Shared by contrib/test-container.sh and contrib/test-systemd.sh (sourced, not run):
#
#  1. podman, runc, debootstrap from apt if missing (runc: crun refuses this
#     host's hybrid cgroup layout);
#  2. the base image: a minimal bookworm debootstrapped from the mirror apt uses
#     here, imported under the exact name the Dockerfile's FROM resolves to
#     (cached as build/container/*.tar.gz);
#  3. the wheelhouse (contrib/wheelhouse.sh, cached in build/wheelhouse);
#  4. podman build --pull=never --network=host of the Dockerfile as $IMAGE.
#
# All podman state (images, containers, runroot, tmp) lives in one temporary
# directory that is unmounted and removed on exit, whatever happened, and
# anything of the run still on the host then (mounts, processes, runc state,
# network interfaces, podman's host paths) fails it.  Every wait is bounded.
# The sourcing script sets NAME (for messages) and CONTAINER (the container it
# runs, removed on exit), then calls container_setup.
CACHE=build/container
IMAGE=localhost/titus:container-test
START=$SECONDS
WORK=""

CHILD=""

say() { echo "${NAME:-test-container}: $*"; }
die() { say "$*" >&2; exit 1; }
# bounded SECONDS CMD...: CMD (no stdin) with a time limit, run so that an INT or TERM to this
# script interrupts it at once (bash runs traps during `wait`, not during a
# foreground command); cleanup stops it.
bounded() {
    local rc=0
    timeout "$1" "${@:2}" </dev/null &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return $rc
}
stop_child() {  # TERM (timeout passes it on), then KILL after 30 s
    [ -n "$CHILD" ] || return 0
    kill -TERM "$CHILD" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
}

# --- cleanup: runs on every exit -------------------------------------------
# Host paths podman (4.3) writes to whatever its configuration says (runc's state
# dir, containers/image's blob-info cache, CNI state): any that did not exist
# before this run is removed after it.
HOST_PATHS="/var/lib/containers /run/runc /run/containers /run/libpod /var/lib/cni"
host_before=""
for p in $HOST_PATHS; do [ -e "$p" ] || host_before="$host_before $p"; done
links_before=$(ip -o link | awk -F': ' '{print $2}' | sort)

unmount_under() {  # lazily unmount every mount below $1, deepest first
    local m
    { findmnt -rn -o TARGET | grep -F "$1/" || true; } | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}
leaks() {  # anything of this run still on the host: one line each
    local p
    findmnt -rn -o TARGET | grep -F "$WORK" | sed 's/^/mount: /' || true
    pgrep -af -- "$CONTAINER|$WORK" | grep -v "^$$ " | sed 's/^/process: /' || true
    for p in $host_before; do [ ! -e "$p" ] || echo "path: $p"; done
    grep -lsF "\"$WORK/" /run/runc/*/state.json | sed 's/^/runc state: /'
    comm -13 <(echo "$links_before") <(ip -o link | awk -F': ' '{print $2}' | sort) \
        | sed 's/^/network interface: /'
}
exec 3>&1 4>&2  # the script's own stdout/stderr, for cleanup
cleanup() {
    local rc=$? p left
    trap - EXIT INT TERM
    exec 1>&3 2>&4  # a trap may run inside a redirected command (build.log)
    set +e  # clean up as much as possible, whatever fails
    stop_child
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ -f "$WORK/containers.conf" ]; then
            if [ $rc -ne 0 ] && timeout 20 podman container exists "$CONTAINER" 2>/dev/null; then
                say "container log (last 30 lines):"
                timeout 20 podman logs "$CONTAINER" 2>&1 | tail -30 | sed 's/^/    /' || true
            fi
            timeout 60 podman rm -f -t 5 "$CONTAINER" >/dev/null 2>&1 || true
            timeout 60 podman rmi -a -f >/dev/null 2>&1 || true
        fi
        # runc state of build containers that an interrupted `podman build` left.
        for p in /run/runc/*/state.json; do
            grep -qF "\"$WORK/" "$p" 2>/dev/null \
                && timeout 30 runc delete --force "$(basename "$(dirname "$p")")" >/dev/null 2>&1
        done
        unmount_under "$WORK"
        rm -rf "$WORK"
        for p in $host_before; do
            case $p in
                /run/runc) rmdir "$p" 2>/dev/null || true ;;  # only if no container is left
                *) rm -rf "$p" ;;
            esac
        done
        left=$(leaks)
        if [ -n "$left" ]; then
            say "left on the host:"
            while read -r p; do echo "    $p"; done <<<"$left"
            [ $rc -ne 0 ] || rc=1
        fi
    fi
    if [ $rc -eq 0 ]; then
        say "PASS ($((SECONDS - START)) s)"
    else
        say "FAIL ($((SECONDS - START)) s)"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

container_setup() {  # steps 1-4 (the body is not indented: it has here-documents)
[ "$(id -u)" = 0 ] || die "needs root (podman, debootstrap, privileged containers)"

# --- 1. tools ------------------------------------------------------------------
missing=""
for p in podman runc debootstrap openssl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    bounded 600 apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive bounded 900 apt-get install -y -qq --no-install-recommends \
        $missing >/dev/null
fi
say "$(podman --version), runc $(runc --version | awk 'NR==1{print $3}')"

WORK=$(mktemp -d /var/tmp/titus-container.XXXXXX)
mkdir -p "$WORK/tmp" "$CACHE"
# podman's whole state in $WORK: storage, runroot, libpod tmp, volumes, events, networks.
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
# Host networking by default too: no podman call here may make a CNI bridge,
# iptables rules or turn on ip_forward on this host.
cat >"$WORK/containers.conf" <<EOF
[containers]
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
runtime = "runc"
tmp_dir = "$WORK/libpod"
volume_path = "$WORK/volumes"
[network]
network_config_dir = "$WORK/networks"
EOF
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf CONTAINERS_CONF=$WORK/containers.conf
export TMPDIR=$WORK/tmp

# --- 2. base image ---------------------------------------------------------------
from=$(awk 'toupper($1)=="FROM"{print $2; exit}' Dockerfile)
case "$from" in
    debian:bookworm*) base=docker.io/library/$from ;;
    *) die "Dockerfile FROM $from: expected debian:bookworm-*" ;;
esac
# The Debian mirror apt uses on this machine (deb822 or one-line sources).
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | awk '/^URIs:/{print $2}' | grep -v security | head -1 || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2}' /etc/apt/sources.list 2>/dev/null \
                             | grep -v security | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
tarball=$CACHE/bookworm-minbase.tar.gz
if [ ! -s "$tarball" ]; then
    say "debootstrap --variant=minbase bookworm from $mirror (once; cached in $tarball)"
    rootfs=$WORK/rootfs
    if ! bounded 900 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" \
            >"$WORK/debootstrap.log" 2>&1; then
        tail -20 "$WORK/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    # As Debian's official image: apt sources incl. security, no caches, and no
    # host identity (the runtime provides hostname and resolv.conf).
    rm -f "$rootfs/etc/apt/sources.list" "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${mirror%/}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian*}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    unmount_under "$rootfs"
    bounded 600 tar -C "$rootfs" --numeric-owner -czf "$tarball.new" .
    mv "$tarball.new" "$tarball"
    rm -rf "$rootfs"
    say "base image ready after $((SECONDS - START)) s"
fi
say "podman import $tarball as $base"
bounded 300 podman import -q "$tarball" "$base" >/dev/null

# --- 3. wheelhouse ---------------------------------------------------------------
bounded 900 bash contrib/wheelhouse.sh

# --- 4. build --------------------------------------------------------------------
say "podman build --pull=never --network=host -t $IMAGE ."
t0=$SECONDS
if ! bounded 1200 podman build -q --pull=never --network=host -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log" >&2
    die "podman build failed"
fi
say "built in $((SECONDS - t0)) s"
}
