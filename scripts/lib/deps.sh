# shellcheck shell=bash
# Where heli's scripts install what they fetch (Python 3.14, py-spy,
# gunicorn, cargo tools, the VM's kernel): the one place that says it.
#
#   . scripts/lib/deps.sh;  root=$(heli_deps)
#
# heli_deps: prints the base directory, an absolute path without a trailing
# slash: $HELI_DEPS if set; else /opt/heli for root; else, for any other
# user, $XDG_DATA_HOME/heli (when XDG_DATA_HOME is an absolute path, as
# the XDG base directory spec asks) or ~/.local/share/heli.
heli_deps() {
  local deps
  if [[ -n ${HELI_DEPS:-} ]]; then
    deps=$HELI_DEPS
  elif [[ $(id -u) == 0 ]]; then
    deps=/opt/heli
  elif [[ ${XDG_DATA_HOME:-} == /* ]]; then
    deps=$XDG_DATA_HOME/heli
  else
    deps=${HOME:?heli_deps: HOME is not set (set HELI_DEPS)}/.local/share/heli
  fi
  [[ $deps == /* ]] || deps=$PWD/$deps
  printf '%s\n' "${deps%/}"
}
