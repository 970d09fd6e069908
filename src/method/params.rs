//! Parameters of the BALANS method, with their documented defaults.
//!
//! Every field can be set from the command line, from a TOML config file
//! (same key names) or from `BALANS_*` environment variables; see
//! `config/balans.toml` for the annotated defaults and `docs/method.md` for
//! why each default is what it is.

use serde::{Deserialize, Serialize};

/// How each sparse affinity entry is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// `exp(-d^2 / (sigma_i^(b(j)) * sigma_j^(b(i))))` — self-tuning, symmetric.
    #[default]
    Symmetric,
    /// `exp(-d^2 / (sigma_i^(b(j)))^2)` — scale of the sampled row only.
    Asymmetric,
}

/// How the strongest affinities of a sampled row are retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Keep the strongest `m` entries in every batch (batch-balanced).
    #[default]
    #[serde(alias = "per-batch")]
    PerBatch,
    /// Keep the strongest `m * B` entries over all batches together.
    Global,
}

/// The space neighbours, scales and kernels are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NeighborSpace {
    /// The first `neighbor_dims` principal components.
    Pca,
    /// The same components whitened on the negative controls (falls back to
    /// `pca` without enough controls).
    #[default]
    Whitened,
}

/// How each batch's features are scaled before the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BatchScale {
    /// One pooled scale per feature for every batch.
    None,
    /// Per batch and feature, a gain measured on the negative controls
    /// (their MAD against the pooled control MAD), shrunk by empirical Bayes
    /// (no effect without controls).
    #[default]
    Controls,
}

/// How a landmark decides how far to trust another batch's correspondence
/// (the over-correction guard; `docs/method.md`, "Trust test").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrustRule {
    /// Kernel mass: batch `c`'s retained entries weighed under the
    /// landmark's own-batch scale (times the calibrated `trust` width),
    /// against its own batch's mass.
    Mass,
    /// Mutual neighbours: the affinity-weighted fraction of batch `c`'s
    /// retained entries `j` that have the landmark among their own `k`
    /// nearest rows of the landmark's batch (`d(l, j) <= sigma_j^(b(l))`;
    /// half that batch's rows when it has fewer than `2k`,
    /// `sampling::mutual_rank`). The default: scale-free, so it needs no
    /// width calibration.
    #[default]
    Mutual,
    /// The larger of the two: a correspondence is trusted when it is close
    /// *or* mutual.
    Either,
    /// The smaller of the two: close *and* mutual.
    Both,
}

/// How far a landmark of a plate the daemon (or `balans apply`) aligns to a
/// model moves the plate onto the model's rows (`docs/serve.md`, "How far
/// a plate moves").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlateMove {
    /// In proportion to the largest trust the landmark has in a model
    /// batch around it: a plate row whose state no model batch holds
    /// (trust near 0) stays near where it is, as a batch the offline fit
    /// does not trust is not moved.
    #[default]
    Trusted,
    /// All the way whenever any model batch around it is trusted at all
    /// (the trust only weighs the model batches against each other): the
    /// rule before `plate_move` existed.
    Full,
}

impl TrustRule {
    /// The rule's name, as in the config file and `--trust-rule`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustRule::Mass => "mass",
            TrustRule::Mutual => "mutual",
            TrustRule::Either => "either",
            TrustRule::Both => "both",
        }
    }
    /// Whether the rule weighs kernel mass at the `trust` width (and so
    /// needs the width calibrated).
    pub fn uses_mass(self) -> bool {
        self != TrustRule::Mutual
    }
    /// Whether the rule tests mutual neighbours.
    pub fn uses_mutual(self) -> bool {
        self != TrustRule::Mass
    }
}

/// Which rows each sampling round takes as landmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SamplingRule {
    /// The lowest-coverage rows first (seeded random tie-break).
    #[default]
    Lowest,
    /// Random rows, drawn without replacement with probability proportional
    /// to `1 / (1 + coverage)` (the reviews' "proportionately to coverage").
    Proportional,
}

/// The space the daemon computes a plate's offsets in (the offline fit
/// always corrects every feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CorrectionSpace {
    /// Every varying feature, as the offline fit: the model keeps each
    /// incorporated row's corrected (clipped, normalised) profile, `features
    /// / neighbor_dims` times the memory of the neighbour-space rows.
    #[default]
    Features,
    /// The neighbour space only: offsets are mapped back through the PCA
    /// loadings, so batch directions outside the basis stay (the smaller
    /// state of models built before 2026-12).
    Neighbors,
}

