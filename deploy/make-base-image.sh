#!/usr/bin/env bash
# Makes the base images the deployment files need, on a machine whose Docker
# engine cannot pull from a registry: a Debian root filesystem is assembled
# with debootstrap from Debian's package mirror (reachable without a
# registry) and loaded with `docker import`.
#
#   deploy/make-base-image.sh            make the images that are missing
#   deploy/make-base-image.sh --force    make them again
#
# Three images, each a stand-in for the public image named beside it:
#
#   $BASE_IMAGE   (hookq-local/debian:bookworm-slim)  debian:bookworm-slim + ca-certificates, curl
#                 the base of deploy/Dockerfile (the hookq runtime image)
#   $PYTHON_IMAGE (hookq-local/python:3-bookworm)     python:3-slim: the above + python3
#                 the base of deploy/receiver/Dockerfile (the example receiver)
#   $REDIS_IMAGE  (hookq-local/redis:7-bookworm)      redis:7: the above + redis-server,
#                 WORKDIR /data owned by user redis, runs as redis
#
# With a registry you need none of this: use debian:bookworm-slim,
# python:3-slim and redis:7 (the defaults of docker-compose.yml and the Makefile).
#
# Needs root (debootstrap, chroot) and Debian's mirror; installs debootstrap
# with apt-get when it is missing. The root filesystem is cached in
# $HOOKQ_BASE_CACHE (default /var/tmp/hookq-base-image) so a --force run
# downloads nothing again. Takes ~2 minutes the first time.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-hookq-local/debian:bookworm-slim}"
PYTHON_IMAGE="${PYTHON_IMAGE:-hookq-local/python:3-bookworm}"
REDIS_IMAGE="${REDIS_IMAGE:-hookq-local/redis:7-bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${HOOKQ_BASE_CACHE:-/var/tmp/hookq-base-image}"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "make-base-image: $*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [ "$FORCE" = 0 ] && have_image "$BASE_IMAGE" && have_image "$PYTHON_IMAGE" && have_image "$REDIS_IMAGE"; then
  log "$BASE_IMAGE, $PYTHON_IMAGE and $REDIS_IMAGE exist; nothing to do (--force makes them again)"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "make-base-image: needs root (debootstrap and chroot); run it with sudo" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

mkdir -p "$CACHE"
ROOT="$CACHE/rootfs"
start=$(date +%s)

# 1. The minimal root filesystem, once: Debian's minbase variant plus the two
#    packages every image here needs (TLS roots for HTTPS webhooks, curl for
#    HEALTHCHECKs).
if [ ! -f "$ROOT/.hookq-complete" ]; then
  rm -rf "$ROOT"
  log "debootstrap $SUITE (minbase + ca-certificates, curl) from $MIRROR"
  debootstrap --variant=minbase --include=ca-certificates,curl \
    "$SUITE" "$ROOT" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 || {
      tail -30 "$CACHE/debootstrap.log" >&2
      echo "make-base-image: debootstrap failed (full log: $CACHE/debootstrap.log)" >&2
      exit 1
    }
  # Like the official slim image: no daemons started by package scripts, no
  # recommends, and apt's lists kept out of the image.
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$ROOT/etc/apt/apt.conf.d/99hookq-no-recommends"
  touch "$ROOT/.hookq-complete"
fi

# A copy of the root filesystem with extra packages installed in a chroot.
# Downloaded packages stay in $CACHE/apt-archives for the next run.
derive() { # derive DIR PACKAGE...
  local dir="$1"; shift
  rm -rf "$dir"
  cp -a "$ROOT" "$dir"
  mkdir -p "$CACHE/apt-archives/partial"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  mount --bind "$CACHE/apt-archives" "$dir/var/cache/apt/archives"
  mount -t proc proc "$dir/proc"
  local rc=0
  chroot "$dir" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $* >/dev/null" \
    > "$CACHE/chroot-$(basename "$dir").log" 2>&1 || rc=$?
  umount "$dir/proc" || true
  umount "$dir/var/cache/apt/archives" || true
  if [ "$rc" != 0 ]; then
    tail -30 "$CACHE/chroot-$(basename "$dir").log" >&2
    echo "make-base-image: installing $* failed" >&2
    exit 1
  fi
}

# Trims what an image does not need and loads the directory as an image.
import() { # import DIR TAG CHANGE...
  local dir="$1" tag="$2"; shift 2
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/tmp/* \
    "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
    "$dir"/usr/share/info/* "$dir"/.hookq-complete
  : > "$dir/etc/resolv.conf"
  local changes=()
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$dir" --numeric-owner --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
      --exclude=./var/cache/apt/archives/* -c . \
    | docker import "${changes[@]}" \
        --message "made by deploy/make-base-image.sh ($SUITE, minbase)" - "$tag" >/dev/null
  log "$tag: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}

PATH_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

if [ "$FORCE" = 1 ] || ! have_image "$BASE_IMAGE"; then
  rm -rf "$CACHE/base" && cp -a "$ROOT" "$CACHE/base"
  import "$CACHE/base" "$BASE_IMAGE" "$PATH_ENV" 'CMD ["/bin/bash"]'
  rm -rf "$CACHE/base"
fi

if [ "$FORCE" = 1 ] || ! have_image "$PYTHON_IMAGE"; then
  derive "$CACHE/python" python3
  import "$CACHE/python" "$PYTHON_IMAGE" "$PATH_ENV" 'ENV PYTHONUNBUFFERED=1' 'CMD ["python3"]'
  rm -rf "$CACHE/python"
fi

if [ "$FORCE" = 1 ] || ! have_image "$REDIS_IMAGE"; then
  derive "$CACHE/redis" redis-server
  # Like the official image: data in /data, owned by and run as user redis,
  # no config file (the command line says everything).
  mkdir -p "$CACHE/redis/data"
  chroot "$CACHE/redis" chown redis:redis /data
  import "$CACHE/redis" "$REDIS_IMAGE" "$PATH_ENV" 'WORKDIR /data' 'VOLUME /data' \
    'USER redis' 'EXPOSE 6379' 'CMD ["redis-server", "--protected-mode", "no"]'
  rm -rf "$CACHE/redis"
fi

log "done in $(( $(date +%s) - start )) s"
