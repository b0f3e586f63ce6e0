#!/usr/bin/env bash
# Make the Python base image of docker/Dockerfile.cpu and Dockerfile.mlflow from a Debian mirror,
# for machines that reach no image registry (air-gapped, or only a private Debian/PyPI mirror).
#
#   docker/base-from-debian.sh [TAG] [MIRROR]
#   python docker/build.py --no-pull --build-arg PYTHON_IMAGE=TAG ...
#
# TAG defaults to dakd/python-base:3.11-bookworm; MIRROR to $DEBIAN_MIRROR, else the first `URIs:`
# of apt's Debian sources on this machine, else deb.debian.org. Exit status 3: the mirror does not
# answer (its bookworm Release file cannot be fetched), nothing was tried. The image is Debian
# bookworm's minbase with its python3 (3.11) and a virtualenv at /opt/python first on PATH, so
# `python` and `pip` behave as in the python:3.11-slim-bookworm images the Dockerfiles default to.
# Nothing is done when TAG exists (FORCE=1 rebuilds). Needs root, debootstrap and a running docker
# engine. The machine's extra CA certificates are NOT put in the image: docker/build.py --ca-cert
# passes them to the build only.
set -euo pipefail

TAG=${1:-dakd/python-base:3.11-bookworm}
MIRROR=${2:-${DEBIAN_MIRROR:-}}
SUITE=bookworm

if [[ -z "${FORCE:-}" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base-from-debian: $TAG exists (FORCE=1 to rebuild)"
    exit 0
fi
if [[ -z "$MIRROR" ]]; then
    MIRROR=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
command -v debootstrap >/dev/null || { echo "base-from-debian: debootstrap is not installed" >&2; exit 2; }
# python3: on every machine that runs the project (curl and wget are not)
python3 -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=30).read(1)" "$MIRROR/dists/$SUITE/Release" \
    2>/dev/null || { echo "base-from-debian: the Debian mirror $MIRROR does not answer ($MIRROR/dists/$SUITE/Release)" >&2; exit 3; }

ROOTFS=$(mktemp -d /tmp/dakd-rootfs.XXXXXX)
# --one-file-system: an interrupted debootstrap leaves /proc (and /sys) mounted in the rootfs
trap 'rm -rf --one-file-system "$ROOTFS" "$ROOTFS.log"' EXIT
trap 'exit 143' TERM INT  # test-containers' time limit: the EXIT trap still runs
start=$SECONDS
echo "base-from-debian: debootstrap $SUITE from $MIRROR into $ROOTFS"
# passwd: the Dockerfiles' useradd; python3-venv: ensurepip's wheels for the virtualenv
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
chroot "$ROOTFS" python3 -m venv /opt/python
# what an image does not need: package caches and indexes, docs, man pages
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/var/log/*.log
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
echo "base-from-debian: $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'),"\
     "python $(docker run --rm --network host "$TAG" python --version 2>&1 | cut -d' ' -f2)) in $((SECONDS - start)) s"
