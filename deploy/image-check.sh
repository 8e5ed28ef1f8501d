#!/usr/bin/env bash
# Proves deploy/Dockerfile builds, without a container daemon (CI has none):
#   1. reads the repository's .dockerignore and the build stage's COPY lines, and copies
#      exactly the files they select into a temporary folder laid out like the build
#      stage's filesystem (WORKDIR /src);
#   2. runs the build stage's RUN command there unchanged (`cargo build --profile image
#      --locked ...` and the `install` to /out, mapped into the temporary folder). The
#      target/ cache mount becomes a link to a persistent folder under $IMAGE_CHECK_DIR
#      (default target/image-check, git-ignored; the assembled context is there too):
#      a cold build is a full optimised build (about 5 minutes on 2 idle cores), later
#      runs rebuild only what changed;
#   3. checks the result the way the runtime stage uses it: the binary is stripped and
#      reports Cargo.toml's version; the OCI labels, a numeric non-root USER and the
#      license label are there; ENTRYPOINT + CMD with the image's ENV start a server, and
#      the HEALTHCHECK command exits 0 against it and 1 once it has stopped.
# What it cannot prove: the base images themselves (the rust:*-bookworm toolchain and the
# distroless runtime are not pulled); the binary is built with this machine's toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v readelf >/dev/null 2>&1 || { echo "deploy/image-check.sh: readelf (binutils) is needed" >&2; exit 1; }
exec python3 deploy/image_check.py "$@"
