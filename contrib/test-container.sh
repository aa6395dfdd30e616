#!/usr/bin/env bash
# `make test-container`: build the Dockerfile with podman (Debian's, standing in
# for a Docker engine) and prove, inside the running privileged container, that
# titus serves a TLS request from jailed workers.
#
#  1-4. contrib/container-lib.sh: podman, the debootstrapped base image, the
#     wheelhouse, podman build;
#  5. podman run --privileged --network=host with a titus.conf and certificate
#     made here; inside the container: titus --check, a TLS request through
#     titus to a backend (openssl s_client, certificate verified), then the
#     jailed processes: Seccomp 2, NoNewPrivs 1, no capabilities, PID 1 of their
#     own PID namespace, own user/net/mount namespaces, non-root uid; the
#     connection's JSON log record; a clean stop on SIGTERM.
#
# All podman state (images, containers, runroot, tmp) lives in one temporary
# directory that is unmounted and removed on exit, whatever happened.  Every
# wait is bounded.  Prints PASS or FAIL last; exits nonzero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=test-container
CONTAINER=titus-container-test-$$
# shellcheck source=contrib/container-lib.sh
. contrib/container-lib.sh
container_setup

# --- 5. run and check ------------------------------------------------------------
conf=$WORK/etc
mkdir -p "$conf" "$WORK/www"
read -r port bport < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$conf/key.pem" -out "$conf/cert.pem" 2>/dev/null
chmod 600 "$conf/key.pem"
cat >"$conf/titus.conf" <<EOF
# Written by contrib/test-container.sh
listen 127.0.0.1:$port
cert /etc/titus/cert.pem
key /etc/titus/key.pem
backend 127.0.0.1
backend-port $bport
min-spare-children 2
max-children 16
EOF
marker="titus in a container $$"
echo "$marker" >"$WORK/www/index.html"
RUN_OPTS=(--privileged --network=host --runtime runc
          --ulimit nofile=20000:20000 --ulimit nproc=32768:32768
          -v "$conf:/etc/titus:ro" -v "$WORK/www:/srv/www:ro")

say "titus --check in the image"
timeout 120 podman run --rm "${RUN_OPTS[@]}" "$IMAGE" titus --check --config /etc/titus/titus.conf \
    || die "titus --check failed in the container"

say "podman run --privileged --network=host $IMAGE (titus on 127.0.0.1:$port)"
timeout 120 podman run -d --name "$CONTAINER" "${RUN_OPTS[@]}" "$IMAGE" >/dev/null
timeout 30 podman exec -d "$CONTAINER" \
    python3 -m http.server "$bport" --bind 127.0.0.1 --directory /srv/www >/dev/null

say "a TLS request inside the container: openssl s_client -> titus -> backend"
reply=""
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
    [ "$(timeout 20 podman inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" = true ] \
        || die "titus exited in the container"
    reply=$(timeout 10 podman exec "$CONTAINER" sh -c \
        "printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' | openssl s_client -quiet \
         -connect 127.0.0.1:$port -servername localhost -CAfile /etc/titus/cert.pem \
         -verify_hostname localhost -verify_return_error 2>/dev/null" 2>/dev/null || true)
    grep -qF "$marker" <<<"$reply" && break
    sleep 1
done
grep -qF "$marker" <<<"$reply" || die "no reply through titus within 60 s"
say "  got the backend's page through titus: $(head -1 <<<"$reply" | tr -d '\r')"

say "jails inside the container"
if ! timeout 60 podman exec -i "$CONTAINER" python3 - <contrib/container_jails.py \
        | sed 's/^/  /'; then
    die "jail checks failed"
fi

say "the connection's log record"
record=""
deadline=$((SECONDS + 10))
while [ $SECONDS -lt $deadline ]; do
    record=$(timeout 20 podman logs "$CONTAINER" 2>&1 | grep '"event": "connection"' | head -1 || true)
    [ -n "$record" ] && break
    sleep 0.5
done
grep -q '"outcome": "ok"' <<<"$record" || die "no 'connection' record with outcome ok: ${record:-none}"
say "  $(cut -c1-200 <<<"$record")"

say "podman stop (SIGTERM to titus, PID 1)"
timeout 60 podman stop -t 20 "$CONTAINER" >/dev/null
code=$(timeout 20 podman inspect -f '{{.State.ExitCode}}' "$CONTAINER")
[ "$code" = 0 ] || die "titus exited with $code on SIGTERM"