impl CorrectionSpace {
    /// The name, as in the config file and `--correction-space`.
    pub fn as_str(self) -> &'static str {
        match self {
            CorrectionSpace::Features => "features",
            CorrectionSpace::Neighbors => "neighbors",
        }
    }
}

/// Which neighbour search backs the per-batch indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// usearch HNSW (approximate); the default for large tables.
    #[default]
    Hnsw,
    /// Brute-force exact search (the oracle; O(n) per query).
    Exact,
}

/// Parameters of one BALANS fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// k of the batch-aware local scale: sigma_i^(b) is the distance from
    /// point i to the k-th nearest point of batch b (clamped to |b|).
    pub k: usize,
    /// Strongest affinities retained per batch (or `m * B` globally) in
    /// every sampled row.
    pub m: usize,
    /// Dimensions of the PCA neighbour space.
    pub neighbor_dims: usize,
    /// Plain PCA scores or control-whitened ones.
    pub neighbor_space: NeighborSpace,
    /// Per-batch control gains or one pooled scale.
    pub batch_scale: BatchScale,
    /// Strength of the empirical-Bayes shrinkage of the batch gains: the
    /// weight of a log-MAD's sampling variance in the James-Stein factor
    /// (1 = that variance as estimated for Gaussian controls, 0 = raw gains).
    pub gain_shrinkage: f64,
    /// Sampling budget as a fraction of the rows (landmarks <= budget * n).
    pub budget: f64,
    /// Minimum number of landmarks regardless of `budget` (capped at n).
    pub min_landmarks: usize,
    /// Rows the sampling fit runs on: a table with more rows is fitted on a
    /// seeded per-batch stratified subsample of this many rows, and every
    /// other row takes the mean offset of its nearest subsample rows of its
    /// batch (0 = always fit on all rows; exact mode always does).
    pub fit_rows: usize,
    /// The daemon's batch summaries (`balans serve`, `balans apply`): a
    /// batch of the model with more rows than this is represented by a
    /// seeded uniform sample of this many of its rows, in an exact index,
    /// so a plate's cost does not grow with the model (0 = every row, in
    /// the HNSW index; exact mode always uses every row).
    pub summary_rows: usize,
    /// Coverage a row needs before it stops being a sampling priority.
    pub coverage_target: f64,
    /// How each sampling round picks its landmarks.
    pub sampling_rule: SamplingRule,
    /// Rows sampled per sampling round, as a fraction of n (at least 16).
    pub round_fraction: f64,
    /// Alignment rounds (each re-indexes the corrected neighbour space);
    /// 0 = per-plate normalisation only.
    pub rounds: usize,
    /// Alignment rounds of a plate aligned to a model (`balans serve`,
    /// `balans apply`): the model stays where it is and only the plate
    /// moves, so a second round searches again from the plate's corrected
    /// position and moves it further toward the same rows. 0 = per-plate
    /// normalisation only. Default 1 (docs/serve.md, "Plate rounds").
    pub plate_rounds: usize,
    /// Width of the `mass` trust test, in units of the landmark's
    /// own-batch scale (0 = off: every batch is forced to align).
    pub trust: f64,
    /// Neighbour rank (self counted) of the own-batch scale the trust test
    /// uses: small = replicate scale.
    pub trust_k: usize,
    /// How the trust of another batch is measured.
    pub trust_rule: TrustRule,
    /// Kernel form.
    pub kernel: KernelKind,
    /// Retention rule.
    pub retention: Retention,
    /// Neighbour index.
    pub index: IndexKind,
    /// Exact mode: brute-force neighbours and every row sampled.
    pub exact: bool,
    /// The daemon's correction space (`balans serve`, `balans apply`).
    pub correction_space: CorrectionSpace,
    /// The daemon measures the gains of a batch the reference did not have
    /// on the controls of its plates so far (pooled), instead of each
    /// plate's own (gain 1 below 8 controls). Off by default: measured
    /// neutral on the semi-synthetic sets and -0.024 to +0.000 on BBBC021's
    /// splits (docs/stream_gap.md).
    pub pool_controls: bool,
    /// Against a plate the daemon aligns as its own batch, the mutual trust
    /// test's rank is at most this share of the plate's rows (the offline
    /// fit: half a batch). A row of another batch passes the test by chance
    /// with probability about rank / rows: 1/2 on a plate of under 2k rows
    /// at half, about 1/4 here, as against 0.12-0.38 (0.27 at the median
    /// week) for BBBC021's weekly batches offline (docs/serve.md, "Quality of the streamed correction").
    pub plate_mutual_share: f64,
    /// How far a plate row's landmark moves the plate onto the model:
    /// `trusted` (by its largest trust in a model batch around it) or
    /// `full` (all the way once any is trusted).
    pub plate_move: PlateMove,
    /// Random seed (sampling tie-breaks, synthetic data).
    pub seed: u64,
    /// Worker threads (0 = all cores).
    pub threads: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            k: 15,
            m: 10,
            neighbor_dims: 50,
            neighbor_space: NeighborSpace::Whitened,
            batch_scale: BatchScale::Controls,
            gain_shrinkage: 0.5,
            budget: 0.3,
            min_landmarks: 500,
            fit_rows: 10_000,
            summary_rows: 2_000,
            coverage_target: 1.0,
            sampling_rule: SamplingRule::Lowest,
            round_fraction: 0.02,
            rounds: 2,
            plate_rounds: 1,
            trust: 0.5,
            trust_k: 15,
            trust_rule: TrustRule::Mutual,
            kernel: KernelKind::Symmetric,
            retention: Retention::PerBatch,
            index: IndexKind::Hnsw,
            exact: false,
            correction_space: CorrectionSpace::Features,
            pool_controls: false,
            plate_mutual_share: 0.25,
            plate_move: PlateMove::Trusted,
            seed: 42,
            threads: 0,
        }
    }
}

