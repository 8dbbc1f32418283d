//! `_Py_DebugOffsets`: the table at the start of `_PyRuntime` that tells an
//! outside reader where CPython keeps what.
//!
//! Only the *order* of the fields is fixed per minor version; every value is
//! read from the target. Each field is a little-endian `u64` (the 8-byte
//! cookie counts as one), so a field's byte position is 8 times its index in
//! [`LAYOUT_3_14`].

use std::fmt;

use super::error::{Pep768Error, Pep768ErrorKind};
use super::version::PyVersion;

/// The cookie that starts `_Py_DebugOffsets`.
pub(crate) const COOKIE: &[u8; 8] = b"xdebugpy";

/// The fields of CPython 3.14's `_Py_DebugOffsets`, group by group, in the
/// order of `Include/internal/pycore_debug_offsets.h`.
pub(crate) const LAYOUT_3_14: &[(&str, &[&str])] = &[
    ("header", &["cookie", "version", "free_threaded"]),
    (
        "runtime_state",
        &["size", "finalizing", "interpreters_head"],
    ),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "threads_main",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
            "code_object_generation",
            "tlbc_generation",
        ],
    ),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ],
    ),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
            "stackpointer",
            "tlbc_index",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
            "co_tlbc",
        ],
    ),
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    (
        "unicode_object",
        &["size", "state", "length", "asciiobject_size"],
    ),
    ("gc", &["size", "collecting"]),
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    (
        "debugger_support",
        &[
            "eval_breaker",
            "remote_debugger_support",
            "remote_debugging_enabled",
            "debugger_pending_call",
            "debugger_script_path",
            "debugger_script_path_size",
        ],
    ),
];

/// The byte position of `group.field` in the 3.14 layout.
fn position(group: &str, field: &str) -> Option<usize> {
    let mut index = 0;
    for (name, fields) in LAYOUT_3_14 {
        if *name == group {
            return fields
                .iter()
                .position(|f| *f == field)
                .map(|i| 8 * (index + i));
        }
        index += fields.len();
    }
    None
}

/// The size of the 3.14 layout, in bytes (760).
#[cfg(test)]
fn layout_size() -> usize {
    8 * LAYOUT_3_14
        .iter()
        .map(|(_, fields)| fields.len())
        .sum::<usize>()
}

/// A target's `_Py_DebugOffsets`, validated: CPython 3.14 (final release),
/// with the GIL (not free-threaded), and self-consistent.
///
/// The raw values are kept and can be looked up by group and field name, as
/// CPython names them ([`get`](Self::get)); heli reads every offset it uses
/// from here, never from a table of its own.
///
/// # Examples
///
/// ```no_run
/// use heli_grant::{DebugOffsets, PyRuntimeSection};
///
/// let python = std::path::Path::new("/usr/bin/python3.14");
/// let section = PyRuntimeSection::find(python)?.expect("a CPython with .PyRuntime");
/// let offsets = DebugOffsets::parse(&section.read_initial_bytes(python, DebugOffsets::SIZE)?)?;
/// println!("CPython {}: threads_head at {:#x}", offsets.version(),
///          offsets.get("interpreter_state", "threads_head").unwrap());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DebugOffsets {
    raw: Vec<u8>,
    version: PyVersion,
}

impl fmt::Debug for DebugOffsets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebugOffsets")
            .field("version", &self.version)
            .field("size", &self.raw.len())
            .finish_non_exhaustive()
    }
}

impl DebugOffsets {
    /// The size of CPython 3.14's `_Py_DebugOffsets`: 95 fields of 8 bytes.
    pub const SIZE: usize = 760;

