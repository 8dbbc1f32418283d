#!/usr/bin/env bash
# Install what scripts/vm/run.sh needs to boot a real Debian kernel (with the
# Yama LSM) under qemu via virtme-ng:
#
#   apt:      qemu-system-x86 kmod busybox-static udev python3(-venv) util-linux binutils file
#   venv:     $DEPS/venv        (virtme-ng, command `vng`)
#   kernel:   $DEPS/kernel/vmlinuz-VERSION (+ config, System.map)
#             $DEPS/kernel/version          (VERSION, one line)
#   modules:  /lib/modules/VERSION   (the guest uses the host's / as its root,
#             so its modules must be where its own /lib/modules points)
#
# The kernel is the versioned linux-image-*-amd64 package that Debian's
# linux-image-amd64 metapackage depends on, fetched with `apt-get download`
# and unpacked with `dpkg -x` (never installed: the host's boot setup is
# untouched).  udev is needed in the guest: without it virtme-ng finds no
# /dev/virtio-ports/* and falls back to running the script on the serial
# console, which loses the script's exit code.
#
# Idempotent; quick (well under a second) when everything is in place.
# Progress goes to stderr.
#
# Environment:
#   HELI_DEPS             base directory DEPS (default: scripts/lib/deps.sh)
#   HELI_VM_FORCE=1       reinstall the venv and the kernel
#   HELI_VNG_VERSION      virtme-ng version to install (default 1.42)
#   HELI_VM_PYTHON        python (>= 3.9) to build the venv with
#                         (default: /usr/bin/python3, else `python3` on PATH)
set -euo pipefail
umask 022

. "$(dirname "${BASH_SOURCE[0]}")/../lib/install.sh" vm-setup
VENV=$DEPS/venv
KDIR=$DEPS/kernel
VNG_VERSION=${HELI_VNG_VERSION:-1.42}
FORCE=${HELI_VM_FORCE:-0}
# binutils: vng reads the kernel version of a vmlinux with `strings`.
APT_PKGS=(qemu-system-x86 kmod busybox-static udev python3 python3-venv util-linux binutils file)

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, /lib/modules)"
[[ $(uname -m) == x86_64 ]] || die "only x86_64 hosts are supported"
export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=0
apt_update() {
  ((APT_UPDATED)) && return 0
  log "apt-get update"
  retry 3 apt-get update -q >&2 || die "apt-get update failed"
  APT_UPDATED=1
}

# ---- apt packages ---------------------------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $st == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing apt packages: ${missing[*]}"
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    apt_update
    retry 3 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
      || die "could not install ${missing[*]}"
  fi
fi
for b in qemu-system-x86_64 depmod /lib/systemd/systemd-udevd busybox setpriv; do
  command -v "$b" >/dev/null || [[ -x $b ]] || die "$b missing after apt install"
done

mkdir -p "$DEPS" || die "cannot create $DEPS (set HELI_DEPS)"
chmod a+rx "$DEPS"

# ---- virtme-ng venv --------------------------------------------------------------
venv_ok() {
  [[ -x $VENV/bin/vng ]] || return 1
  local v
  v=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("virtme-ng"))' 2>/dev/null) || return 1
  [[ $v == "$VNG_VERSION" ]]
}
pick_python() {
  local c
  for c in ${HELI_VM_PYTHON:-} /usr/bin/python3 "$(command -v python3 2>/dev/null || true)"; do
    [[ -n $c && -x $c ]] || continue
    "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 9))' 2>/dev/null || continue
    echo "$c"; return 0
  done
  return 1
}
if [[ $FORCE == 1 ]] || ! venv_ok; then
  PY=$(pick_python) || die "no python >= 3.9 with venv+ensurepip found (set HELI_VM_PYTHON)"
  log "creating venv $VENV with $PY ($("$PY" -V 2>&1))"
  rm -rf -- "$VENV"
  "$PY" -m venv "$VENV" >&2 || die "venv creation failed"
  log "pip install virtme-ng==$VNG_VERSION"
  retry 3 "$VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" >&2 \
    || { rm -rf -- "$VENV"; die "pip install virtme-ng failed"; }
  venv_ok || { rm -rf -- "$VENV"; die "virtme-ng not usable in $VENV"; }
fi

