//! The `[method]` flags of `balans correct`: every parameter of the fit,
//! each overriding its config key.

use clap::Args;

use balans::method::params::{
    BatchScale, CorrectionSpace, IndexKind, KernelKind, NeighborSpace, Params, PlateMove,
    Retention, SamplingRule, TrustRule,
};

/// The `[method]` flags (`balans correct`; `balans apply` takes the
/// parameters from the saved model).
#[derive(Args, Debug, Clone, Default)]
pub struct MethodArgs {
    /// k of the batch-aware local scale [default: 15].
    #[arg(long)]
    pub k: Option<usize>,
    /// Strongest affinities kept per batch in each sampled row [default: 10].
    #[arg(long)]
    pub m: Option<usize>,
    /// PCA dimensions of the neighbour space [default: 50].
    #[arg(long)]
    pub neighbor_dims: Option<usize>,
    /// Neighbour space: pca, or whitened (PCA whitened on the --control rows; pca without enough controls) [default: whitened].
    #[arg(long, value_parser = parse_choice::<NeighborSpace>)]
    pub neighbor_space: Option<NeighborSpace>,
    /// Per-batch feature scaling: controls (each batch's gain per feature from its --control rows' MAD, shrunk by empirical Bayes), or none (one pooled scale) [default: controls].
    #[arg(long, value_parser = parse_choice::<BatchScale>)]
    pub batch_scale: Option<BatchScale>,
    /// Strength of the empirical-Bayes shrinkage of the batch gains: weight of a log-MAD's sampling variance (1 = James-Stein for Gaussian controls, 0 = raw gains) [default: 0.5].
    #[arg(long)]
    pub gain_shrinkage: Option<f64>,
    /// Sampling budget as a fraction of rows [default: 0.3].
    #[arg(long)]
    pub budget: Option<f64>,
    /// Minimum landmarks regardless of the budget [default: 500].
    #[arg(long)]
    pub min_landmarks: Option<usize>,
    /// Rows the sampling fit runs on: larger tables are fitted on a stratified subsample of this many rows, the other rows take the mean offset of their nearest subsample rows (0 = all rows) [default: 10000].
    #[arg(long)]
    pub fit_rows: Option<usize>,
    /// Daemon: a batch of the model with more rows than this is aligned against a seeded uniform sample of this many of its rows (its summary, in an exact index), so a plate's cost does not grow with the model (0 = every row) [default: 2000].
    #[arg(long)]
    pub summary_rows: Option<usize>,
    /// Coverage at which a row stops being a sampling priority [default: 1.0].
    #[arg(long)]
    pub coverage_target: Option<f64>,
    /// How each sampling round picks landmarks: lowest (lowest coverage first) or proportional (drawn with probability proportional to 1 / (1 + coverage)) [default: lowest].
    #[arg(long, value_parser = parse_choice::<SamplingRule>)]
    pub sampling_rule: Option<SamplingRule>,
    /// Landmarks per sampling round as a fraction of rows [default: 0.02].
    #[arg(long)]
    pub round_fraction: Option<f64>,
    /// Alignment rounds; 0 = per-plate normalisation only [default: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Alignment rounds of a plate aligned to a model by the daemon and `balans apply` (saved with --save-model); 0 = per-plate normalisation only [default: 1].
    #[arg(long)]
    pub plate_rounds: Option<usize>,
    /// Against a plate the daemon and `balans apply` align as its own batch, the `mutual` trust test's rank is at most this share of the plate's rows (the offline fit: half a batch) [default: 0.25].
    #[arg(long)]
    pub plate_mutual_share: Option<f64>,
    /// How far a plate row's landmark moves the plate onto the model (daemon, `balans apply`): trusted (by its largest trust in a model batch around it; a state no model batch holds stays put) or full (all the way once any model batch is trusted) [default: trusted].
    #[arg(long, value_parser = parse_choice::<PlateMove>)]
    pub plate_move: Option<PlateMove>,
    /// Width of the `mass` trust test (x the control-calibrated width when --control is given); 0 turns the trust test off and forces alignment, whatever the rule [default: 0.5].
    #[arg(long)]
    pub trust: Option<f64>,
    /// Neighbour rank of the own-batch scale in the `mass` trust test [default: 15].
    #[arg(long)]
    pub trust_k: Option<usize>,
    /// How the trust test measures another batch's correspondence: mutual (mutual nearest neighbours), mass (kernel mass at the `--trust` width), either (the larger), both (the smaller) [default: mutual].
    #[arg(long, value_parser = parse_choice::<TrustRule>)]
    pub trust_rule: Option<TrustRule>,
    /// Kernel form [default: symmetric].
    #[arg(long, value_parser = parse_choice::<KernelKind>)]
    pub kernel: Option<KernelKind>,
    /// Retention of row entries [default: perbatch].
    #[arg(long, value_parser = parse_choice::<Retention>)]
    pub retention: Option<Retention>,
    /// Neighbour index [default: hnsw].
    #[arg(long, value_parser = parse_choice::<IndexKind>)]
    pub index: Option<IndexKind>,
    /// Exact mode: brute-force neighbours, every row sampled (small tables).
    #[arg(long)]
    pub exact: bool,
    /// Space the daemon and `balans apply` correct a plate in (saved with --save-model): features (every varying feature, as the offline fit; the model keeps each row's corrected profile) or neighbors (the neighbour space, mapped back through the PCA loadings; a smaller model) [default: features].
    #[arg(long, value_parser = parse_choice::<CorrectionSpace>)]
    pub correction_space: Option<CorrectionSpace>,
    /// The daemon and `balans apply` measure a new batch's gains on the controls of its plates so far (pooled) instead of each plate's own (saved with --save-model) [default: false].
    #[arg(long)]
    pub pool_controls: bool,
    /// Random seed [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads, 0 = all cores [default: 0].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Parse a `[method]` enum value from the command line with the same names
/// (and error) as the config file: the enums' serde spellings.
fn parse_choice<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    T::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
}

impl MethodArgs {
    /// Write the flags given over `m` (the parameters after file and
    /// environment). Does not validate.
    pub fn apply_to(&self, m: &mut Params) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { m.$f = v; } )* };
        }
        set!(
            k,
            m,
            neighbor_dims,
            gain_shrinkage,
            budget,
            min_landmarks,
            fit_rows,
            summary_rows,
            coverage_target,
            round_fraction,
            rounds,
            plate_rounds,
            plate_mutual_share,
            trust,
            trust_k
        );
        set!(
            kernel,
            retention,
            index,
            neighbor_space,
            batch_scale,
            trust_rule,
            plate_move,
            sampling_rule,
            correction_space,
            seed,
            threads
        );
        if self.exact {
            m.exact = true;
        }
        if self.pool_controls {
            m.pool_controls = true;
        }
    }
}
