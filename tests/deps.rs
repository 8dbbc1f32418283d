//! Where scripts/test.sh installs what the tests and benches run: the one
//! copy of scripts/lib/deps.sh's rule in this package (tests/tests.rs
//! declares it; benches/common includes it by path).

use std::path::PathBuf;

/// The directory scripts/install-python314.sh and scripts/test.sh install
/// into, as scripts/lib/deps.sh decides it: `$HELI_DEPS`, else /opt/heli
/// for root, else `$XDG_DATA_HOME/heli` or `~/.local/share/heli`.
pub(crate) fn deps_dir() -> PathBuf {
    if let Some(deps) = std::env::var_os("HELI_DEPS").filter(|d| !d.is_empty()) {
        return PathBuf::from(deps);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/opt/heli");
    }
    match std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|data| data.is_absolute())
    {
        Some(data) => data.join("heli"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/heli")
        }
    }
}
