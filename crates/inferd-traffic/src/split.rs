//! Choosing a target for one request: by weight, and sticky when the request carries a key.
//!
//! A keyed request hashes `salt + key` (SHA-256, the first 8 bytes) to a point on the weights'
//! line, so every replica, started separately and sharing nothing, sends a key to the same arm,
//! and a key stays on its arm while the weights do not change. The salt is the route's name, so
//! two routes split the same users independently. SHA-256 rather than a faster hash: it is
//! specified, identical on every platform and version (std's hashers are not), and already in
//! the tree; its cost (about 0.2 µs for a short key) is noise next to inference.

use sha2::{Digest, Sha256};

/// The index of the arm `point` (in `0..sum(weights)`) falls in. Arms of weight 0 never win.
fn arm_at(weights: &[u64], point: u64) -> usize {
    let mut edge = 0u64;
    for (i, w) in weights.iter().enumerate() {
        edge += w;
        if point < edge {
            return i;
        }
    }
    // Only reached when every weight is 0, which validation refuses.
    0
}

/// A stable 64-bit hash of `salt` and `key`, the same on every replica.
pub fn sticky_hash(salt: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// Picks an arm: by `key` when there is one (sticky), else by `random` (a uniform 64-bit
/// number from the caller, so this stays pure and testable).
pub fn pick(weights: &[u64], salt: &str, key: Option<&str>, random: u64) -> usize {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return 0;
    }
    let draw = match key {
        Some(k) => sticky_hash(salt, k),
        None => random,
    };
    // Multiply-shift maps the 64-bit draw onto 0..total without modulo bias worth naming.
    let point = ((u128::from(draw) * u128::from(total)) >> 64) as u64;
    arm_at(weights, point)
}

/// Whether a request is copied to a shadow taking `percent` of the traffic (`random` uniform).
pub fn sampled(percent: u64, random: u64) -> bool {
    ((u128::from(random) * 100) >> 64) < u128::from(percent.min(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    fn draws(n: usize) -> impl Iterator<Item = u64> {
        testutil::draws(n, 1)
    }

    #[test]
    fn unkeyed_requests_follow_the_weights() {
        let mut counts = [0u32; 2];
        for r in draws(20_000) {
            counts[pick(&[90, 10], "route", None, r)] += 1;
        }
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((share - 0.10).abs() < 0.015, "share {share}");
    }

    #[test]
    fn keyed_requests_follow_the_weights_across_keys() {
        let mut counts = [0u32; 3];
        for i in 0..30_000 {
            counts[pick(&[1, 1, 2], "route", Some(&format!("user-{i}")), 0)] += 1;
        }
        for (c, want) in counts.iter().zip([0.25, 0.25, 0.5]) {
            let share = f64::from(*c) / 30_000.0;
            assert!((share - want).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn a_key_always_gets_the_same_arm_whatever_the_random_draw() {
        for i in 0..200 {
            let key = format!("k{i}");
            let first = pick(&[50, 50], "ranker", Some(&key), 0);
            for r in draws(20) {
                assert_eq!(pick(&[50, 50], "ranker", Some(&key), r), first);
            }
        }
    }

    #[test]
    fn sticky_hash_is_pinned_so_replicas_and_releases_agree() {
        // Changing this value moves users between arms in running experiments.
        assert_eq!(
            sticky_hash("ranker", "user-42"),
            sticky_hash("ranker", "user-42")
        );
        let pinned = sticky_hash("r", "k");
        assert_eq!(format!("{pinned:016x}"), PINNED_R_K);
    }
    // The first 8 bytes of SHA-256("r\0k").
    const PINNED_R_K: &str = "36c782799ecb3969";

    #[test]
    fn different_routes_split_the_same_keys_independently() {
        let same = (0..2000)
            .filter(|i| {
                let k = format!("u{i}");
                pick(&[50, 50], "a", Some(&k), 0) == pick(&[50, 50], "b", Some(&k), 0)
            })
            .count();
        assert!((800..1200).contains(&same), "{same} of 2000 agree");
    }

    #[test]
    fn zero_weight_arms_never_win() {
        for r in draws(5000) {
            assert_eq!(pick(&[0, 7, 0], "x", None, r), 1);
        }
        assert_eq!(pick(&[0, 0], "x", None, 5), 0);
        assert_eq!(pick(&[3], "x", None, u64::MAX), 0);
    }

    #[test]
    fn shadow_sampling_takes_its_percent() {
        let n = draws(20_000).filter(|r| sampled(25, *r)).count();
        assert!((4700..5300).contains(&n), "{n}");
        assert!(draws(1000).all(|r| sampled(100, r)));
        assert!(!draws(1000).any(|r| sampled(0, r)));
    }
}
