//! Finding the `.PyRuntime` section in an ELF file, by hand from the ELF
//! specification: the ELF header, the program headers (for the first
//! `PT_LOAD`) and the section headers with their name table. Only 64-bit
//! little-endian files (x86_64, aarch64); every number read is checked
//! against the file's size, so a truncated or corrupt file is an error,
//! never a panic.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{Pep768Error, Pep768ErrorKind};

/// The section CPython puts `_PyRuntime` in.
pub(crate) const SECTION: &[u8] = b".PyRuntime";

const PT_LOAD: u32 = 1;
const SHT_NOBITS: u32 = 8;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
/// More than any real file has: bounds what a corrupt header makes us read.
const MAX_SECTIONS: u64 = 1 << 20;
const MAX_STRTAB: u64 = 64 << 20;

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
        Self::find_in(elf)
    }

    pub(crate) fn find_in<R: ReadAt + ?Sized>(
        file: &R,
    ) -> Result<Option<PyRuntimeSection>, Pep768Error> {
        let len = file.size()?;
        let ehdr = read(file, len, 0, EHDR_SIZE as u64, "ELF header")?;
        if ehdr[..4] != *b"\x7fELF" {
            return Err(corrupt("not an ELF file"));
        }
        if ehdr[4] != 2 || ehdr[5] != 1 {
            return Err(Pep768Error::new(
                Pep768ErrorKind::Unsupported,
                format!(
                    "an ELF file of class {} and byte order {}: only 64-bit little-endian ones \
                     are supported",
                    ehdr[4], ehdr[5]
                ),
            ));
        }
        let phoff = le64(&ehdr, 32);
        let shoff = le64(&ehdr, 40);
        let phentsize = u64::from(le16(&ehdr, 54));
        let mut phnum = u64::from(le16(&ehdr, 56));
        let shentsize = u64::from(le16(&ehdr, 58));
        let mut shnum = u64::from(le16(&ehdr, 60));
        let mut shstrndx = u64::from(le16(&ehdr, 62));
        if shoff == 0 {
            return Ok(None);
        }
        if shentsize < SHDR_SIZE as u64 {
            return Err(corrupt(&format!("section header size {shentsize}")));
        }
        // Extended numbering keeps the real counts in section header 0.
        if shnum == 0 || shstrndx == 0xffff || phnum == 0xffff {
            let first = read(file, len, shoff, SHDR_SIZE as u64, "section header 0")?;
            if shnum == 0 {
                shnum = le64(&first, 32);
            }
            if shstrndx == 0xffff {
                shstrndx = u64::from(le32(&first, 40));
            }
            if phnum == 0xffff {
                phnum = u64::from(le32(&first, 44));
            }
        }
        if shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
            return Err(corrupt(&format!(
                "{shnum} sections, names in section {shstrndx}"
            )));
        }
        let load_base = first_load(file, len, phoff, phentsize, phnum)?;
        let table = read(file, len, shoff, shnum * shentsize, "section headers")?;
        let header = |index: u64| {
            let at = (index * shentsize) as usize;
            &table[at..at + SHDR_SIZE]
        };
        let names = header(shstrndx);
        let (names_offset, names_size) = (le64(names, 24), le64(names, 32));
        if names_size > MAX_STRTAB || le32(names, 4) == SHT_NOBITS {
            return Err(corrupt("section name table"));
        }
        let names = read(file, len, names_offset, names_size, "section names")?;
        for index in 0..shnum {
            let section = header(index);
            let name = le32(section, 0) as usize;
            let matches = names.get(name..).is_some_and(|rest| {
                rest.starts_with(SECTION) && rest.get(SECTION.len()) == Some(&0)
            });
            if !matches {
                continue;
            }
            let found = PyRuntimeSection {
                sh_addr: le64(section, 16),
                sh_offset: le64(section, 24),
                sh_size: le64(section, 32),
                load_base,
                nobits: le32(section, 4) == SHT_NOBITS,
            };
            if found.sh_addr < load_base {
                return Err(corrupt(&format!(
                    ".PyRuntime at {:#x}, below the first PT_LOAD ({load_base:#x})",
                    found.sh_addr
                )));
            }
            return Ok(Some(found));
        }
        Ok(None)
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
        read(
            &file,
            file.size()?,
            self.sh_offset,
            len as u64,
            ".PyRuntime",
        )
    }
}

/// The first `PT_LOAD`'s `p_vaddr`, rounded down to its alignment.
fn first_load<R: ReadAt + ?Sized>(
    file: &R,
    len: u64,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
) -> Result<u64, Pep768Error> {
    if phentsize < PHDR_SIZE as u64 || phnum == 0 || phnum > MAX_SECTIONS {
        return Err(corrupt(&format!(
            "{phnum} program headers of {phentsize} bytes"
        )));
    }
    let table = read(file, len, phoff, phnum * phentsize, "program headers")?;
    table
        .chunks_exact(phentsize as usize)
        .find(|phdr| le32(phdr, 0) == PT_LOAD)
        .map(|phdr| {
            let (vaddr, align) = (le64(phdr, 16), le64(phdr, 48));
            if align > 1 {
                vaddr - vaddr % align
            } else {
                vaddr
            }
        })
        .ok_or_else(|| corrupt("no PT_LOAD program header"))
}

/// Reads `size` bytes at `offset`, after checking they lie in the file.
fn read<R: ReadAt + ?Sized>(
    file: &R,
    len: u64,
    offset: u64,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, Pep768Error> {
    match offset.checked_add(size) {
        Some(end) if end <= len && size <= MAX_STRTAB => {}
        _ => {
            return Err(corrupt(&format!(
                "{what} ({size} bytes at {offset:#x}) past the end of the file ({len} bytes)"
            )))
        }
    }
    file.read_exact_at_vec(offset, size as usize)
        .map_err(|err| Pep768Error::io(format!("cannot read the {what}"), err))
}

fn corrupt(what: &str) -> Pep768Error {
    Pep768Error::new(Pep768ErrorKind::Corrupt, format!("bad ELF file: {what}"))
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// What the parser reads from: a file, or bytes in memory.
pub(crate) trait ReadAt {
    fn size(&self) -> Result<u64, Pep768Error>;
    fn read_exact_at_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

impl ReadAt for File {
    fn size(&self) -> Result<u64, Pep768Error> {
        self.metadata()
            .map(|meta| meta.len())
            .map_err(|err| Pep768Error::io("cannot stat the ELF file".to_owned(), err))
    }

    fn read_exact_at_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> Result<u64, Pep768Error> {
        Ok(<[u8]>::len(self) as u64)
    }

    fn read_exact_at_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
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
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32..40].copy_from_slice(&phoff.to_le_bytes());
        elf[40..48].copy_from_slice(&shoff.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[58..60].copy_from_slice(&64u16.to_le_bytes());
        elf[60..62].copy_from_slice(&3u16.to_le_bytes());
        elf[62..64].copy_from_slice(&2u16.to_le_bytes());
        let ph = phoff as usize;
        elf[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
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
