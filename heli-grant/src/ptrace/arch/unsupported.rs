//! No implementation: only what the portable helpers need.

pub(crate) const INSN: &[u8] = &[0];
pub(crate) const INSN_ALIGN: usize = 1;
pub(crate) const EINTR_PRONE: &[i64] = &[];
pub(crate) const EXEC: &[i64] = &[];