    /// The bytes it was parsed from.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Validates and decodes the first [`SIZE`](Self::SIZE) bytes of a
    /// `_PyRuntime` (more are ignored; fewer are enough to tell the version).
    ///
    /// # Errors
    ///
    /// - [`NotPython`](Pep768ErrorKind::NotPython): no `xdebugpy` cookie;
    /// - [`TooOld`](Pep768ErrorKind::TooOld): a CPython before 3.14 (3.13
    ///   has the cookie and another layout);
    /// - [`UnknownLayout`](Pep768ErrorKind::UnknownLayout): a later
    ///   version, or a 3.14 pre-release, whose layout may differ;
    /// - [`FreeThreaded`](Pep768ErrorKind::FreeThreaded): a free-threaded
    ///   build;
    /// - [`Corrupt`](Pep768ErrorKind::Corrupt): too short, or offsets that
    ///   contradict each other (they would point outside their structures).
    pub fn parse(bytes: &[u8]) -> Result<DebugOffsets, Pep768Error> {
        if bytes.len() < 16 {
            return Err(Pep768Error::new(
                Pep768ErrorKind::Corrupt,
                format!(
                    "_Py_DebugOffsets: {} bytes, too short for a header",
                    bytes.len()
                ),
            ));
        }
        if &bytes[..8] != COOKIE {
            return Err(Pep768Error::new(
                Pep768ErrorKind::NotPython,
                format!(
                    "_PyRuntime does not start with the cookie \"xdebugpy\" (found {:?}): not a \
                     CPython 3.13 or later",
                    String::from_utf8_lossy(&bytes[..8])
                ),
            ));
        }
        let version = PyVersion::from_hex(u64_at(bytes, 8));
        check_version(version)?;
        if bytes.len() < 24 || u64_at(bytes, 16) != 0 {
            return Err(Pep768Error::new(
                Pep768ErrorKind::FreeThreaded,
                format!(
                    "the target is a free-threaded build of CPython {version} (python{}.{}t), \
                     which heli does not support yet",
                    version.major, version.minor
                ),
            )
            .with_version(version));
        }
        if bytes.len() < Self::SIZE {
            return Err(Pep768Error::new(
                Pep768ErrorKind::Corrupt,
                format!(
                    "_Py_DebugOffsets of CPython {version}: {} bytes, not {}",
                    bytes.len(),
                    Self::SIZE
                ),
            )
            .with_version(version));
        }
        let offsets = DebugOffsets {
            raw: bytes[..Self::SIZE].to_vec(),
            version,
        };
        offsets.typed()?;
        Ok(offsets)
    }

    /// The target's CPython version.
    pub fn version(&self) -> PyVersion {
        self.version
    }

    /// The value of field `field` of group `group` (CPython's names, such
    /// as `("thread_state", "native_thread_id")`); `None` for a name the
    /// 3.14 layout does not have. The cookie reads as its bytes.
    pub fn get(&self, group: &str, field: &str) -> Option<u64> {
        position(group, field).map(|at| u64_at(&self.raw, at))
    }

    /// Where `group.field` lies in 3.14's `_Py_DebugOffsets`, in bytes from
    /// its start (derived from the order of the fields).
    pub fn position(group: &str, field: &str) -> Option<usize> {
        position(group, field)
    }

    /// Every field: group, name, byte position and value, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &'static str, usize, u64)> + '_ {
        LAYOUT_3_14
            .iter()
            .flat_map(|(group, fields)| fields.iter().map(move |field| (*group, *field)))
            .enumerate()
            .map(|(i, (group, field))| (group, field, 8 * i, u64_at(&self.raw, 8 * i)))
    }

    /// The offsets heli uses, checked against each other.
    pub(crate) fn typed(&self) -> Result<Offsets, Pep768Error> {
        let get =
            |group: &str, field: &str| self.get(group, field).expect("a field of the 3.14 layout");
        let o = Offsets {
            interpreters_head: get("runtime_state", "interpreters_head"),
            runtime_size: get("runtime_state", "size"),
            interp: InterpOffsets {
                size: get("interpreter_state", "size"),
                id: get("interpreter_state", "id"),
                next: get("interpreter_state", "next"),
                threads_head: get("interpreter_state", "threads_head"),
                threads_main: get("interpreter_state", "threads_main"),
            },
            tstate: ThreadOffsets {
                size: get("thread_state", "size"),
                next: get("thread_state", "next"),
                current_frame: get("thread_state", "current_frame"),
                thread_id: get("thread_state", "thread_id"),
                native_thread_id: get("thread_state", "native_thread_id"),
                datastack_chunk: get("thread_state", "datastack_chunk"),
            },
            frame: FrameOffsets {
                size: get("interpreter_frame", "size"),
                previous: get("interpreter_frame", "previous"),
                executable: get("interpreter_frame", "executable"),
                instr_ptr: get("interpreter_frame", "instr_ptr"),
                owner: get("interpreter_frame", "owner"),
            },
            code: CodeOffsets {
                size: get("code_object", "size"),
                filename: get("code_object", "filename"),
                name: get("code_object", "name"),
                qualname: get("code_object", "qualname"),
                linetable: get("code_object", "linetable"),
                firstlineno: get("code_object", "firstlineno"),
                co_code_adaptive: get("code_object", "co_code_adaptive"),
            },
            ob_type: get("pyobject", "ob_type"),
            tp_name: get("type_object", "tp_name"),
            bytes: BytesOffsets {
                size: get("bytes_object", "size"),
                ob_size: get("bytes_object", "ob_size"),
                ob_sval: get("bytes_object", "ob_sval"),
            },
            unicode: UnicodeOffsets {
                size: get("unicode_object", "size"),
                state: get("unicode_object", "state"),
                length: get("unicode_object", "length"),
                asciiobject_size: get("unicode_object", "asciiobject_size"),
            },
            gil: GilOffsets::from_interpreter_state(
                get("interpreter_state", "size"),
                get("interpreter_state", "ceval_gil"),
                get("interpreter_state", "gil_runtime_state"),
                get("interpreter_state", "gil_runtime_state_locked"),
                get("interpreter_state", "gil_runtime_state_holder"),
            ),
            debugger: DebuggerOffsets {
                eval_breaker: get("debugger_support", "eval_breaker"),
                support: get("debugger_support", "remote_debugger_support"),
                enabled: get("debugger_support", "remote_debugging_enabled"),
                pending_call: get("debugger_support", "debugger_pending_call"),
                script_path: get("debugger_support", "debugger_script_path"),
                script_path_size: get("debugger_support", "debugger_script_path_size"),
            },
        };
        o.check().map_err(|what| {
            Pep768Error::new(
                Pep768ErrorKind::Corrupt,
                format!(
                    "_Py_DebugOffsets of CPython {} contradict themselves ({what}): \
                     memory corrupt, or a layout heli does not know",
                    self.version
                ),
            )
            .with_version(self.version)
        })?;
        Ok(o)
    }
}

