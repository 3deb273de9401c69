#!/bin/sh
# Run a Python file inside headless GIMP 3 (python-fu-eval batch), with extra plug-in dirs.
# usage: gimp3-batch.sh SCRIPT.py [PLUGIN_DIR...]
#   env GIMP_FAST=1   adds --no-data --no-fonts (~3 s faster start-up)
#   env GIMP_GUI=1    runs gimp-3.0 with its user interface (needs DISPLAY in PASS_ENV and the
#                     X socket folder /tmp/.X11-unix in BIND_RO) instead of gimp-console-3.0 -i
#   env ROOTFS=...    trixie chroot (default /var/cache/gimp3-trixie/rootfs; unused on native Debian >= 13)
#   env PASS_ENV="VAR ..."  pass these variables through to the batch script (GIMP runs with env -i)
#   env BIND_RO="DIR ..."  expose host folders read-only at the same paths inside the chroot
#                     (e.g. the worker interpreter's base prefix and the project venv)
#   env BIND_RW="DIR ..."  the same, writable
#   env SHELL_ONLY=1  runs SCRIPT with sh where GIMP would run (its libraries, its clean
#                     environment), without GIMP: the tests' reference runs of the worker
#   env GIMP_HOME=DIR  GIMP's HOME (kept afterwards; its ~/.config/GIMP/3.0 is GIMP's folder, as
#                     for a user) instead of a throw-away one
# Exit code: 0 ok, 64 if the batch python raised (GIMP 3.0.4 behaviour).
# Paths must not contain spaces. Used by tests/test_gimp3.py (the real-GIMP tests).
set -eu
SCRIPT=$(realpath "$1"); shift
PLUGDIRS=""; for d in "$@"; do PLUGDIRS="$PLUGDIRS:$(realpath "$d")"; done
ROOTFS=${ROOTFS:-/var/cache/gimp3-trixie/rootfs}
# Fresh throw-away HOME + GIMP config dir per run; plug-in-path = system dir + ours.
INNER='H=${GIMP_HOME:-$(mktemp -d)}; D=$H/gimp3; [ -z "${GIMP_HOME:-}" ] || D=$H/.config/GIMP/3.0
export HOME=$H GIMP3_DIRECTORY=${GIMP3_DIRECTORY:-$D}; mkdir -p "$GIMP3_DIRECTORY"
printf "(plug-in-path \"\${gimp_plug_in_dir}/plug-ins%s\")\n" "$PLUGDIRS" > "$GIMP3_DIRECTORY/gimprc"
if [ -n "${GIMP_GUI:-}" ]; then G=gimp-3.0; else G="gimp-console-3.0 -i"; fi
if [ -n "${SHELL_ONLY:-}" ]; then sh "$SCRIPT"; rc=$?
else $G ${GIMP_FAST:+-d -f} --batch-interpreter=python-fu-eval -b - --quit < "$SCRIPT"; rc=$?; fi
[ -n "${GIMP_HOME:-}" ] || rm -rf "$H"; exit $rc'
VARS="GIMP_FAST=${GIMP_FAST:-} GIMP_GUI=${GIMP_GUI:-} SHELL_ONLY=${SHELL_ONLY:-} GIMP_HOME=${GIMP_HOME:-} HOME=${HOME:-/root} PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SCRIPT=$SCRIPT PLUGDIRS=$PLUGDIRS ${GIMP3_DIRECTORY:+GIMP3_DIRECTORY=$GIMP3_DIRECTORY}"
for v in ${PASS_ENV:-}; do eval "VARS=\"\$VARS $v=\${$v:-}\""; done
if [ "$(cut -d. -f1 /etc/debian_version)" -ge 13 ] 2>/dev/null; then
  exec env -i $VARS sh -c "$INNER"
fi
# Debian 12: chroot inside a private mount namespace -> every mount vanishes when GIMP exits.
BINDS="$(dirname "$SCRIPT")"; for d in "$@"; do BINDS="$BINDS $(realpath "$d")"; done
export BINDS INNER
exec unshare --mount --propagation private sh -eu -c '
  R=$1; shift
  mount -t proc proc "$R/proc"
  mount --bind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/dev/shm"; mount --bind /sys "$R/sys"
  for d in ${BIND_RW:-} $BINDS; do mkdir -p "$R$d"; mount --bind "$d" "$R$d"; done
  for d in ${BIND_RO:-}; do
    mkdir -p "$R$d"; mount --bind "$d" "$R$d"; mount -o remount,bind,ro "$R$d"
  done
  exec chroot "$R" env -i "$@" sh -c "$INNER"' sh "$ROOTFS" $VARS
