#!/usr/bin/env bash
# CPython 3.14 and 3.15 from Debian unstable, in a chroot (they need a newer C library than the
# host's). Usage, as root:
#   .ci/chroot.sh build            build the chroot once (idempotent; ~1 minute)
#   .ci/chroot.sh tox [ARGS...]    build if needed, then run tox from this repo inside it
#                                  (default: the "chroot" label, i.e. -e py314,py315)
#   .ci/chroot.sh run CMD...       build if needed, then run CMD inside it, in the repo
# FORKMEM_CHROOT picks the directory (default /var/tmp/forkmem-sid, outside any work tree).
# Mounts live in a private mount namespace, so they vanish with the process even if it is killed;
# the exit trap unmounts them explicitly as well.
set -euo pipefail

ROOT=${FORKMEM_CHROOT:-/var/tmp/forkmem-sid}
REPO=$(cd "$(dirname "$0")/.." && pwd)
INNER_REPO=/src/forkmem
TOX_VENV=/opt/forkmem-tox
PACKAGES=python3.14,python3.14-venv,python3.15,python3.15-venv,ca-certificates

die() { echo "chroot.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount, chroot)"

# The Debian mirror this machine's apt already uses (deb822 .sources first, then sources.list).
apt_mirror() {
  local uri
  uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $0 ~ /debian/ && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# Host files pip and DNS need inside; copied on every entry so a changed host config is followed.
copy_host_config() {
  mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/etc/xdg"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
  [ -f /etc/pip.conf ] && cp -L /etc/pip.conf "$ROOT/etc/pip.conf"
  if [ -d /etc/xdg/pip ]; then rm -rf "$ROOT/etc/xdg/pip" && cp -rL /etc/xdg/pip "$ROOT/etc/xdg/pip"; fi
  return 0
}

build() {
  # The stamp names what was installed: a changed package list rebuilds the chroot.
  local stamp="$ROOT/.forkmem-ready"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$PACKAGES" ]; then return 0; fi
  exec 9>"$ROOT.lock"
  flock 9
  if [ "$(cat "$stamp" 2>/dev/null)" = "$PACKAGES" ]; then return 0; fi
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  local mirror tmp="$ROOT.partial"
  mirror=$(apt_mirror)
  echo "chroot.sh: debootstrap sid from $mirror into $ROOT" >&2
  rm -rf "$tmp"
  debootstrap --variant=minbase --include="$PACKAGES" sid "$tmp" "$mirror" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT.debootstrap.log" >&2; die "debootstrap failed (log: $ROOT.debootstrap.log)"; }
  rm -rf "$ROOT"
  mv "$tmp" "$ROOT"
  copy_host_config
  # tox itself runs on 3.14; it creates the py314/py315 envs from the interpreters beside it.
  chroot "$ROOT" /usr/bin/python3.14 -m venv "$TOX_VENV"
  chroot "$ROOT" /usr/bin/env -u PIP_FIND_LINKS "$TOX_VENV/bin/python" -m pip install -q "tox>=4.20"
  echo "$PACKAGES" >"$stamp"
}

unmount_all() {
  local m
  for m in "$ROOT$INNER_REPO" "$ROOT/dev" "$ROOT/sys" "$ROOT/proc"; do
    mountpoint -q "$m" && { umount -R "$m" 2>/dev/null || umount -R -l "$m"; }
  done
  return 0
}

# Runs "$@" inside the chroot with the repo at $INNER_REPO; called in a private mount namespace.
enter() {
  trap unmount_all EXIT
  copy_host_config
  mkdir -p "$ROOT$INNER_REPO"
  mount -t proc proc "$ROOT/proc"
  mount --rbind /sys "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"  # recursive: /dev/shm and /dev/pts come along (multiprocessing)
  mount --bind "$REPO" "$ROOT$INNER_REPO"
  # PIP_FIND_LINKS and friends may name host paths that do not exist inside.
  local keep=() v
  for v in CI TERM PIP_DEFAULT_TIMEOUT PIP_DISABLE_PIP_VERSION_CHECK PIP_INDEX_URL PIP_EXTRA_INDEX_URL \
           HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy PYTHONDONTWRITEBYTECODE \
           FORKMEM_SAFETY_FORKS FORKMEM_SAFETY_REPEATS; do
    [ -n "${!v+x}" ] && keep+=("$v=${!v}")
  done
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH="$TOX_VENV/bin:/usr/local/bin:/usr/bin:/bin" \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt "${keep[@]}" \
    /bin/sh -c 'cd "$0" && exec "$@"' "$INNER_REPO" "$@"
}

cmd=${1:-tox}
[ $# -gt 0 ] && shift
case "$cmd" in
  build) build ;;
  tox)
    build
    [ $# -gt 0 ] || set -- -m chroot
    # The tox work dir stays inside the chroot: the host's .tox must not mix with Debian's pythons.
    exec unshare --mount --propagation private "$0" __enter tox --workdir /var/tmp/forkmem-tox "$@" ;;
  run)
    build
    [ $# -gt 0 ] || die "run needs a command"
    exec unshare --mount --propagation private "$0" __enter "$@" ;;
  __enter) enter "$@" ;;
  *) die "unknown command '$cmd' (build, tox, run)" ;;
esac
