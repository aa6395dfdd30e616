# titus in a container.  titus builds a jail (user, PID, network, mount, IPC,
# UTS namespaces, uid maps, an empty root, seccomp) for every connection, which a
# default container forbids, so it runs privileged:
#     docker run --privileged -v /etc/titus:/etc/titus:ro -p 443:443 titus
# The supervisor is PID 1 here: it reaps its jails and drains on SIGTERM.
#
# Build on a Debian 12 host (see README.md, "Running in a container"):
#     contrib/wheelhouse.sh && docker build -t titus .
# Python packages come only from build/wheelhouse (the pins of requirements.lock,
# made on the host), so the build never reaches PyPI; apt fetches the few Debian
# packages below.  `make test-container` builds and checks this image with podman.
FROM debian:bookworm-slim AS build

# The C extensions (the jail executor) are compiled here, with the flags of setup.py;
# the image itself gets no compiler.
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
        libssl-dev libcap2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY build/wheelhouse/ /tmp/wheels/
COPY pyproject.toml setup.py README.md /tmp/src/
COPY bin/ /tmp/src/bin/
COPY sandbox/ /tmp/src/sandbox/
COPY titus/ /tmp/src/titus/
RUN python3 -m venv /opt/titus \
 && /opt/titus/bin/pip install -q --no-cache-dir --disable-pip-version-check \
        --no-index --find-links /tmp/wheels /tmp/src

FROM debian:bookworm-slim

# Debian's python3 (3.11): its _ssl links the system's shared OpenSSL 3, which
# titus's remote keys hook through ctypes (PyPI builds of Python may not).
# libseccomp2: pyseccomp; libcap2: python-prctl; openssl: for operators' keys.
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libseccomp2 libcap2 openssl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/titus/ /opt/titus/
RUN /opt/titus/bin/python -c 'import prctl, pyseccomp, sandbox._jail, titus.cli, titus.supervisor'
# The jail profiles: sandbox looks in /etc/sandbox/policies (mount your own over it).
COPY policies/ /etc/sandbox/policies/

ENV PATH=/opt/titus/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /etc/titus
EXPOSE 443
CMD ["titus", "--config", "/etc/titus/titus.conf", "--log-format", "json"]
