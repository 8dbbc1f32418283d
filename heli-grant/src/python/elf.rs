//! Finding the `.PyRuntime` section in an ELF file, with the `object`
//! crate's ELF reader: the ELF header, the program headers (for the first
//! `PT_LOAD`) and the section headers with their name table, read from the
//! file as needed (never the whole file). Only 64-bit little-endian files
//! (x86_64, aarch64); every read is checked against the file's size, so a
//! truncated or corrupt file is an error, never a panic.
//!
//! What a file's headers say is remembered, by the file's identity
//! ([`FileId`]: device, inode and last change), for the next process that
//! maps the same file: a CPython's files are read once, not at every `PS`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{LazyLock, Mutex, PoisonError};

use heli_proc::FileId;

use object::elf::{FileHeader64, ELFCLASS64, ELFDATA2LSB, ELFMAG, PT_LOAD, SHT_NOBITS};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable};
use object::read::{ReadCache, ReadRef, StringTable};
use object::LittleEndian;

use super::cache::Cache;
use super::error::{Pep768Error, Pep768ErrorKind};

/// The section CPython puts `_PyRuntime` in.
pub(crate) const SECTION: &[u8] = b".PyRuntime";

/// What the headers of the files read so far say, by file.
static FILES: LazyLock<Mutex<Cache<FileId, Option<PyRuntimeSection>>>> =
    LazyLock::new(|| Mutex::new(Cache::new(MAX_FILES)));
/// At most this many files are remembered (a machine has a few CPythons;
/// past this, the half used least recently is forgotten).
const MAX_FILES: usize = 64;

/// Where `.PyRuntime` lies in an ELF file (a `python3.14` executable or a
/// `libpython3.14.so`), and how to find it in a process that mapped the
/// file.
///
/// # Examples
///
/// ```no_run
/// use heli_grant::PyRuntimeSection;
///
/// let lib = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libpython3.14.so.1.0");
/// if let Some(section) = PyRuntimeSection::find(lib)? {
///     // Mapped with its file offset 0 at 0x7f0000000000:
///     println!("_PyRuntime at {:#x}", section.address(0x7f00_0000_0000));
/// }
/// # Ok::<(), heli_grant::Pep768Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PyRuntimeSection {
    /// The section's virtual address (`sh_addr`).
    pub sh_addr: u64,
    /// Where its bytes are in the file (`sh_offset`).
    pub sh_offset: u64,
    /// Its size (`sh_size`).
    pub sh_size: u64,
    /// The first `PT_LOAD`'s `p_vaddr` rounded down to its `p_align`: the
    /// address that the mapping of file offset 0 corresponds to.
    pub load_base: u64,
    /// Whether the file occupies no space in the file (`SHT_NOBITS`; never
    /// for a real CPython, whose `_PyRuntime` is initialised data).
    pub nobits: bool,
}

impl PyRuntimeSection {
    /// Reads the headers of the ELF file at `path`; `None` when it has no
    /// `.PyRuntime` section.
    ///
    /// # Errors
    ///
    /// [`Io`](Pep768ErrorKind::Io) when the file cannot be read;
    /// [`Corrupt`](Pep768ErrorKind::Corrupt) when it is not an ELF file or
    /// its headers are inconsistent (truncated, out of bounds);
    /// [`Unsupported`](Pep768ErrorKind::Unsupported) for a 32-bit or
    /// big-endian file.
    pub fn find(path: &Path) -> Result<Option<PyRuntimeSection>, Pep768Error> {
        let file = File::open(path)
            .map_err(|err| Pep768Error::io(format!("cannot open {}", path.display()), err))?;
        Self::find_in(&file).map_err(|err| err.context(&format!("{}", path.display())))
    }

    /// [`find`](Self::find) on the bytes of a whole ELF file.
    ///
    /// # Errors
    ///
    /// As [`find`](Self::find).
    pub fn parse(elf: &[u8]) -> Result<Option<PyRuntimeSection>, Pep768Error> {
        Self::find_in_data(elf, SECTION)
    }

