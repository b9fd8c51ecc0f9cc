# graphcred image: multi-stage, slim Python base, non-root, read-only-root-filesystem friendly.
# Pin the base by digest in your own builds (docker buildx imagetools inspect python:3.11.13-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The test bed (a local control plane and token issuer) is for tests, not for clusters.
RUN rm -rf operator/graphcred/testbed
RUN pip install --no-cache-dir --prefix=/install /src

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /install /usr/local
# No build tools here: only the installed packages. A fixed uid so runAsNonRoot can be verified.
RUN groupadd --system --gid 65532 graphcred \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin graphcred
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["graphcred"]
CMD ["run"]
