# graphcred image: multi-stage, slim Python base, non-root, read-only-root-filesystem friendly.
# The base by tag; releases build from it pinned by digest: .github/workflows/release.yaml reads this default,
# resolves it (docker buildx imagetools inspect IMAGE --format '{{ .Manifest.Digest }}') and passes
# --build-arg PYTHON_IMAGE=IMAGE@sha256:..., recorded in the org.opencontainers.image.base.* labels. Do the same in
# your own builds. Resolved at release time rather than written here, each release takes the newest rebuild of this
# tag (Debian and CPython security fixes) and still records exactly which one it used.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The locked dependencies first (a layer that changes only with the lock): every file checked against its hash,
# the same versions the tests ran (requirements/runtime.txt is constrained to requirements/dev.txt). pip itself
# from its pin first, then each lock with --no-deps: the lock is installed as written, nothing is resolved (as
# scripts/install-lock.sh does for make; tests/repo/test_locks.py proves each lock complete).
COPY requirements/pip.txt requirements/runtime.txt requirements/build.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/pip.txt
RUN pip install --no-cache-dir --require-hashes --no-deps --prefix=/install -r requirements/runtime.txt
# The build backend, locked too, into the build stage only; then graphcred itself, resolving nothing.
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --no-deps --no-build-isolation --prefix=/install /src

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
