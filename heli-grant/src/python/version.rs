//! CPython versions: as the runtime encodes them, and as a file's name
//! tells them.

use std::fmt;
use std::path::Path;

/// A CPython version, as `PY_VERSION_HEX` encodes it.
///
/// Displays as Python does: `3.14.10`, `3.14.0a7`, `3.14.0rc1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PyVersion {
    /// 3.
    pub major: u8,
    /// 14 for 3.14.
    pub minor: u8,
    /// The patch release.
    pub micro: u8,
    /// `0xA` alpha, `0xB` beta, `0xC` release candidate, `0xF` final.
    pub level: u8,
    /// The pre-release's number (0 for a final release).
    pub serial: u8,
}

impl PyVersion {
    /// Decodes `PY_VERSION_HEX`.
    pub fn from_hex(hex: u64) -> PyVersion {
        PyVersion {
            major: (hex >> 24) as u8,
            minor: (hex >> 16) as u8,
            micro: (hex >> 8) as u8,
            level: ((hex >> 4) & 0xF) as u8,
            serial: (hex & 0xF) as u8,
        }
    }

    /// Whether it is a final release (not an alpha, beta or candidate).
    pub fn is_final(&self) -> bool {
        self.level == 0xF
    }
}

impl fmt::Display for PyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        match self.level {
            0xF => Ok(()),
            0xA => write!(f, "a{}", self.serial),
            0xB => write!(f, "b{}", self.serial),
            0xC => write!(f, "rc{}", self.serial),
            level => write!(f, "(level {level:#x}, serial {})", self.serial),
        }
    }
}

/// `(3, 13)` from names such as `python3.13`, `libpython3.13.so.1.0`.
pub(super) fn version_from_name(path: &str) -> Option<(u8, u8)> {
    let name = Path::new(path).file_name()?.to_str()?;
    let at = name.find("python")? + "python".len();
    let rest = &name[at..];
    let (major, tail) = rest.split_once('.')?;
    let minor: String = tail.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_versions() {
        assert_eq!(PyVersion::from_hex(0x030E_0AF0).to_string(), "3.14.10");
        assert_eq!(PyVersion::from_hex(0x030E_00A7).to_string(), "3.14.0a7");
        assert_eq!(PyVersion::from_hex(0x030E_00B1).to_string(), "3.14.0b1");
        assert!(PyVersion::from_hex(0x030D_00F0) < PyVersion::from_hex(0x030E_0AF0));
    }

    #[test]
    fn versions_from_names() {
        assert_eq!(version_from_name("/usr/bin/python3.13"), Some((3, 13)));
        assert_eq!(version_from_name("/x/libpython3.12.so.1.0"), Some((3, 12)));
        assert_eq!(version_from_name("/usr/bin/python3"), None);
        assert_eq!(version_from_name("/usr/bin/python"), None);
    }
}