    /// [`find`](Self::find) on an open file, reading only its headers,
    /// unless a file with its identity was read before.
    pub(crate) fn find_in(file: &File) -> Result<Option<PyRuntimeSection>, Pep768Error> {
        let id = file.metadata().ok().map(|meta| FileId::of(&meta));
        if let Some(id) = id {
            let mut files = FILES.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(&found) = files.get(&id) {
                return Ok(found);
            }
        }
        let found = Self::find_in_data(&ReadCache::new(file), SECTION)?;
        if let Some(id) = id {
            let mut files = FILES.lock().unwrap_or_else(PoisonError::into_inner);
            files.insert(id, found);
        }
        Ok(found)
    }

    /// Section `name` of an open file (not remembered: for the small
    /// files of extension modules), found as [`find`](Self::find) finds
    /// `.PyRuntime`.
    pub(crate) fn find_named_in(
        file: &File,
        name: &[u8],
    ) -> Result<Option<PyRuntimeSection>, Pep768Error> {
        Self::find_in_data(&ReadCache::new(file), name)
    }

    fn find_in_data<'data, R: ReadRef<'data>>(
        data: R,
        name: &[u8],
    ) -> Result<Option<PyRuntimeSection>, Pep768Error> {
        let header = data
            .read_at::<FileHeader64<LittleEndian>>(0)
            .map_err(|()| corrupt("no ELF header"))?;
        let ident = &header.e_ident;
        if ident.magic != ELFMAG {
            return Err(corrupt("not an ELF file"));
        }
        if ident.class != ELFCLASS64 || ident.data != ELFDATA2LSB {
            return Err(Pep768Error::new(
                Pep768ErrorKind::Unsupported,
                format!(
                    "an ELF file of class {} and byte order {}: only 64-bit little-endian ones \
                     are supported",
                    ident.class.0, ident.data.0
                ),
            ));
        }
        // The rest of the identification (its version).
        let header = FileHeader64::<LittleEndian>::parse(data).map_err(bad)?;
        let endian = LittleEndian;
        if header.e_shoff.get(endian) == 0 {
            return Ok(None);
        }
        let load_base = header
            .program_headers(endian, data)
            .map_err(bad)?
            .iter()
            .find(|phdr| phdr.p_type(endian) == PT_LOAD)
            .map(|phdr| {
                let (vaddr, align) = (phdr.p_vaddr(endian), phdr.p_align(endian));
                if align > 1 {
                    vaddr - vaddr % align
                } else {
                    vaddr
                }
            })
            .ok_or_else(|| corrupt("no PT_LOAD program header"))?;
        let headers = header.section_headers(endian, data).map_err(bad)?;
        if headers.is_empty() {
            return Ok(None);
        }
        // The name table in one read: object's `sections` would read each
        // name on its own (from a file, a seek and a read per section).
        let index = header.section_strings_index(endian, data).map_err(bad)?;
        let (offset, size) = headers
            .get(index.0)
            .and_then(|names| names.file_range(endian))
            .ok_or_else(|| corrupt("section name table"))?;
        let names = data
            .read_bytes_at(offset, size)
            .map_err(|()| corrupt("section name table past the end of the file"))?;
        let sections = SectionTable::<FileHeader64<LittleEndian>, &[u8]>::new(
            headers,
            StringTable::new(names, 0, size),
        );
        let Some((_, section)) = sections.section_by_name(endian, name) else {
            return Ok(None);
        };
        let found = PyRuntimeSection {
            sh_addr: section.sh_addr(endian),
            sh_offset: section.sh_offset(endian),
            sh_size: section.sh_size(endian),
            load_base,
            nobits: section.sh_type(endian) == SHT_NOBITS,
        };
        if found.sh_addr < load_base {
            return Err(corrupt(&format!(
                "{} at {:#x}, below the first PT_LOAD ({load_base:#x})",
                String::from_utf8_lossy(name),
                found.sh_addr
            )));
        }
        Ok(Some(found))
    }

