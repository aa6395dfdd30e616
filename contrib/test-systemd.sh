#!/usr/bin/env bash
# `make test-systemd`: contrib/titus.service and contrib/titus.socket under a real
# systemd, in a podman container whose PID 1 is Debian's systemd.
#
#  1-4. contrib/container-lib.sh: podman, the debootstrapped base image, the
#     wheelhouse, the titus image (the Dockerfile);
#  5. contrib/systemd/Containerfile on top: Debian's systemd, the two units
#     installed, units that could touch the host through a privileged container
#     masked;
#  6. podman run --systemd=always --privileged --network=none (a network namespace
#     of the container's own: titus listens on port 443 there, and nothing reaches
#     the host's network) with a titus.conf and certificate made here;
#  7. contrib/systemd_checks.py inside it: start (READY=1 by sd_notify), reload,
#     stop (drain), a crash (restart), socket activation.
#
# Prints PASS or FAIL last; exits nonzero on failure; leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=test-systemd
CONTAINER=titus-systemd-test-$$
# shellcheck source=contrib/container-lib.sh
. contrib/container-lib.sh
container_setup

# --- 5. systemd on top -------------------------------------------------------------
SYSTEMD_IMAGE=localhost/titus:systemd-test
say "podman build contrib/systemd/Containerfile -t $SYSTEMD_IMAGE"
t0=$SECONDS
context=$WORK/systemd-context
mkdir -p "$context"
cp contrib/systemd/Containerfile contrib/titus.service contrib/titus.socket "$context/"
if ! bounded 900 podman build -q --pull=never --network=host --build-arg "BASE=$IMAGE" \
        -t "$SYSTEMD_IMAGE" "$context" >"$WORK/build-systemd.log" 2>&1; then
    tail -30 "$WORK/build-systemd.log" >&2
    die "podman build of the systemd image failed"
fi
say "built in $((SECONDS - t0)) s"

# --- 6. run -----------------------------------------------------------------------
conf=$WORK/etc
mkdir -p "$conf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$conf/key.pem" -out "$conf/cert.pem" 2>/dev/null
chmod 600 "$conf/key.pem"
cat >"$conf/titus.conf" <<EOF
# Written by contrib/test-systemd.sh; the container has a network namespace of its own.
port 443
cert /etc/titus/cert.pem
key /etc/titus/key.pem
backend 127.0.0.1
backend-port 8080
min-spare-children 2
max-children 16
drain-timeout 20
EOF
say "podman run --systemd=always --privileged --network=none $SYSTEMD_IMAGE"
timeout 120 podman run -d --name "$CONTAINER" --systemd=always --privileged --network=none \
    --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
    -v "$conf:/etc/titus" "$SYSTEMD_IMAGE" \
    >/dev/null
deadline=$((SECONDS + 60))
until timeout 20 podman exec "$CONTAINER" systemctl is-system-running --wait >/dev/null 2>&1 \
        || [ "$(timeout 20 podman exec "$CONTAINER" systemctl is-system-running 2>/dev/null)" \
             = degraded ]; do
    [ $SECONDS -lt $deadline ] || die "systemd did not finish booting within 60 s"
    [ "$(timeout 20 podman inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] \
        || die "the container exited"
    sleep 1
done
say "systemd is up: $(timeout 20 podman exec "$CONTAINER" systemctl --version | head -1)"

# --- 7. the checks ------------------------------------------------------------------
if ! timeout 420 podman exec -i "$CONTAINER" python3 - <contrib/systemd_checks.py \
        | sed 's/^/  /'; then
    timeout 20 podman exec "$CONTAINER" systemctl --failed --no-pager 2>&1 | sed 's/^/    /' || true
    die "systemd checks failed"
fi

say "podman stop (SIGRTMIN+3: systemd shuts down, stopping titus)"
timeout 90 podman stop -t 60 "$CONTAINER" >/dev/null