/// Refuses every version but a final 3.14.
fn check_version(version: PyVersion) -> Result<(), Pep768Error> {
    let (kind, message) = match (version.major, version.minor) {
        (3, 14) if version.is_final() => return Ok(()),
        (3, 14) => (
            Pep768ErrorKind::UnknownLayout,
            format!(
                "the target runs CPython {version}, a pre-release whose _Py_DebugOffsets layout \
                 may differ from 3.14's final one: use a final 3.14 release"
            ),
        ),
        (major, minor) if (major, minor) < (3, 14) => (
            Pep768ErrorKind::TooOld,
            format!(
                "the target runs CPython {version}: remote execution (PEP 768) and heli's stack \
                 dumps need CPython 3.14"
            ),
        ),
        _ => (
            Pep768ErrorKind::UnknownLayout,
            format!(
                "the target runs CPython {version}, newer than the 3.14 whose _Py_DebugOffsets \
                 layout heli knows"
            ),
        ),
    };
    Err(Pep768Error::new(kind, message).with_version(version))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The offsets heli reads, by structure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Offsets {
    pub(crate) runtime_size: u64,
    pub(crate) interpreters_head: u64,
    pub(crate) interp: InterpOffsets,
    pub(crate) tstate: ThreadOffsets,
    pub(crate) frame: FrameOffsets,
    pub(crate) code: CodeOffsets,
    pub(crate) ob_type: u64,
    pub(crate) tp_name: u64,
    pub(crate) bytes: BytesOffsets,
    pub(crate) unicode: UnicodeOffsets,
    /// Where the GIL tells who holds it; `None` when the offsets do not
    /// say (they contradict each other).
    pub(crate) gil: Option<GilOffsets>,
    pub(crate) debugger: DebuggerOffsets,
}

/// Where an interpreter's GIL is and who holds it.
///
/// An interpreter points (`ceval.gil`) at the GIL it uses: its own
/// (`_gil`, a `struct _gil_runtime_state`), or the main interpreter's when
/// it shares it. In that structure, `locked` (an `int`: 1 while held) and
/// `last_holder` (the `PyThreadState *` that holds it or held it last) are
/// where the debug offsets put `_gil.locked` and `_gil.last_holder`, less
/// where they put `_gil`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GilOffsets {
    /// The pointer to the GIL used, in the interpreter state.
    pub(crate) ceval_gil: u64,
    /// `locked`, in the GIL's structure.
    pub(crate) locked: u64,
    /// `last_holder`, in the GIL's structure.
    pub(crate) holder: u64,
}

