//! The granter the running kernel needs, chosen at run time.

use std::io;

use heli_core::{Deadline, Granter, ProcessId};
use log::{info, warn};

use crate::scope::PtraceScope;
use crate::wait::ChildWaits;

use super::names::names;
use super::noop::NoopGranter;
use super::yama::{GrantMethod, YamaGranter};

/// One of the granters, chosen at run time; a [`Granter`] by delegation.
///
/// | `ptrace_scope` | granter | why |
/// |---|---|---|
/// | no Yama, 0 | [`NoopGranter`] | any process of the user may attach |
/// | 1 | [`YamaGranter`] | the target must name the client |
/// | 2, 3 | [`NoopGranter`], with a warning | `PR_SET_PTRACER` changes nothing there; only `CAP_SYS_PTRACE` (2) or nobody (3) may attach |
///
/// # Examples
///
/// ```
/// use heli_core::{Deadline, Granter, ProcessId};
/// use heli_grant::{AutoGranter, ChildWaits, GranterChoice, PtraceScope};
///
/// let granter = AutoGranter::for_scope(PtraceScope::Restricted, ChildWaits::default());
/// assert_eq!(granter.name(), "yama");
/// let forced = AutoGranter::choose("noop".parse::<GranterChoice>()?, ChildWaits::default())?;
/// assert_eq!(forced.name(), "noop");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub enum AutoGranter {
    /// Nothing to grant.
    Noop(NoopGranter),
    /// `prctl(PR_SET_PTRACER)` injected into the target.
    Yama(YamaGranter),
}

/// Which granter to use: the one the kernel needs, or a forced one (for
/// tests, or a `--granter` option). Parses from and displays as `auto`,
/// `noop`, `yama`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GranterChoice {
    /// The one the running kernel's `ptrace_scope` needs.
    #[default]
    Auto,
    /// [`NoopGranter`], whatever the kernel.
    Noop,
    /// [`YamaGranter`], whatever the kernel.
    Yama,
}

/// The granter the running kernel needs; see [`AutoGranter`].
///
/// # Errors
///
/// When Yama's setting cannot be read.
pub fn auto(waits: ChildWaits) -> io::Result<AutoGranter> {
    AutoGranter::choose(GranterChoice::Auto, waits)
}

impl AutoGranter {
    /// The granter for `scope`; logs which, and why.
    pub fn for_scope(scope: PtraceScope, waits: ChildWaits) -> AutoGranter {
        match scope {
            PtraceScope::Restricted => {
                info!("{}", scope.explain());
                AutoGranter::Yama(YamaGranter::new(waits))
            }
            PtraceScope::AdminOnly | PtraceScope::NoAttach => {
                warn!("{}", scope.explain());
                AutoGranter::Noop(NoopGranter)
            }
            _ => {
                info!("{}", scope.explain());
                AutoGranter::Noop(NoopGranter)
            }
        }
    }

    /// The granter `choice` names, reading the kernel's setting for
    /// [`GranterChoice::Auto`].
    ///
    /// # Errors
    ///
    /// When Yama's setting cannot be read.
    pub fn choose(choice: GranterChoice, waits: ChildWaits) -> io::Result<AutoGranter> {
        Ok(match choice {
            GranterChoice::Auto => Self::for_scope(PtraceScope::current()?, waits),
            GranterChoice::Noop => AutoGranter::Noop(NoopGranter),
            GranterChoice::Yama => AutoGranter::Yama(YamaGranter::new(waits)),
        })
    }
}

impl AutoGranter {
    /// Has a [`YamaGranter`] grant by `method`; a [`NoopGranter`], which
    /// has nothing to run in the target, ignores it.
    pub fn with_method(self, method: GrantMethod) -> Self {
        match self {
            AutoGranter::Yama(granter) => AutoGranter::Yama(granter.method(method)),
            noop => noop,
        }
    }

    /// The grant method of a [`YamaGranter`]; `None` for a [`NoopGranter`].
    pub fn grant_method(&self) -> Option<GrantMethod> {
        match self {
            AutoGranter::Noop(_) => None,
            AutoGranter::Yama(granter) => Some(granter.grant_method()),
        }
    }
}

impl From<NoopGranter> for AutoGranter {
    fn from(granter: NoopGranter) -> Self {
        AutoGranter::Noop(granter)
    }
}

impl From<YamaGranter> for AutoGranter {
    fn from(granter: YamaGranter) -> Self {
        AutoGranter::Yama(granter)
    }
}

impl Granter for AutoGranter {
    fn name(&self) -> &str {
        match self {
            AutoGranter::Noop(granter) => granter.name(),
            AutoGranter::Yama(granter) => granter.name(),
        }
    }

    fn grant(&mut self, target: ProcessId, client: ProcessId, due: &Deadline) -> io::Result<()> {
        match self {
            AutoGranter::Noop(granter) => granter.grant(target, client, due),
            AutoGranter::Yama(granter) => granter.grant(target, client, due),
        }
    }

    fn revoke(&mut self, target: ProcessId, deadline: &Deadline) -> io::Result<()> {
        match self {
            AutoGranter::Noop(granter) => granter.revoke(target, deadline),
            AutoGranter::Yama(granter) => granter.revoke(target, deadline),
        }
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        match self {
            AutoGranter::Noop(granter) => granter.status_fields(),
            AutoGranter::Yama(granter) => granter.status_fields(),
        }
    }
}

names!(GranterChoice, "granter", [
    Auto => "auto",
    Noop => "noop",
    Yama => "yama",
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_scope() {
        let name = |scope| {
            AutoGranter::for_scope(scope, ChildWaits::default())
                .name()
                .to_owned()
        };
        assert_eq!(name(PtraceScope::NoYama), "noop");
        assert_eq!(name(PtraceScope::Classic), "noop");
        assert_eq!(name(PtraceScope::Restricted), "yama");
        assert_eq!(name(PtraceScope::AdminOnly), "noop");
        assert_eq!(name(PtraceScope::NoAttach), "noop");
    }

    #[test]
    fn parses_choices() {
        let remote = AutoGranter::choose(GranterChoice::Yama, ChildWaits::default())
            .unwrap()
            .with_method(GrantMethod::RemoteExec);
        assert_eq!(remote.grant_method(), Some(GrantMethod::RemoteExec));
        let noop = AutoGranter::from(NoopGranter).with_method(GrantMethod::Ptrace);
        assert_eq!(noop.grant_method(), None);
        let forced = AutoGranter::choose(GranterChoice::Yama, ChildWaits::default()).unwrap();
        assert_eq!(forced.name(), "yama");
        let auto = auto(ChildWaits::default()).unwrap();
        let expected = match PtraceScope::current().unwrap() {
            PtraceScope::Restricted => "yama",
            _ => "noop",
        };
        assert_eq!(auto.name(), expected);
    }
}
