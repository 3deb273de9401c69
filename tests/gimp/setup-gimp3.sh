#!/bin/sh
# Provision GIMP 3.0.x + Python plug-in support.
#   Debian >= 13 host : apt-get install directly, no chroot.
#   Debian 12 host    : trixie chroot at $ROOTFS (restored from $CACHE tarball if present).
# usage: setup-gimp3.sh [ROOTFS] ; env CACHE=/var/cache/gimp3-rootfs.tar.zst
# Run by .ci/run before `make test`; the rootfs stays in /var/cache between runs on one machine.
set -eu
ROOTFS=${1:-/var/cache/gimp3-trixie/rootfs}
CACHE=${CACHE:-/var/cache/gimp3-trixie-rootfs.tar.zst}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PKGS="gimp python3-numpy"
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
step() { echo "[setup +$(( $(date +%s) - t0 ))s] $*"; }
# What was provisioned (GIMP is not pinned: a Debian update can move its window's layout, which
# the GUI test looks at; tests/test_gimp3.py says this version when a test fails).
provisioned() {
  step "provisioned: $($1 gimp-console-3.0 --version), Debian package gimp" \
    "$($1 dpkg-query -W -f='${Version}' gimp)"
}

major=$(cut -d. -f1 /etc/debian_version)
if [ "$major" -ge 13 ] 2>/dev/null; then
  step "native Debian $major: installing $PKGS on host"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $PKGS
  provisioned ""; exit 0
fi

if [ -x "$ROOTFS/usr/bin/gimp-console-3.0" ]; then
  step "rootfs already present"; provisioned "chroot $ROOTFS"; exit 0
fi
if [ -f "$CACHE" ]; then
  step "restoring $CACHE"
  mkdir -p "$ROOTFS"
  tar -C "$ROOTFS" --numeric-owner -xpf "$CACHE" --zstd
  step "restored"; provisioned "chroot $ROOTFS"; exit 0
fi

command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap; }
rm -rf "$ROOTFS"  # a half-made rootfs from an interrupted run
step "debootstrap trixie minbase"
debootstrap --variant=minbase trixie "$ROOTFS" "$MIRROR" >/dev/null
cat > "$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR trixie main
deb $MIRROR trixie-updates main
deb http://deb.debian.org/debian-security trixie-security main
SRC
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"; chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
step "apt-get install $PKGS (in private mount ns, /proc mounted)"
unshare --mount --propagation private sh -eu -c "
  mount -t proc proc '$ROOTFS/proc'
  chroot '$ROOTFS' apt-get update -qq
  chroot '$ROOTFS' env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  chroot '$ROOTFS' apt-get clean
"
rm -rf "$ROOTFS/var/lib/apt/lists/"*
provisioned "chroot $ROOTFS"
if [ -n "${SAVE_CACHE:-}" ]; then
  step "saving cache $CACHE"
  mkdir -p "$(dirname "$CACHE")"
  tar -C "$ROOTFS" --numeric-owner --one-file-system -cpf "$CACHE.tmp" --zstd . && mv "$CACHE.tmp" "$CACHE"
  step "cache saved ($(du -h "$CACHE" | cut -f1))"
fi
step done
