# shellcheck shell=bash
# What the scripts that install heli's dependencies share
# (scripts/install-python314.sh, scripts/vm/setup.sh): logging, retries and
# the base directory. Source it with the tag its log lines start with:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/../lib/install.sh" vm-setup
#
# It sets LOG_TAG to that tag and DEPS to the base directory, as
# scripts/lib/deps.sh says: $HELI_DEPS, else /opt/heli for root, else
# $XDG_DATA_HOME/heli or ~/.local/share/heli.

LOG_TAG=${1:?install.sh: source it with the tag of its log lines}
. "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
DEPS=$(heli_deps)

# log <words...>: one line on stderr, after [$LOG_TAG].
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
# die <words...>: logs an error and exits with status 1.
die() { log "ERROR: $*"; exit 1; }

# retry <tries> <cmd...>: exponential backoff starting at 2s.
retry() {
  local tries=$1 n=1 delay=2; shift
  until "$@"; do
    ((n >= tries)) && { log "giving up after $n attempts: $*"; return 1; }
    log "attempt $n/$tries failed: $*; retrying in ${delay}s"
    sleep "$delay"; n=$((n + 1)); delay=$((delay * 2))
  done
}
