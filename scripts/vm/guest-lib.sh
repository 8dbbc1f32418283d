# shellcheck shell=bash
# Helpers for scripts that scripts/vm/run.sh runs as root inside the guest.
# Source it:  . "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"
#
# Guest facts (virtme-ng, host / shared over 9p):
#  - / is the HOST's root, read-only.  /etc /lib /usr /opt /home /srv /var /tmp
#    are copy-on-write overlays whose writes stay in guest RAM (never reach the
#    host); /run, /dev/shm, /var/tmp, /var/log, /var/cache are empty tmpfs.
#    /root and /work are NOT overlaid: read-only.  /tmp is not fresh: it shows
#    the host's /tmp.  Only run.sh's $HELI_VM_OUT writes through to the host.
#  - /root is 0700, so an unprivileged user cannot read anything under it
#    (~/.cargo, pyenv, a repo cloned there).  Copy what it must run into
#    heli_vm_workdir (a fresh tmpfs).  /usr/bin/python3 works for any user.
#  - `useradd` fails (/etc/shadow is a bind-mounted tmpfs file), so
#    heli_vm_user appends the user to /etc/passwd and /etc/group itself.

HELI_VM_USER=${HELI_VM_USER:-helitest}
HELI_VM_UID=${HELI_VM_UID:-4242}
HELI_VM_RUN=/run/heli               # tmpfs mounted by heli_vm_workdir

_heli_die() { echo "guest-lib: ERROR: $*" >&2; exit 1; }

# heli_vm_workdir: mount (once) a fresh tmpfs at /run/heli and print a
# directory in it owned by the test user, e.g. to copy build outputs into.
heli_vm_workdir() {
  heli_vm_user >/dev/null
  if [[ ! -e $HELI_VM_RUN/.mounted ]]; then
    mkdir -p "$HELI_VM_RUN"
    mount -t tmpfs -o mode=0755,size=75% heli "$HELI_VM_RUN" || _heli_die "mount tmpfs $HELI_VM_RUN"
    : >"$HELI_VM_RUN/.mounted"
    mkdir -p "$HELI_VM_RUN/work"
    chown "$HELI_VM_UID:$HELI_VM_UID" "$HELI_VM_RUN/work"
  fi
  echo "$HELI_VM_RUN/work"
}

# heli_vm_user: create (once) the unprivileged user $HELI_VM_USER with
# uid = gid = $HELI_VM_UID, no supplementary groups, home /home/$HELI_VM_USER
# (on the guest's /home overlay); prints its name.  Process start-up is slow
# in the guest (~0.1-0.3 s), so later calls only test a stamp file.
heli_vm_user() {
  local stamp=/run/.heli-vm-user.$HELI_VM_USER
  if [[ ! -e $stamp ]]; then
    if ! id -u "$HELI_VM_USER" >/dev/null 2>&1; then
      getent passwd "$HELI_VM_UID" >/dev/null && _heli_die "uid $HELI_VM_UID already taken"
      getent group "$HELI_VM_UID" >/dev/null && _heli_die "gid $HELI_VM_UID already taken"
      # Writes land in the /etc overlay (guest RAM), never on the host.
      echo "$HELI_VM_USER:x:$HELI_VM_UID:" >>/etc/group
      echo "$HELI_VM_USER:x:$HELI_VM_UID:$HELI_VM_UID:heli test user:/home/$HELI_VM_USER:/bin/bash" >>/etc/passwd
    fi
    [[ $(id -u "$HELI_VM_USER") == "$(id -g "$HELI_VM_USER")" ]] || _heli_die "$HELI_VM_USER: uid != gid"
    mkdir -p "/home/$HELI_VM_USER"
    chown "$(id -u "$HELI_VM_USER"):$(id -g "$HELI_VM_USER")" "/home/$HELI_VM_USER"
    chmod 0700 "/home/$HELI_VM_USER"
    id -u "$HELI_VM_USER" >"$stamp"
  fi
  HELI_VM_UID=$(<"$stamp")
  echo "$HELI_VM_USER"
}

# as_user CMD [ARGS...]: run CMD as the test user with no capabilities and a
# fresh environment (HOME, USER, SHELL, PATH set by setpriv), cwd = its home.
as_user() {
  heli_vm_user >/dev/null
  (cd "/home/$HELI_VM_USER" &&
    exec setpriv --reuid="$HELI_VM_UID" --regid="$HELI_VM_UID" --clear-groups \
      --inh-caps=-all --reset-env "$@")
}

# set_ptrace_scope N: write and verify /proc/sys/kernel/yama/ptrace_scope.
# Scope 3 cannot be lowered again until the (guest) kernel reboots.
set_ptrace_scope() {
  local f=/proc/sys/kernel/yama/ptrace_scope
  [[ -e $f ]] || _heli_die "$f missing: kernel without Yama"
  echo "$1" >"$f" 2>/dev/null || return 1
  [[ $(<"$f") == "$1" ]]
}
