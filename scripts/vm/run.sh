#!/usr/bin/env bash
# Boot the Debian kernel installed by scripts/vm/setup.sh under qemu (TCG,
# via virtme-ng) and run a bash script as root inside it:
#
#   bash scripts/vm/run.sh SCRIPT [ARGS...]
#
# The guest's root is the host's / (read-only, copy-on-write overlays on
# /etc /usr /tmp ...; see scripts/vm/guest-lib.sh), so SCRIPT and anything
# else on the host are visible at the same paths.  The guest starts in the
# current directory.  SCRIPT's stdout/stderr are shown live; the exit status
# of run.sh is SCRIPT's exit status in the guest, or:
#   124  overall timeout (VM killed)
#   125  the VM ended without SCRIPT reporting a status (boot failure, panic)
#   2    usage / setup errors
#
# Inside the guest the script sees:
#   HELI_VM=1
#   HELI_VM_OUT   a directory shared read-write with the host (writes land on
#                 the host); run.sh deletes it unless HELI_VM_KEEP_OUT=1
#                 (then its path is printed).
#
# Environment:
#   HELI_DEPS           base directory of setup.sh's install (default: scripts/lib/deps.sh)
#   HELI_VM_TIMEOUT     seconds for boot + script (default 900)
#   HELI_VM_MEMORY      guest memory (default 2G)
#   HELI_VM_CPUS        guest cpus (default 2)
#   HELI_VM_VERBOSE=1   show the full kernel log (default: only virtme's and
#                       error lines; the full log is kept if the run fails)
#   HELI_VM_PASSENV     names of variables to pass into the guest
#                       (default "RUST_BACKTRACE RUST_LOG")
#   HELI_VM_APPEND      extra kernel command line
#   HELI_VM_KEEP_OUT=1  keep $HELI_VM_OUT after the run
set -uo pipefail