    /// The section's address in a process that mapped the file's offset 0
    /// at `mapping_start`.
    pub fn address(&self, mapping_start: u64) -> u64 {
        mapping_start.wrapping_add(self.sh_addr.wrapping_sub(self.load_base))
    }

    /// The first `len` bytes of the section as the file holds them (its
    /// initial value: for `_PyRuntime`, the `_Py_DebugOffsets` CPython was
    /// built with).
    ///
    /// # Errors
    ///
    /// [`Io`](Pep768ErrorKind::Io) when the file cannot be read,
    /// [`Corrupt`](Pep768ErrorKind::Corrupt) when the section is shorter or
    /// lies outside the file.
    pub fn read_initial_bytes(&self, path: &Path, len: usize) -> Result<Vec<u8>, Pep768Error> {
        let file = File::open(path)
            .map_err(|err| Pep768Error::io(format!("cannot open {}", path.display()), err))?;
        if self.nobits || (len as u64) > self.sh_size {
            return Err(corrupt(&format!(
                ".PyRuntime holds {} bytes in the file, not {len}",
                if self.nobits { 0 } else { self.sh_size }
            )));
        }
        let size = file
            .metadata()
            .map_err(|err| Pep768Error::io(format!("cannot stat {}", path.display()), err))?
            .len();
        if self
            .sh_offset
            .checked_add(len as u64)
            .is_none_or(|end| end > size)
        {
            return Err(corrupt(&format!(
                ".PyRuntime ({len} bytes at {:#x}) past the end of the file ({size} bytes)",
                self.sh_offset
            )));
        }
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, self.sh_offset)
            .map_err(|err| Pep768Error::io("cannot read the .PyRuntime".to_owned(), err))?;
        Ok(bytes)
    }
}

/// An error of the `object` crate's ELF reader: a corrupt file (or one that
/// could not be read: the reader does not tell them apart).
fn bad(err: object::read::Error) -> Pep768Error {
    corrupt(&err.to_string())
}