impl Params {
    /// The neighbour index the fit and the daemon use: exact mode forces
    /// the brute-force oracle, whatever `index` says.
    pub fn index_kind(&self) -> IndexKind {
        if self.exact {
            IndexKind::Exact
        } else {
            self.index
        }
    }

    /// Check ranges; the message names the offending key.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.k >= 1, "parameter k must be >= 1 (got {})", self.k);
        anyhow::ensure!(self.m >= 1, "parameter m must be >= 1 (got {})", self.m);
        anyhow::ensure!(
            self.neighbor_dims >= 1,
            "parameter neighbor_dims must be >= 1 (got {})",
            self.neighbor_dims
        );
        anyhow::ensure!(
            self.budget > 0.0 && self.budget <= 1.0,
            "parameter budget must be in (0, 1] (got {})",
            self.budget
        );
        anyhow::ensure!(
            self.plate_mutual_share > 0.0 && self.plate_mutual_share <= 1.0,
            "parameter plate_mutual_share must be in (0, 1] (got {})",
            self.plate_mutual_share
        );
        anyhow::ensure!(
            self.round_fraction > 0.0 && self.round_fraction <= 1.0,
            "parameter round_fraction must be in (0, 1] (got {})",
            self.round_fraction
        );
        anyhow::ensure!(
            self.coverage_target > 0.0,
            "parameter coverage_target must be > 0 (got {})",
            self.coverage_target
        );
        anyhow::ensure!(
            self.gain_shrinkage >= 0.0 && self.gain_shrinkage.is_finite(),
            "parameter gain_shrinkage must be >= 0 (got {})",
            self.gain_shrinkage
        );
        anyhow::ensure!(
            self.trust >= 0.0 && self.trust.is_finite(),
            "parameter trust must be >= 0 (got {})",
            self.trust
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_rule_names_match_the_config_spelling() {
        for rule in [
            TrustRule::Mass,
            TrustRule::Mutual,
            TrustRule::Either,
            TrustRule::Both,
        ] {
            let json = serde_json::to_value(rule).unwrap();
            assert_eq!(json.as_str(), Some(rule.as_str()));
        }
    }

    #[test]
    fn exact_mode_forces_the_exact_index() {
        let mut p = Params::default();
        assert_eq!(p.index_kind(), IndexKind::Hnsw);
        p.exact = true;
        assert_eq!(p.index_kind(), IndexKind::Exact);
        p.index = IndexKind::Exact;
        p.exact = false;
        assert_eq!(p.index_kind(), IndexKind::Exact);
    }
}
