# syntax=docker/dockerfile:1
#
# The emulators' image: the EWS emulator and OAuth 2.0 token server of ews-listener-emulators,
# for the demo in compose.yaml. Nothing of the listener is in it, and nothing of it is in the
# listener's image (deploy/docker/Dockerfile): the emulators are test and demo infrastructure,
# a distribution of their own (emulators/, issue 12).
#
#   docker build -f deploy/docker/emulators.Dockerfile -t ews-listener-emulators .   (repo root)
#   docker run --read-only --tmpfs /tmp -v emulators:/var/lib/ews-listener-emulators \
#       ews-listener-emulators --seed demo --feed 1
#
# The servers listen on 127.0.0.1 only (their certificate is issued for it): another container
# reaches them by sharing this one's network namespace, as the listener does in compose.yaml.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# ---- builder: the emulators' wheel, installed with its dependencies into a venv ---------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY emulators ./emulators

RUN python -m pip wheel --no-deps --wheel-dir /dist ./emulators
RUN python -m venv /opt/ews-listener-emulators \
    && /opt/ews-listener-emulators/bin/python -m pip install --compile \
       /dist/ews_listener_emulators-*.whl \
    && /opt/ews-listener-emulators/bin/python -m pip check

# ---- final: the venv on a clean slim image, non-root, read-only root filesystem -----------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="ews-listener-emulators" \
      org.opencontainers.image.description="EWS SOAP emulator and OAuth 2.0 token server on loopback, for ews-listener's demo and tests" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 emulators \
    && useradd --system --uid 10001 --gid emulators --no-create-home \
       --home-dir /var/lib/ews-listener-emulators --shell /usr/sbin/nologin emulators \
    && install -d -o emulators -g emulators -m 0700 /var/lib/ews-listener-emulators

COPY --from=builder /opt/ews-listener-emulators /opt/ews-listener-emulators

ENV PATH=/opt/ews-listener-emulators/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /var/lib/ews-listener-emulators
# ca.pem, listener.toml and emulator.json: what a client needs, written at start.
VOLUME ["/var/lib/ews-listener-emulators"]

STOPSIGNAL SIGTERM
# The command line of `ews-listener emulator`; `--help` lists it.
ENTRYPOINT ["ews-listener-emulators"]
CMD ["--seed", "demo", "--state-dir", "/var/lib/ews-listener-emulators"]