fn corrupt(what: &str) -> Pep768Error {
    Pep768Error::new(Pep768ErrorKind::Corrupt, format!("bad ELF file: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF file: header, one PT_LOAD, sections "" and
    /// `.PyRuntime` and the name table.
    fn tiny(vaddr: u64, align: u64, sh_addr: u64) -> Vec<u8> {
        let names = b"\0.PyRuntime\0.shstrtab\0";
        let phoff = 64u64;
        let names_at = phoff + 56;
        let shoff = (names_at + names.len() as u64 + 7) & !7;
        let mut elf = vec![0u8; shoff as usize + 3 * 64];
        elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        elf[32..40].copy_from_slice(&phoff.to_le_bytes());
        elf[40..48].copy_from_slice(&shoff.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[58..60].copy_from_slice(&64u16.to_le_bytes());
        elf[60..62].copy_from_slice(&3u16.to_le_bytes());
        elf[62..64].copy_from_slice(&2u16.to_le_bytes());
        let ph = phoff as usize;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        elf[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
        elf[ph + 48..ph + 56].copy_from_slice(&align.to_le_bytes());
        elf[names_at as usize..names_at as usize + names.len()].copy_from_slice(names);
        let sh = |i: usize| shoff as usize + 64 * i;
        let s1 = sh(1);
        elf[s1..s1 + 4].copy_from_slice(&1u32.to_le_bytes());
        elf[s1 + 4..s1 + 8].copy_from_slice(&1u32.to_le_bytes());
        elf[s1 + 16..s1 + 24].copy_from_slice(&sh_addr.to_le_bytes());
        elf[s1 + 32..s1 + 40].copy_from_slice(&760u64.to_le_bytes());
        let s2 = sh(2);
        elf[s2..s2 + 4].copy_from_slice(&12u32.to_le_bytes());
        elf[s2 + 24..s2 + 32].copy_from_slice(&names_at.to_le_bytes());
        elf[s2 + 32..s2 + 40].copy_from_slice(&(names.len() as u64).to_le_bytes());
        elf
    }

    #[test]
    fn finds_the_section_and_rounds_the_load_base() {
        let elf = tiny(0x1_0000 + 0x234, 0x1_0000, 0x5_0000);
        let section = PyRuntimeSection::parse(&elf).unwrap().unwrap();
        assert_eq!(section.load_base, 0x1_0000);
        assert_eq!(section.sh_addr, 0x5_0000);
        assert_eq!(section.address(0x7f00_0001_0000), 0x7f00_0005_0000);
        // No alignment: no rounding.
        let elf = tiny(0x400, 0, 0x5_0000);
        assert_eq!(
            PyRuntimeSection::parse(&elf).unwrap().unwrap().load_base,
            0x400
        );
    }

    #[test]
    fn a_file_is_read_again_once_it_is_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libpython3.14.so");
        let find = |path: &Path| {
            PyRuntimeSection::find_in(&File::open(path).unwrap())
                .unwrap()
                .map(|section| section.sh_addr)
        };
        std::fs::write(&path, tiny(0, 0x1000, 0x5000)).unwrap();
        assert_eq!(find(&path), Some(0x5000));
        // Remembered: the answer comes without reading the file (opened
        // for writing only, it cannot be read; opening it so changes
        // nothing of its identity).
        let unreadable = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let found = PyRuntimeSection::find_in(&unreadable).unwrap();
        assert_eq!(found.map(|section| section.sh_addr), Some(0x5000));
        // Another file of the same contents is another file: read.
        let copy = dir.path().join("copy");
        std::fs::copy(&path, &copy).unwrap();
        let copy = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        assert!(PyRuntimeSection::find_in(&copy).is_err());
        // Rewritten in place (the same inode), another size.
        let mut other = tiny(0, 0x1000, 0x6000);
        other.push(0);
        std::fs::write(&path, &other).unwrap();
        assert_eq!(find(&path), Some(0x6000));
        // Replaced by another file (renamed over it).
        let new = dir.path().join("new");
        let mut none = tiny(0, 0x1000, 0x7000);
        let at = none.windows(10).position(|w| w == SECTION).unwrap();
        none[at + 1] = b'X';
        std::fs::write(&new, &none).unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert_eq!(find(&path), None);
        // A file that is not ELF: an error each time, not remembered.
        std::fs::write(&path, b"not an ELF file").unwrap();
        assert!(PyRuntimeSection::find_in(&File::open(&path).unwrap()).is_err());
        assert!(PyRuntimeSection::find_in(&File::open(&path).unwrap()).is_err());
    }

    #[test]
    fn no_section_is_none() {
        let mut elf = tiny(0, 0x1000, 0x5000);
        let at = elf.windows(10).position(|w| w == SECTION).unwrap();
        elf[at + 1] = b'X';
        assert_eq!(PyRuntimeSection::parse(&elf).unwrap(), None);
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let elf = tiny(0, 0x1000, 0x5000);
        for len in 0..elf.len() {
            assert!(PyRuntimeSection::parse(&elf[..len]).is_err(), "{len} bytes");
        }
        // Every byte set to 0xff in turn: an answer or an error, no panic.
        for i in 0..elf.len() {
            let mut bad = elf.clone();
            bad[i] = 0xff;
            let _ = PyRuntimeSection::parse(&bad);
            bad[i] = 0x80;
            let _ = PyRuntimeSection::parse(&bad);
        }
        let mut bad = elf.clone();
        bad[4] = 1;
        assert_eq!(
            PyRuntimeSection::parse(&bad).unwrap_err().kind(),
            Pep768ErrorKind::Unsupported
        );
        assert_eq!(
            PyRuntimeSection::parse(b"#!/bin/sh\n").unwrap_err().kind(),
            Pep768ErrorKind::Corrupt
        );
    }
}
