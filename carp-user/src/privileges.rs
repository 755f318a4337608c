//! What `carp run` needs from the kernel's privilege model, checked before it
//! touches anything: capabilities, not the user id, so that it runs as root,
//! as root with a reduced bounding set (`dist/carp.service`), or as another
//! user given the capabilities (ambient, or file capabilities).
//!
//! Only what every run needs is required here; the rest is used when the
//! situation calls for it and fails there with its own error:
//!
//! | capability | for |
//! |---|---|
//! | `CAP_NET_ADMIN` | attaching XDP and TC programs, rtnetlink (holder device, VIPs, unicast filter), ctnetlink, writing `/proc/sys/net/ipv4/conf/*/arp_*` |
//! | `CAP_NET_RAW` | the AF_PACKET sender (adverts, gratuitous ARP), the raw protocol-240 sync socket, `SO_BINDTODEVICE` |
//! | `CAP_BPF` | loading the programs, creating maps, pinning (kernels before 5.8 have no `CAP_BPF`: `CAP_SYS_ADMIN` stands for it) |
//! | `CAP_PERFMON` | the verifier refuses `carp_xdp` without it ("pointer arithmetic with it prohibited for !root": a loader without `perfmon_capable()` gets the Spectre v1 restrictions); `CAP_SYS_ADMIN` stands for it |
//! | `CAP_SYS_ADMIN` (optional) | mounting a bpffs at `node.bpffs` when none is mounted there |
//! | `CAP_SYS_NICE` (optional) | the election thread's nice -5 (a warning without it) |

use caps::{CapSet, Capability};

/// Capabilities `carp run` cannot start without: each one, or a list of
/// alternatives any of which will do.
const REQUIRED: &[&[Capability]] = &[
    &[Capability::CAP_NET_ADMIN],
    &[Capability::CAP_NET_RAW],
    &[Capability::CAP_BPF, Capability::CAP_SYS_ADMIN],
    &[Capability::CAP_PERFMON, Capability::CAP_SYS_ADMIN],
];

/// `carp run` lacks effective capabilities; each requirement it misses is
/// named by its first alternative.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "carp run needs root, or the capabilities CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and \
     CAP_PERFMON (CAP_SYS_ADMIN stands for the last two); missing: {}",
    names(.0)
)]
pub struct MissingCapabilities(pub Vec<Capability>);

fn names(caps: &[Capability]) -> String {
    caps.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the calling thread's effective set against what `carp run` needs.
pub fn check_run() -> Result<(), MissingCapabilities> {
    let effective = match caps::read(None, CapSet::Effective) {
        Ok(set) => set,
        // capget(2) does not fail for the calling thread; if it did, the
        // kernel's own EPERMs will say what is missing.
        Err(_) => return Ok(()),
    };
    check(|c| effective.contains(&c))
}

/// [`check_run`] over any set of held capabilities.
fn check(has: impl Fn(Capability) -> bool) -> Result<(), MissingCapabilities> {
    let missing: Vec<Capability> = REQUIRED
        .iter()
        .filter(|alternatives| !alternatives.iter().any(|&c| has(c)))
        .map(|alternatives| alternatives[0])
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCapabilities(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    #[test]
    fn everything_held_passes() {
        assert_eq!(check(|_| true), Ok(()));
    }

    #[test]
    fn nothing_held_names_each_requirement_once() {
        let err = check(|_| false).unwrap_err();
        assert_eq!(
            err.0,
            vec![CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON]
        );
        assert_eq!(
            err.to_string(),
            "carp run needs root, or the capabilities CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and \
             CAP_PERFMON (CAP_SYS_ADMIN stands for the last two); \
             missing: CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON"
        );
    }

    #[test]
    fn sys_admin_stands_for_bpf_and_perfmon() {
        let held = [CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN];
        assert_eq!(check(|c| held.contains(&c)), Ok(()));
        let held = [CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON];
        assert_eq!(check(|c| held.contains(&c)), Ok(()));
        // Measured: with CAP_BPF alone the verifier refuses carp_xdp.
        let held = [CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF];
        assert_eq!(
            check(|c| held.contains(&c)),
            Err(MissingCapabilities(vec![CAP_PERFMON]))
        );
    }
}