impl GilOffsets {
    /// From the interpreter state's offsets, if they agree with each other.
    fn from_interpreter_state(
        size: u64,
        ceval_gil: u64,
        gil: u64,
        locked: u64,
        holder: u64,
    ) -> Option<GilOffsets> {
        let inside =
            |offset: u64, width: u64| offset.checked_add(width).is_some_and(|end| end <= size);
        let relative = |field: u64| field.checked_sub(gil).filter(|&at| at < 256);
        let offsets = GilOffsets {
            ceval_gil,
            locked: relative(locked)?,
            holder: relative(holder)?,
        };
        (gil != 0
            && inside(ceval_gil, 8)
            && inside(locked, 4)
            && inside(holder, 8)
            && offsets.locked.abs_diff(offsets.holder) >= 4)
            .then_some(offsets)
    }

    /// How many bytes of the GIL's structure hold both fields.
    pub(crate) fn span(&self) -> u64 {
        (self.locked + 4).max(self.holder + 8)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct InterpOffsets {
    pub(crate) size: u64,
    pub(crate) id: u64,
    pub(crate) next: u64,
    pub(crate) threads_head: u64,
    pub(crate) threads_main: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ThreadOffsets {
    pub(crate) size: u64,
    pub(crate) next: u64,
    pub(crate) current_frame: u64,
    pub(crate) thread_id: u64,
    pub(crate) native_thread_id: u64,
    pub(crate) datastack_chunk: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameOffsets {
    pub(crate) size: u64,
    pub(crate) previous: u64,
    pub(crate) executable: u64,
    pub(crate) instr_ptr: u64,
    pub(crate) owner: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct CodeOffsets {
    pub(crate) size: u64,
    pub(crate) filename: u64,
    pub(crate) name: u64,
    pub(crate) qualname: u64,
    pub(crate) linetable: u64,
    pub(crate) firstlineno: u64,
    pub(crate) co_code_adaptive: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BytesOffsets {
    pub(crate) size: u64,
    pub(crate) ob_size: u64,
    pub(crate) ob_sval: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct UnicodeOffsets {
    pub(crate) size: u64,
    pub(crate) state: u64,
    pub(crate) length: u64,
    pub(crate) asciiobject_size: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct DebuggerOffsets {
    /// In `PyThreadState`.
    pub(crate) eval_breaker: u64,
    /// `_PyRemoteDebuggerSupport` in `PyThreadState`.
    pub(crate) support: u64,
    /// An `int` in `PyInterpreterState`.
    pub(crate) enabled: u64,
    /// An `int32_t` in `_PyRemoteDebuggerSupport`.
    pub(crate) pending_call: u64,
    /// A `char[script_path_size]` in `_PyRemoteDebuggerSupport`.
    pub(crate) script_path: u64,
    pub(crate) script_path_size: u64,
}

/// The largest structure size believed (1 MiB; `_PyRuntimeState` is about
/// 310 KiB on 3.14).
pub(super) const MAX_STRUCT: u64 = 1 << 20;

/// Whether `what`, `width` bytes at `offset`, lies inside a structure of
/// `size` bytes (a size of 0 or past [`MAX_STRUCT`] is not believed); the
/// error says why not.
pub(super) fn fits(what: &str, offset: u64, width: u64, size: u64) -> Result<(), String> {
    if size == 0 || size > MAX_STRUCT {
        Err(format!("{what}: structure size {size:#x}"))
    } else if offset.checked_add(width).is_none_or(|end| end > size) {
        Err(format!("{what} at {offset:#x} + {width} > size {size:#x}"))
    } else {
        Ok(())
    }
}

impl Offsets {
    /// Every offset heli uses must lie, with its width, inside its
    /// structure; the error names the first one that does not.
    fn check(&self) -> Result<(), String> {
        fits(
            "runtime_state.interpreters_head",
            self.interpreters_head,
            8,
            self.runtime_size,
        )?;
        let i = &self.interp;
        for (name, off) in [
            ("id", i.id),
            ("next", i.next),
            ("threads_head", i.threads_head),
            ("threads_main", i.threads_main),
        ] {
            fits(&format!("interpreter_state.{name}"), off, 8, i.size)?;
        }
        fits(
            "debugger_support.remote_debugging_enabled",
            self.debugger.enabled,
            4,
            i.size,
        )?;
        let t = &self.tstate;
        for (name, off) in [
            ("next", t.next),
            ("current_frame", t.current_frame),
            ("thread_id", t.thread_id),
            ("native_thread_id", t.native_thread_id),
            ("datastack_chunk", t.datastack_chunk),
        ] {
            fits(&format!("thread_state.{name}"), off, 8, t.size)?;
        }
        let d = &self.debugger;
        fits("debugger_support.eval_breaker", d.eval_breaker, 8, t.size)?;
        if !(2..=4096).contains(&d.script_path_size) {
            return Err(format!("debugger_script_path_size {}", d.script_path_size));
        }
        let support_size = d.script_path.saturating_add(d.script_path_size);
        fits(
            "debugger_support.debugger_pending_call",
            d.pending_call,
            4,
            support_size,
        )?;
        fits(
            "debugger_support.remote_debugger_support",
            d.support,
            support_size,
            t.size,
        )?;
        let f = &self.frame;
        if f.size > 4096 {
            return Err(format!("interpreter_frame.size {:#x}", f.size));
        }
        for (name, off) in [
            ("previous", f.previous),
            ("executable", f.executable),
            ("instr_ptr", f.instr_ptr),
        ] {
            fits(&format!("interpreter_frame.{name}"), off, 8, f.size)?;
        }
        fits("interpreter_frame.owner", f.owner, 1, f.size)?;
        let c = &self.code;
        if c.size > 4096 {
            return Err(format!("code_object.size {:#x}", c.size));
        }
        for (name, off) in [
            ("filename", c.filename),
            ("name", c.name),
            ("qualname", c.qualname),
            ("linetable", c.linetable),
        ] {
            fits(&format!("code_object.{name}"), off, 8, c.size)?;
        }
        fits("code_object.firstlineno", c.firstlineno, 4, c.size)?;
        fits(
            "code_object.co_code_adaptive",
            c.co_code_adaptive,
            0,
            c.size,
        )?;
        fits("pyobject.ob_type", self.ob_type, 8, 64)?;
        fits("type_object.tp_name", self.tp_name, 8, MAX_STRUCT)?;
        let b = &self.bytes;
        fits("bytes_object.ob_size", b.ob_size, 8, b.ob_sval)?;
        fits("bytes_object.ob_sval", b.ob_sval, 1, b.size)?;
        let u = &self.unicode;
        fits("unicode_object.length", u.length, 8, u.asciiobject_size)?;
        fits("unicode_object.state", u.state, 4, u.asciiobject_size)?;
        // A PyUnicodeObject ends with a data pointer, after the
        // PyCompactUnicodeObject that extends PyASCIIObject.
        fits(
            "unicode_object.asciiobject_size",
            u.asciiobject_size,
            8,
            u.size,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte positions and values measured on Debian's CPython 3.14.10
    /// (the project's notes on PEP 768); the tests on the real binaries
    /// check them too.
    const NOTE_3_14_10: &[(&str, &str, usize, u64)] =
        include!("../../tests/data/debug_offsets_3_14_10.rs");

    /// A `_Py_DebugOffsets` with the note's values at their positions and
    /// plausible sizes elsewhere.
    pub(crate) fn synthetic() -> Vec<u8> {
        let mut raw = vec![0u8; DebugOffsets::SIZE];
        raw[..8].copy_from_slice(COOKIE);
        let mut set = |group: &str, field: &str, value: u64| {
            let at = position(group, field).unwrap();
            raw[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        for &(group, field, _, value) in NOTE_3_14_10 {
            set(group, field, value);
        }
        set("interpreter_state", "size", 0x37248);
        set("thread_state", "size", 0x340);
        set("thread_state", "current_frame", 0x48);
        set("thread_state", "thread_id", 0x98);
        set("thread_state", "datastack_chunk", 0xe8);
        set("interpreter_frame", "size", 0x58);
        set("interpreter_frame", "previous", 0x8);
        set("interpreter_frame", "instr_ptr", 0x38);
        set("interpreter_frame", "owner", 0x4a);
        set("code_object", "size", 0xd8);
        set("code_object", "filename", 0x70);
        set("code_object", "name", 0x78);
        set("code_object", "qualname", 0x80);
        set("code_object", "linetable", 0x88);
        set("code_object", "firstlineno", 0x44);
        set("code_object", "co_code_adaptive", 0xd0);
        set("pyobject", "ob_type", 0x8);
        set("type_object", "tp_name", 0x18);
        set("bytes_object", "size", 0x28);
        set("bytes_object", "ob_size", 0x10);
        set("bytes_object", "ob_sval", 0x20);
        set("unicode_object", "size", 0x40);
        set("unicode_object", "state", 0x20);
        set("unicode_object", "length", 0x10);
        set("unicode_object", "asciiobject_size", 0x28);
        set("interpreter_state", "ceval_gil", 0x10);
        set("interpreter_state", "gil_runtime_state", 0x1e68);
        set("interpreter_state", "gil_runtime_state_locked", 0x1e78);
        set("interpreter_state", "gil_runtime_state_holder", 0x1e70);
        raw
    }

    #[test]
    fn positions_follow_from_the_order() {
        assert_eq!(layout_size(), DebugOffsets::SIZE);
        for &(group, field, at, _) in NOTE_3_14_10 {
            assert_eq!(position(group, field), Some(at), "{group}.{field}");
        }
        assert_eq!(position("header", "cookie"), Some(0));
        assert_eq!(position("thread_state", "nope"), None);
        assert_eq!(position("nope", "size"), None);
    }

    #[test]
    fn parses_the_notes_values() {
        let offsets = DebugOffsets::parse(&synthetic()).unwrap();
        assert_eq!(offsets.version().to_string(), "3.14.10");
        for &(group, field, _, value) in NOTE_3_14_10 {
            assert_eq!(offsets.get(group, field), Some(value), "{group}.{field}");
        }
        let typed = offsets.typed().unwrap();
        assert_eq!(typed.debugger.script_path_size, 512);
        let gil = GilOffsets {
            ceval_gil: 0x10,
            locked: 0x10,
            holder: 0x8,
        };
        assert_eq!(typed.gil, Some(gil));
        assert_eq!(gil.span(), 0x14);
        assert_eq!(offsets.fields().count(), 95);
    }

    #[test]
    fn refuses_other_versions_and_builds() {
        let with = |at: usize, value: u64| {
            let mut raw = synthetic();
            raw[at..at + 8].copy_from_slice(&value.to_le_bytes());
            DebugOffsets::parse(&raw).unwrap_err()
        };
        let err = with(8, 0x030D_00F0);
        assert_eq!(err.kind(), Pep768ErrorKind::TooOld);
        assert!(err.to_string().contains("3.13.0"), "{err}");
        assert_eq!(err.python_version().map(|v| v.minor), Some(13));
        let err = with(8, 0x030F_00A1);
        assert_eq!(err.kind(), Pep768ErrorKind::UnknownLayout);
        assert!(err.to_string().contains("3.15.0a1"), "{err}");
        let err = with(8, 0x030E_00C2);
        assert_eq!(err.kind(), Pep768ErrorKind::UnknownLayout);
        assert!(err.to_string().contains("3.14.0rc2"), "{err}");
        assert_eq!(with(16, 1).kind(), Pep768ErrorKind::FreeThreaded);
        // An offset past its structure.
        let at = position("debugger_support", "remote_debugging_enabled").unwrap();
        let err = with(at, 0x4000_0000);
        assert_eq!(err.kind(), Pep768ErrorKind::Corrupt);
        assert!(
            err.to_string().contains("remote_debugging_enabled"),
            "{err}"
        );
        // GIL offsets that contradict each other leave the GIL unknown,
        // and the rest readable.
        for (field, value) in [
            ("gil_runtime_state_locked", 0x1e00),
            ("gil_runtime_state_holder", 0x4000_0000),
            ("gil_runtime_state", 0),
            ("ceval_gil", u64::MAX),
        ] {
            let mut raw = synthetic();
            let at = position("interpreter_state", field).unwrap();
            raw[at..at + 8].copy_from_slice(&u64::to_le_bytes(value));
            let typed = DebugOffsets::parse(&raw).unwrap().typed().unwrap();
            assert_eq!(typed.gil, None, "{field} = {value:#x}");
        }
        let at = position("debugger_support", "debugger_script_path_size").unwrap();
        assert_eq!(with(at, 0).kind(), Pep768ErrorKind::Corrupt);
        assert_eq!(with(at, u64::MAX).kind(), Pep768ErrorKind::Corrupt);
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        let raw = synthetic();
        for len in 0..raw.len() {
            assert!(DebugOffsets::parse(&raw[..len]).is_err(), "{len} bytes");
        }
        let mut bad = raw.clone();
        bad[0] = b'y';
        assert_eq!(
            DebugOffsets::parse(&bad).unwrap_err().kind(),
            Pep768ErrorKind::NotPython
        );
        // Every single-word corruption is either accepted or refused.
        for i in 0..95 {
            let mut bad = raw.clone();
            bad[8 * i..8 * i + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            let _ = DebugOffsets::parse(&bad);
        }
    }
}
