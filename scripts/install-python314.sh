#!/usr/bin/env bash
# Install CPython 3.14 from Debian *sid* binary packages into a private root:
#
#   $DEPS/py314/usr/bin/python3.14
#
# DEPS is $HELI_DEPS, else /opt/heli for root, else $XDG_DATA_HOME/heli or
# ~/.local/share/heli for any other user (scripts/lib/deps.sh): no root
# needed (but patchelf must be installed).
#
# The .debs (python3.14 + the shared libraries it needs, including sid's newer
# glibc) are fetched with `apt-get download` through a PRIVATE apt
# configuration (own sources.list, state, cache, lists), so the host's apt
# state is never touched, then unpacked with `dpkg-deb -x`.  The interpreter
# is patched with patchelf to use the root's own dynamic loader and an
# RPATH into the root; sys.prefix then resolves to <root>/usr by itself.
#
# Idempotent: if a verified install is present it only re-verifies (~0.2s).
# The new tree is built in a staging dir next to the target and renamed into
# place at the end, so an interrupted run never leaves a half-installed root.
# Progress goes to stderr; the last line on stdout is the interpreter path.
#
# Environment:
#   HELI_DEPS            base directory (default: see above)
#   HELI_PY314_FORCE=1   reinstall even if a verified install exists
#   HELI_DEBIAN_MIRROR   Debian mirror URL (default: taken from the host's
#                        /etc/apt/sources.list*, else http://deb.debian.org/debian)
#   HELI_DEBIAN_SUITE    suite to fetch from (default sid)
set -euo pipefail
umask 022

. "$(dirname "${BASH_SOURCE[0]}")/lib/install.sh" install-python314
ROOT=$DEPS/py314
PY=$ROOT/usr/bin/python3.14
MANIFEST=$ROOT/.heli-py314-manifest
SUITE=${HELI_DEBIAN_SUITE:-sid}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
CORE_PKGS=(python3.14-minimal libpython3.14-minimal libpython3.14-stdlib python3.14 libpython3.14 libc6)
VERIFY_CODE='import sys, ctypes, pdb, socket, ssl, json, readline; assert sys.version_info[:2] == (3, 14), sys.version'

# verify <root>: the checks the rest of heli relies on.  -I so that
# PYTHONHOME/PYTHONPATH/cwd cannot mask a broken install.
verify() {
  local root=$1 py=$1/usr/bin/python3.14 prefix
  [[ -x $py ]] || { log "verify: $py missing"; return 1; }
  "$py" -I -c "$VERIFY_CODE" || { log "verify: import check failed"; return 1; }
  prefix=$("$py" -I -c 'import sys; print(sys.prefix)') || return 1
  [[ $prefix == "$root/usr" ]] || { log "verify: sys.prefix=$prefix, expected $root/usr"; return 1; }
}

# ---- fast path ---------------------------------------------------------------
if [[ ${HELI_PY314_FORCE:-0} != 1 && -f $MANIFEST ]] && verify "$ROOT" 2>/dev/null; then
  log "already installed: $("$PY" -I -c 'import sys; print(sys.version.split()[0])') at $ROOT"
  echo "$PY"
  exit 0
fi

t_start=$SECONDS
[[ $ROOT != *:* ]] || die "install path '$ROOT' must not contain ':' (it goes into an RPATH)"
for tool in apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null || die "'$tool' not found: this script needs a Debian-based host"
done
[[ -r $KEYRING ]] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

# ---- patchelf (from the host's own apt) ---------------------------------------
if ! command -v patchelf >/dev/null; then
  [[ $(id -u) == 0 ]] || die "patchelf missing and not root: run 'apt-get install -y patchelf' first"
  log "installing patchelf on the host"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q patchelf >&2; then
    log "apt-get install failed; running 'apt-get update' and retrying"
    retry 3 apt-get update -q >&2 || die "host apt-get update failed"
    retry 3 apt-get install -y -q patchelf >&2 || die "could not install patchelf"
  fi
fi

