//! The batch-aware Gaussian kernel.
//!
//! For a sampled row `i` and a candidate `j`, BALANS scales the squared
//! distance by batch-aware local scales: `sigma_i^(b(j))`, the distance from
//! `i` to its k-th nearest point *of j's batch*, and (symmetric form)
//! `sigma_j^(b(i))`. Because the scale is measured against the other batch,
//! a batch that is shifted far away still gets affinities of order one for
//! its nearest points — the kernel itself bridges the batch gap, which is
//! what makes the affinity an alignment signal.

use crate::method::params::KernelKind;

/// Smallest scale used, so a point with k duplicates at distance 0 does not
/// divide by zero (distances are in robust-z units of the neighbour space).
pub const SCALE_FLOOR: f64 = 1e-6;

/// Affinity of a pair at squared distance `dist2` with scales `s_i` (of the
/// sampled row against j's batch) and `s_j` (of j against i's batch).
#[inline]
pub fn affinity(kind: KernelKind, dist2: f64, s_i: f64, s_j: f64) -> f64 {
    let s_i = s_i.max(SCALE_FLOOR);
    let denom = match kind {
        KernelKind::Symmetric => s_i * s_j.max(SCALE_FLOOR),
        KernelKind::Asymmetric => s_i * s_i,
    };
    (-dist2.max(0.0) / denom).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn self_affinity_is_one() {
        assert_eq!(affinity(KernelKind::Symmetric, 0.0, 1.0, 2.0), 1.0);
        assert_eq!(affinity(KernelKind::Asymmetric, 0.0, 0.0, 0.0), 1.0);
    }

    #[test]
    fn known_values() {
        let a = affinity(KernelKind::Symmetric, 2.0, 1.0, 2.0);
        assert!((a - (-1.0f64).exp()).abs() < 1e-15);
        let b = affinity(KernelKind::Asymmetric, 4.0, 2.0, 100.0);
        assert!((b - (-1.0f64).exp()).abs() < 1e-15);
    }

    proptest! {
        #[test]
        fn bounded_symmetric_and_monotone(d2 in 0.0f64..100.0, e in 0.0f64..10.0,
                                          si in 0.01f64..10.0, sj in 0.01f64..10.0) {
            let a = affinity(KernelKind::Symmetric, d2, si, sj);
            prop_assert!((0.0..=1.0).contains(&a));
            prop_assert_eq!(a, affinity(KernelKind::Symmetric, d2, sj, si));
            prop_assert!(affinity(KernelKind::Symmetric, d2 + e, si, sj) <= a);
            // Scale invariance: scaling distances and scales together.
            let b = affinity(KernelKind::Symmetric, 4.0 * d2, 2.0 * si, 2.0 * sj);
            prop_assert!((a - b).abs() < 1e-12);
        }
    }
}