# ---- kernel ---------------------------------------------------------------------------
kernel_ok() {
  local v
  [[ -s $KDIR/version ]] || return 1
  v=$(<"$KDIR/version")
  [[ -n $v && -s $KDIR/vmlinuz-$v && -s /lib/modules/$v/modules.dep \
     && -s /lib/modules/$v/modules.builtin \
     && -e /lib/modules/$v/.heli-complete ]] || return 1
  grep -q '^CONFIG_SECURITY_YAMA=y' "$KDIR/config-$v" 2>/dev/null
}
if [[ $FORCE == 1 ]] || ! kernel_ok; then
  apt_update
  # linux-image-amd64 -> linux-image-6.1.0-NN-amd64 (the real, versioned image).
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -nE 's/^ *Depends: (linux-image-[0-9][^ ]*-amd64)$/\1/p' | head -n1)
  [[ -n $pkg ]] || die "cannot resolve linux-image-amd64's kernel package"
  kver=${pkg#linux-image-}
  log "kernel package $pkg (version $kver)"
  stage=$DEPS/.kernel.tmp.$$
  rm -rf -- "$stage"; mkdir -p "$stage/root"
  trap 'rm -rf -- "$stage"' EXIT
  # apt drops privileges to _apt for downloads; give it a dir it can write.
  chown _apt "$stage" 2>/dev/null || true
  (cd "$stage" && retry 3 apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
  debs=("$stage"/linux-image-*.deb)
  deb=${debs[0]}
  [[ -f $deb ]] || die "no .deb downloaded"
  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$stage/root" || die "dpkg -x failed"
  r=$stage/root
  [[ -s $r/boot/vmlinuz-$kver ]] || die "no vmlinuz-$kver in $deb"
  moddir=$r/lib/modules/$kver
  [[ -d $moddir ]] || moddir=$r/usr/lib/modules/$kver
  [[ -d $moddir ]] || die "no modules for $kver in $deb"
  grep -q '^CONFIG_SECURITY_YAMA=y' "$r/boot/config-$kver" || die "$kver has no Yama"

  stamp=$(basename "$deb")
  if [[ $FORCE != 1 && $(cat "/lib/modules/$kver/.heli-complete" 2>/dev/null) == "$stamp" ]]; then
    log "/lib/modules/$kver already holds $stamp"
  else
    log "installing modules into /lib/modules/$kver"
    mkdir -p /lib/modules
    rm -rf -- "/lib/modules/$kver"
    cp -a "$moddir" "/lib/modules/$kver"
    depmod -a "$kver" || die "depmod failed"
    echo "$stamp" >"/lib/modules/$kver/.heli-complete"
  fi

  # Only the image, config and System.map live under $KDIR: with no
  # lib/modules next to the image, vng uses the host root's /lib/modules.
  mkdir -p "$KDIR"
  for f in vmlinuz config System.map; do
    cp "$r/boot/$f-$kver" "$KDIR/$f-$kver.tmp" && mv -f "$KDIR/$f-$kver.tmp" "$KDIR/$f-$kver"
  done
  echo "$kver" >"$KDIR/version.tmp" && mv -f "$KDIR/version.tmp" "$KDIR/version"
  rm -rf -- "$stage"
  kernel_ok || die "kernel install incomplete"
fi

kver=$(<"$KDIR/version")
if [[ ! -s $KDIR/vmlinux-$kver ]]; then
  # Uncompressed ELF image for qemu's PVH boot: decompressing the bzImage
  # under TCG takes ~6 s per boot.  run.sh falls back to vmlinuz without it.
  log "extracting vmlinux-$kver"
  if "$VENV/bin/python" - "$KDIR/vmlinuz-$kver" "$KDIR/vmlinux-$kver.tmp" <<'PY'
import lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
decoders = ((b"\xfd7zXZ\x00", lzma.LZMADecompressor),
            (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)))
for magic, decoder in decoders:
    i = data.find(magic)
    while i >= 0:
        try:
            out = decoder().decompress(data[i:])
        except Exception:
            out = b""
        if out[:4] == b"\x7fELF" and b"Linux version " in out:
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
        i = data.find(magic, i + 1)
sys.exit(1)
PY
  then
    mv -f "$KDIR/vmlinux-$kver.tmp" "$KDIR/vmlinux-$kver"
  else
    rm -f "$KDIR/vmlinux-$kver.tmp"
    log "warning: could not extract vmlinux (boots will be ~6 s slower)"
  fi
fi
log "ready: vng $VNG_VERSION in $VENV, kernel $KDIR/vmlinuz-$kver, modules /lib/modules/$kver"