# ---- staging dir ---------------------------------------------------------------
mkdir -p "$DEPS" || die "cannot create $DEPS (set HELI_DEPS to a directory you can write)"
chmod a+rx "$DEPS"
# Remove leftovers of interrupted runs (their owning PID is gone).
for old in "$DEPS"/.py314.tmp.* "$DEPS"/.py314.old.*; do
  [[ -e $old ]] || continue
  pid=${old##*.}
  if ! kill -0 "$pid" 2>/dev/null; then log "removing stale $old"; rm -rf -- "$old"; fi
done
STAGE=$DEPS/.py314.tmp.$$
rm -rf -- "$STAGE"
mkdir -p "$STAGE"/{apt/etc/apt.conf.d,apt/etc/preferences.d,apt/etc/sources.list.d,apt/state/lists/partial,apt/cache/archives/partial,apt/log,debs,root}
trap 'rm -rf -- "$STAGE"' EXIT

# ---- private apt configuration ---------------------------------------------------
detect_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    case $f in
      *.sources) sed -nE 's/^[[:space:]]*URIs:[[:space:]]*//p' "$f" | tr -s ' \t' '\n\n' ;;
      *) sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f" ;;
    esac
  done | grep -E '^https?://[^[:space:]]+/debian/?$' | head -n1 || true
}
MIRROR=${HELI_DEBIAN_MIRROR:-$(detect_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}
log "using mirror $MIRROR, suite $SUITE"

A=$STAGE/apt
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$A/etc/sources.list"
: >"$A/state/status"
ARCH=$(dpkg --print-architecture)
cat >"$A/apt.conf" <<EOF
Dir::State "$A/state";
Dir::State::status "$A/state/status";
Dir::Cache "$A/cache";
Dir::Log "$A/log";
Dir::Etc "$A/etc";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$A/etc/apt.conf.d";
Dir::Etc::sourcelist "$A/etc/sources.list";
Dir::Etc::sourceparts "$A/etc/sources.list.d";
Dir::Etc::preferences "$A/etc/preferences";
Dir::Etc::preferencesparts "$A/etc/preferences.d";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
APT::Sandbox::User "$(id -un)";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
// The reachable mirror may be a frozen copy of the archive whose Release file
// is past its Valid-Until date; signatures are still checked.
Acquire::Check-Valid-Until "false";
Acquire::Retries "3";
Acquire::http::Timeout "60";
EOF
export APT_CONFIG=$A/apt.conf   # read instead of /etc/apt/apt.conf; our Dir::Etc::parts replaces apt.conf.d

t0=$SECONDS
log "apt-get update ($SUITE, private state in $A)"
retry 4 apt-get -q --error-on=any update >&2 \
  || die "apt-get update for $MIRROR $SUITE failed (network? clock? archive key not in $KEYRING?)"
log "  done in $((SECONDS - t0))s"

# ---- resolve packages: core + transitive lib* Depends/Pre-Depends -------------------
for p in "${CORE_PKGS[@]}"; do
  apt-cache show "$p" >/dev/null 2>&1 || die "package $p not available in $SUITE at $MIRROR"
done
declare -A seen=()
queue=("${CORE_PKGS[@]}")
while ((${#queue[@]})); do
  for p in "${queue[@]}"; do seen[$p]=1; done
  deps=$(apt-cache depends --important "${queue[@]}") || die "apt-cache depends failed"
  next=()
  while read -r d; do
    [[ -n $d && -z ${seen[$d]:-} ]] || continue
    seen[$d]=1; next+=("$d")
  done < <(sed -nE 's/^[[:space:]]*\|?(Pre)?Depends: ([^<[:space:]]+)$/\2/p' <<<"$deps" | grep -E '^lib' | sort -u || true)
  queue=("${next[@]}")
done
mapfile -t PKGS < <(printf '%s\n' "${!seen[@]}" | sort)
log "packages (${#PKGS[@]}): ${PKGS[*]}"

t0=$SECONDS
log "downloading"
(cd "$STAGE/debs" && retry 4 apt-get -q download "${PKGS[@]}" >&2) || die "apt-get download failed"
log "  done in $((SECONDS - t0))s"

# ---- unpack --------------------------------------------------------------------
t0=$SECONDS
R=$STAGE/root
: >"$STAGE/manifest"
for deb in "$STAGE"/debs/*.deb; do
  dpkg-deb -x "$deb" "$R" || die "dpkg-deb -x $deb failed"
  dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$STAGE/manifest"
done
log "  unpacked in $((SECONDS - t0))s"

# Locate the root's loader and multiarch lib dir (x86_64: usr/lib/x86_64-linux-gnu).
LDSO=$(find "$R/usr/lib" "$R/lib" -maxdepth 2 -type f -name 'ld-linux*.so.*' 2>/dev/null | head -n1 || true)
[[ -n $LDSO ]] || die "no ld-linux*.so.* found in the unpacked libc6"
LIBDIR=$(dirname "$LDSO")             # staged path
MULTIARCH=${LIBDIR#"$R"/usr/lib/}     # e.g. x86_64-linux-gnu
MULTIARCH=${MULTIARCH#"$R"/lib/}
[[ -x $R/usr/bin/python3.14 ]] || die "usr/bin/python3.14 missing from the unpacked packages"

# Pre-check the unpatched binary through the staged loader, before replacing anything.
"$LDSO" --library-path "$LIBDIR" "$R/usr/bin/python3.14" -I -c "$VERIFY_CODE" \
  || die "staged interpreter fails the import check (see above)"

# ---- patch (paths point at the FINAL location) ----------------------------------------
FINAL_LDSO=$ROOT${LDSO#"$R"}
RPATH=$ROOT/usr/lib/$MULTIARCH:$ROOT/lib/$MULTIARCH
log "patchelf: interpreter $FINAL_LDSO, rpath $RPATH"
patchelf --set-interpreter "$FINAL_LDSO" --force-rpath --set-rpath "$RPATH" "$R/usr/bin/python3.14" \
  || die "patchelf failed"
# Point the helper scripts' shebangs (pdb3.14, pydoc3.14, ...) at our interpreter.
for f in "$R"/usr/bin/*; do
  [[ -f $f && ! -L $f ]] || continue
  if head -c 64 "$f" | head -n1 | grep -qE '^#! ?/usr/bin/python3'; then
    sed -i "1s|^#! \\?/usr/bin/python3[.0-9]*|#!$ROOT/usr/bin/python3.14|" "$f"
  elif head -n1 "$f" | grep -qE '^#! ?/bin/sh'; then
    sed -i "s|^exec python3\.14 |exec $ROOT/usr/bin/python3.14 |" "$f"   # pdb3.14
  fi
done
chmod -R a+rX "$R"
mv "$STAGE/manifest" "$R/.heli-py314-manifest.pending"

# ---- swap into place ----------------------------------------------------------------
if [[ -e $ROOT || -L $ROOT ]]; then
  OLD=$DEPS/.py314.old.$$
  log "replacing existing $ROOT"
  mv -- "$ROOT" "$OLD"
fi
mv -- "$R" "$ROOT"
[[ -n ${OLD:-} ]] && rm -rf -- "$OLD"

# Byte-compile the stdlib (dpkg -x skips Debian's postinst py3compile).  Done
# here because an unprivileged user cannot write __pycache__ under the root,
# and every import would otherwise recompile from source (~+10 MB, ~2s).
log "byte-compiling the stdlib"
"$PY" -I -m compileall -q -j0 "$ROOT/usr/lib/python3.14" >/dev/null \
  || log "WARNING: compileall reported errors (non-fatal)"
chmod -R a+rX "$ROOT/usr/lib/python3.14"
log "verifying $PY"
verify "$ROOT" || die "verification of $PY failed (install left in place without manifest; rerun to retry)"
mv "$ROOT/.heli-py314-manifest.pending" "$MANIFEST"
# Check that every directory up to the root is traversable by other users.
d=$ROOT
while [[ $d != / ]]; do
  [[ $(( 0$(stat -c %a "$d") & 01 )) != 0 ]] || log "WARNING: $d is not world-executable; unprivileged users cannot reach $PY"
  d=$(dirname "$d")
done
log "installed $("$PY" -I -c 'import sys; print(sys.version.split()[0])') (sys.prefix=$ROOT/usr) in $((SECONDS - t_start))s"
echo "$PY"
