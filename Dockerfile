# The dockerdns image: `docker build -t dockerdns .`, then
#   docker run -d --name dockerdns -v /var/run/docker.sock:/var/run/docker.sock dockerdns
#
# Build arguments (the defaults build from the public base and PyPI):
#   BASE         a Python 3 image with pip: python:3.11-slim, python:3.11-alpine,
#                or a local Debian (tests/image/offline.py makes one with mmdebstrap)
#   PIP_OPTIONS  extra options for pip, e.g. to build without a network from
#                wheels put in the build context's wheels/ directory:
#                --no-index --find-links=/src/wheels
#   VERSION      the version in the image's labels (a test keeps it equal to dockerdns.__version__)
#   SOURCE       the URL of the source repository, for the labels
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG PIP_OPTIONS=
ARG VERSION=0.1.0
ARG SOURCE=

LABEL org.opencontainers.image.title="dockerdns" \
      org.opencontainers.image.description="Service-discovery DNS server for Docker: every container by a stable name, always its current address" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"

# A virtual environment of its own: no clash with the base's Python packages,
# and no PEP 668 "externally managed" refusal on Debian's python3. It gets no
# pip of its own; the base's pip installs into it (--python, pip >= 22.3).
# .dockerignore keeps the copied source to what pip needs (a few hundred kB);
# pip's build files and caches go in the same RUN that makes them.
COPY . /src
RUN python3 -m venv --without-pip /opt/dockerdns \
    && python3 -m pip --python /opt/dockerdns/bin/python install \
        --no-cache-dir --disable-pip-version-check ${PIP_OPTIONS} /src \
    && rm -rf /src

ENV PATH=/opt/dockerdns/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DOCKERDNS_LISTEN=0.0.0.0:53 \
    DOCKERDNS_HTTP_LISTEN=0.0.0.0:5380

EXPOSE 53/udp 53/tcp 5380/tcp

# Healthy when dockerdns says so: its DNS sockets are bound and its table is in
# sync with Docker (GET /healthz answers 200; 503, or no answer, is unhealthy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5380/healthz', timeout=2)"]

ENTRYPOINT ["dockerdns"]
CMD ["serve"]
