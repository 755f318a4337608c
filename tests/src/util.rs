//! Small helpers the suites, the lab and xtask share: the Internet checksum
//! of hand-built frames, the root check, and polling with a deadline.
//! Needs nothing from carp-user, so xtask's default build has it too.
use std::time::{Duration, Instant};

/// RFC 1071 Internet checksum of `data` (an odd length is padded with a zero
/// byte): the one's complement of the one's complement sum. A buffer that
/// holds its own correct checksum sums to 0.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether this process runs as root (network namespaces, XDP, BPF_PROG_TEST_RUN).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Calls `done` every `every` until it returns true (then true) or `timeout`
/// has passed (then false). `done` is called at least once, and once more at
/// or after the deadline.
pub fn poll_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_checksummed_buffer_is_zero() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let mut b = vec![0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0, 0];
        assert_eq!(inet_checksum(&b), 0x220d);
        let c = inet_checksum(&b);
        b[8..10].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inet_checksum(&b), 0);
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(inet_checksum(&[0x12]), !0x1200);
    }

    #[test]
    fn poll_until_checks_at_the_deadline() {
        let mut n = 0;
        assert!(!poll_until(
            Duration::ZERO,
            Duration::from_millis(1),
            || {
                n += 1;
                false
            }
        ));
        assert_eq!(n, 1);
        assert!(poll_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || true
        ));
    }
}
