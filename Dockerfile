# authz-server: the Envoy ext_authz gRPC service, as a small non-root image.
#
#   docker build -t authz-server .
#   docker run --rm -p 9001:9001 -v "$PWD/keys:/keys:ro" authz-server
#
# Keys are never part of the image: mount a directory laid out as /keys/<project>/<kid>.pem.
# Every `serve` option also comes from its AUTHZ_* variable (docker run -e AUTHZ_LEEWAY=5 ...).

# One base for both stages: the venv's interpreter is a symlink into the base's Python.
# A private registry's copy: `docker build --build-arg PYTHON_IMAGE=registry.example/python:3.12-slim-trixie .`
# (any Debian-based Python 3.11+ with venv and pip). No `# syntax=` line on purpose: the
# built-in frontend is enough, and BuildKit would otherwise fetch a frontend image first,
# which fails on a network that reaches no image registry.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY authz_server ./authz_server
# A wheel of the project, then the wheel and its dependencies into a venv without pip.
# --only-binary: every dependency ships manylinux wheels, so no compiler is needed here either,
# and a missing wheel fails the build instead of quietly compiling from source.
RUN python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --only-binary=:all: /tmp/wheels/*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="authz-server" \
      org.opencontainers.image.description="Envoy ext_authz (gRPC, v3) service enforcing per-project RS256/ES256 JWTs" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid, so Kubernetes runAsUser/runAsNonRoot and file permissions can name it.
RUN groupadd --system --gid 10001 authz \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin authz
COPY --from=builder /opt/venv /opt/venv
# No /keys in the image on purpose: without a mounted keys directory the server exits 2
# instead of starting with no keys (which would leave every project open).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTHZ_KEYS_DIR=/keys \
    AUTHZ_LISTEN=0.0.0.0:9001
USER 10001:10001
EXPOSE 9001
# grpc.health.v1 on the service's own port: SERVING once keys are loaded and the server is up.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["authz-server", "health", "--address", "127.0.0.1:9001"]
ENTRYPOINT ["authz-server"]
# Settings come from the AUTHZ_* variables above, so `-e AUTHZ_KEYS_DIR=...` works too;
# flags given after the image name (`serve --leeway 5`) win over them.
CMD ["serve"]