log() { printf '[vm-run] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

(($# >= 1)) || die "usage: $0 SCRIPT [ARGS...]"
script=$1; shift
[[ -f $script && -r $script ]] || die "no such script: $script"
script=$(realpath -- "$script")

. "$(dirname "${BASH_SOURCE[0]}")/../lib/deps.sh"
DEPS=$(heli_deps)
VNG=$DEPS/venv/bin/vng
TIMEOUT=${HELI_VM_TIMEOUT:-900}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "HELI_VM_TIMEOUT must be a number of seconds"
[[ -x $VNG && -s $DEPS/kernel/version ]] \
  || die "VM tooling missing under $DEPS: run scripts/vm/setup.sh first"
kver=$(<"$DEPS/kernel/version")
# Prefer the uncompressed vmlinux (PVH boot): decompressing the bzImage under
# TCG costs ~6 s.
kimg=$DEPS/kernel/vmlinux-$kver
[[ -s $kimg ]] || kimg=$DEPS/kernel/vmlinuz-$kver
[[ -s $kimg ]] || die "kernel image for $kver missing: run scripts/vm/setup.sh"
[[ -d /lib/modules/$kver ]] || die "/lib/modules/$kver missing: run scripts/vm/setup.sh"

# Shared dir, read-write in the guest at the same path.  It must live under
# /tmp (or another dir that exists in the guest and is not replaced by one of
# virtme's tmpfs mounts, e.g. NOT /var/tmp).
out=$(mktemp -d /tmp/heli-vm.XXXXXX) || die "mktemp failed"
chmod 0777 "$out"
console_log=$out/console.log
cleanup() {
  if [[ ${HELI_VM_KEEP_OUT:-0} == 1 ]]; then log "kept $out"; else rm -rf -- "$out"; fi
}
trap cleanup EXIT

# Guest wrapper: run SCRIPT, record its status in the shared dir.
{
  echo '#!/bin/bash'
  echo "export HELI_VM=1 HELI_VM_OUT=$(printf %q "$out")"
  for v in ${HELI_VM_PASSENV-RUST_BACKTRACE RUST_LOG}; do
    [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ && -n ${!v+x} ]] && echo "export $v=$(printf %q "${!v}")"
  done
  echo "cd $(printf %q "$PWD") 2>/dev/null || cd /"
  printf 'bash %q' "$script"; printf ' %q' "$@"; echo
  echo 'rc=$?'
  echo "echo \$rc >$(printf %q "$out/status")"
  echo 'sync'
  echo 'exit $rc'
} >"$out/wrapper.sh"
chmod 0755 "$out/wrapper.sh"

# Modules that udev would load at boot and that only slow it down under TCG
# (kvm alone takes ~8 s to load over 9p).
blacklist=kvm,kvm_amd,kvm_intel,irqbypass,powernow_k8,ahci,libahci,sr_mod,cdrom,sg
blacklist+=,iTCO_wdt,iTCO_vendor_support,i6300esb,watchdog,pcspkr,i2c_i801,i2c_smbus
blacklist+=,lpc_ich,psmouse,serio_raw,evdev,joydev,button,qemu_fw_cfg,aesni_intel
blacklist+=,ghash_clmulni_intel,crc32_pclmul,crct10dif_pclmul,polyval_clmulni
blacklist+=,sha512_ssse3,cryptd,intel_rapl_msr,intel_rapl_common,edac_mce_amd,rapl

cmd=("$VNG" --run "$kimg"
  --disable-kvm          # KVM hangs on this (nested) host; TCG works
  --force-9p             # no virtiofsd here; skips vng's wait-then-fallback
  --verbose              # console on stderr (filtered below)
  --user root
  --memory "${HELI_VM_MEMORY:-2G}" --cpus "${HELI_VM_CPUS:-2}"
  --rwdir "$out"
  --append "modprobe.blacklist=$blacklist ${HELI_VM_APPEND:-}"
  -- bash "$out/wrapper.sh")

# Kernel printk lines look like "[    1.234567] ..."; hide them (and the
# decompressor's chatter) unless verbose, but keep virtme's progress and
# anything that smells like a crash.  The script's own stderr passes through.
filter() {
  local line show=${HELI_VM_VERBOSE:-0}
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "$line" >>"$console_log"
    if [[ $show == 1 ]]; then printf '%s\n' "$line" >&2; continue; fi
    if [[ $line =~ ^\[\ *[0-9]+\.[0-9]+\]\  ]]; then
      [[ $line =~ virtme-ng-init:|Kernel\ panic|BUG:|Oops|Call\ Trace|segfault|Out\ of\ memory|blocked\ for\ more|Power\ down ]] \
        || continue
    elif [[ $line =~ ^(Probing\ EDD|Memory\ KASLR|Poking\ KASLR|Decompressing|Parsing\ ELF|Performing\ relocations|Booting\ the\ kernel) ]]; then
      continue
    fi
    printf '%s\n' "$line" >&2
  done
}

log "booting $kver ($(basename "$kimg")), timeout ${TIMEOUT}s: $(basename "$script") $*"
export PATH=$DEPS/venv/bin:$PATH
start=$SECONDS
# timeout(1) runs vng in its own process group and signals the whole group,
# so qemu dies with it.  Being in its own group, it misses a terminal's ^C:
# the trap below forwards INT/TERM/HUP to it (timeout passes them on).
run_vm() {
  timeout --kill-after=15 "$TIMEOUT" "${cmd[@]}" </dev/null &
  echo $! >"$out/timeout.pid"
  wait $!
  echo $? >"$out/vng_rc"
}
on_signal() {
  log "interrupted: stopping the VM"
  [[ -s $out/timeout.pid ]] && kill -TERM "$(<"$out/timeout.pid")" 2>/dev/null
  wait "$pipe_pid" 2>/dev/null
  exit 130
}
# qemu re-opens /proc/self/fd/1 and /proc/self/fd/2: if those were regular
# files it would write from offset 0 over what is already there, so both
# always go through pipes (stderr via the filter, stdout via cat).
{ run_vm 2>&1 1>&3 3>&- | filter; } 3>&1 | cat &
pipe_pid=$!
trap on_signal INT TERM HUP
wait "$pipe_pid"
trap - INT TERM HUP
vng_rc=$(cat "$out/vng_rc" 2>/dev/null || echo 255)
elapsed=$((SECONDS - start))

if ((vng_rc == 124 || vng_rc == 137)); then
  HELI_VM_KEEP_OUT=1
  log "TIMEOUT after ${elapsed}s (HELI_VM_TIMEOUT=$TIMEOUT): VM killed; console log: $console_log"
  exit 124
fi
if [[ ! -s $out/status ]]; then
  HELI_VM_KEEP_OUT=1
  log "VM exited (vng status $vng_rc) after ${elapsed}s without a script status; console log: $console_log"
  exit 125
fi
rc=$(<"$out/status")
[[ $rc =~ ^[0-9]+$ ]] || { HELI_VM_KEEP_OUT=1; log "garbled status '$rc'"; exit 125; }
((rc != vng_rc)) && log "note: vng exited $vng_rc, script $rc"
((rc != 0)) && { HELI_VM_KEEP_OUT=1; log "console log: $console_log"; }
log "script exited $rc after ${elapsed}s"
exit "$rc"
