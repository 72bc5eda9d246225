//! Giving up root for good from inside the process: the server's executor
//! starts as root in its bubblewrap (which needs root to set up) and
//! switches itself to an unprivileged user before it does anything else,
//! instead of paying for an extra program (`setpriv`) on the way to every
//! run's first command. What the switch must leave is checked afterwards,
//! not assumed. Choosing who to become is the caller's; the commands'
//! sandboxes (`sandbox`) switch users their own way.

use rustix::process::{Gid, Uid};
use rustix::thread::{self as credentials, CapabilitySet, CapabilitySets};

/// Why the process could not give up its privileges (it must not go on).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot tell how many threads run ({0}); credentials are only switched with one")]
    UnknownThreads(std::io::Error),
    #[error("{0} threads already run; credentials are only switched while there is one")]
    Threaded(usize),
    #[error("cannot {doing}: {source}")]
    Step { doing: &'static str, source: rustix::io::Errno },
    #[error("the switch did not hold: {0}")]
    NotDropped(String),
}

/// Becomes `id` (user, group and no supplementary groups) without any
/// capability — effective, permitted, inheritable, ambient or bounding —
/// and unable to gain one again (`no_new_privs`). Credentials belong to
/// threads on Linux, so this must run before the process starts any.
pub fn become_unprivileged(id: u32) -> Result<(), PrivilegeError> {
    let threads = std::fs::read_dir("/proc/self/task").map_err(PrivilegeError::UnknownThreads)?.count();
    if threads != 1 {
        return Err(PrivilegeError::Threaded(threads));
    }
    let step = |doing: &'static str| move |source| PrivilegeError::Step { doing, source };
    // The bounding set first: dropping from it takes CAP_SETPCAP, gone
    // once the user is switched.
    for cap in bounding_set() {
        credentials::remove_capability_from_bounding_set(cap).map_err(step("empty the bounding set"))?;
    }
    credentials::clear_ambient_capability_set().map_err(step("clear the ambient capabilities"))?;
    let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
    credentials::set_thread_groups(&[]).map_err(step("drop the supplementary groups"))?;
    credentials::set_thread_res_gid(gid, gid, gid).map_err(step("switch the group"))?;
    credentials::set_thread_res_uid(uid, uid, uid).map_err(step("switch the user"))?;
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    credentials::set_capabilities(None, none).map_err(step("clear the capabilities"))?;
    credentials::set_no_new_privs(true).map_err(step("set no_new_privs"))?;
    check_unprivileged(uid, gid)
}

/// The capabilities this kernel knows, as one-bit sets.
fn bounding_set() -> impl Iterator<Item = CapabilitySet> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(63)
        .min(63);
    (0..=last).map(|cap| CapabilitySet::from_bits_retain(1 << cap))
}

fn check_unprivileged(uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let not = |what: String| Err(PrivilegeError::NotDropped(what));
    if (getuid(), geteuid(), getgid(), getegid()) != (uid, uid, gid, gid) {
        return not(format!("running as {}:{} (effective {}:{})", getuid(), getgid(), geteuid(), getegid()));
    }
    if !rustix::process::getgroups().is_ok_and(|groups| groups.is_empty()) {
        return not("supplementary groups are left".into());
    }
    let left = credentials::capabilities(None).map_err(|e| PrivilegeError::NotDropped(e.to_string()))?;
    if !(left.effective | left.permitted | left.inheritable).is_empty() {
        return not(format!("capabilities left: {left:?}"));
    }
    if bounding_set().any(|cap| credentials::capability_is_in_bounding_set(cap).unwrap_or(true)) {
        return not("the bounding set is not empty".into());
    }
    if credentials::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok() {
        return not("root could be taken back".into());
    }
    if !credentials::no_new_privs().unwrap_or(false) {
        return not("no_new_privs is not set".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threaded_process_does_not_switch_users() {
        let before = (rustix::process::getuid(), credentials::capabilities(None).unwrap());
        let _other = std::thread::spawn(std::thread::park);
        let refused = become_unprivileged(65534).unwrap_err();
        assert!(matches!(refused, PrivilegeError::Threaded(n) if n > 1), "{refused}");
        assert_eq!((rustix::process::getuid(), credentials::capabilities(None).unwrap()), before);
    }
}
