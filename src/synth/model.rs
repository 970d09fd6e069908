//! The generative model (see "The model" in the [module docs](super)): its
//! parameters, drawn once from stream 0, and the draw of one row's true and
//! observed profile.

use rand_chacha::ChaCha8Rng;

use super::design::{Design, RowDesign, RowKind};
use super::normal::Normal;
use super::spec::SynthSpec;

/// Standard deviation of the group centres in latent space.
const CENTRE_SD: f64 = 1.5;
/// Standard deviation of the control centre (controls sit near the origin).
const CONTROL_CENTRE_SD: f64 = 0.1;
/// Standard deviation of a treatment's offset from its group centre.
const TREATMENT_SD: f64 = 0.35;
/// Standard deviation of a row's latent noise around its treatment.
const WITHIN_SD: f64 = 0.5;
/// Median of the feature-specific measurement noise.
const FEATURE_NOISE_SD: f64 = 0.3;
/// Log-normal spread of the feature noise levels across features.
const FEATURE_NOISE_LOG_SD: f64 = 0.3;
/// Rank of the non-linear warp.
const WARP_RANK: usize = 4;
/// Per-plate shift, relative to the batch shift.
const PLATE_SHIFT_FRACTION: f64 = 0.15;

/// Batch-effect parameters of one batch (row-major small matrices).
struct BatchEffect {
    /// Per-feature multiplicative scaling `m_b`.
    scale: Vec<f64>,
    /// Additive shift `delta_b`.
    shift: Vec<f64>,
    /// Warp read-in `V_b^T / s_x`, `WARP_RANK x features`.
    warp_in: Vec<f64>,
    /// Warp write-out `warp * s * U_b^T`, `WARP_RANK x features`.
    warp_out: Vec<f64>,
}

/// All parameters of the generative model.
pub(super) struct Model {
    features: usize,
    latent: usize,
    /// `latent x features`.
    loadings: Vec<f64>,
    /// `groups x latent`.
    group_centres: Vec<f64>,
    control_centre: Vec<f64>,
    /// `treatments x latent`.
    treatment_offsets: Vec<f64>,
    /// Group of every treatment.
    treatment_group: Vec<usize>,
    feature_noise: Vec<f64>,
    batches: Vec<BatchEffect>,
    /// `plates x features`.
    plate_shift: Vec<f64>,
    apply_warp: bool,
}

impl Model {
    pub(super) fn draw(spec: &SynthSpec, design: &Design, rng: &mut ChaCha8Rng) -> Model {
        let f = spec.features;
        let l = spec.latent_dim;
        let mut normal = Normal::default();
        let mut draw = |count: usize, sd: f64, rng: &mut ChaCha8Rng| -> Vec<f64> {
            (0..count).map(|_| sd * normal.sample(rng)).collect()
        };
        let loadings = draw(l * f, 1.0 / (l as f64).sqrt(), rng);
        let group_centres = draw(spec.groups * l, CENTRE_SD, rng);
        let control_centre = draw(l, CONTROL_CENTRE_SD, rng);
        let treatment_offsets = draw(design.treatment_group.len() * l, TREATMENT_SD, rng);
        let feature_noise: Vec<f64> = draw(f, FEATURE_NOISE_LOG_SD, rng)
            .into_iter()
            .map(|e| FEATURE_NOISE_SD * e.exp())
            .collect();

        let mean_noise_var = feature_noise.iter().map(|s| s * s).sum::<f64>() / f as f64;
        let within = (WITHIN_SD.powi(2) + TREATMENT_SD.powi(2) + mean_noise_var).sqrt();
        let total =
            (CENTRE_SD.powi(2) + WITHIN_SD.powi(2) + TREATMENT_SD.powi(2) + mean_noise_var).sqrt();

        let batches = (0..spec.batches)
            .map(|_| BatchEffect {
                scale: draw(f, spec.scale, rng).into_iter().map(f64::exp).collect(),
                shift: draw(f, spec.shift * within, rng),
                warp_in: draw(WARP_RANK * f, 1.0 / ((f as f64).sqrt() * total), rng),
                warp_out: draw(
                    WARP_RANK * f,
                    spec.warp * within / (WARP_RANK as f64).sqrt(),
                    rng,
                ),
            })
            .collect();
        let plate_shift = draw(
            design.plate_names.len() * f,
            PLATE_SHIFT_FRACTION * spec.shift * within,
            rng,
        );
        Model {
            features: f,
            latent: l,
            loadings,
            group_centres,
            control_centre,
            treatment_offsets,
            treatment_group: design.treatment_group.clone(),
            feature_noise,
            batches,
            plate_shift,
            apply_warp: spec.warp > 0.0,
        }
    }

    /// Draws one row: its true profile into `truth`, its observed one into `observed`.
    pub(super) fn row(
        &self,
        row: &RowDesign,
        rng: &mut ChaCha8Rng,
        s: &mut Scratch,
        truth: &mut [f64],
        observed: &mut [f64],
    ) {
        let (f, l) = (self.features, self.latent);
        match row.kind {
            RowKind::Control => s.z.copy_from_slice(&self.control_centre),
            RowKind::Treatment(t) => {
                let g = self.treatment_group[t];
                let centre = &self.group_centres[g * l..(g + 1) * l];
                let offset = &self.treatment_offsets[t * l..(t + 1) * l];
                for ((z, c), o) in s.z.iter_mut().zip(centre).zip(offset) {
                    *z = c + o;
                }
            }
        }
        for z in s.z.iter_mut() {
            *z += WITHIN_SD * s.normal.sample(rng);
        }
        for (x, sd) in truth.iter_mut().zip(&self.feature_noise) {
            *x = sd * s.normal.sample(rng);
        }
        for (k, &z) in s.z.iter().enumerate() {
            for (x, a) in truth.iter_mut().zip(&self.loadings[k * f..(k + 1) * f]) {
                *x += z * a;
            }
        }

        let effect = &self.batches[row.batch];
        observed.copy_from_slice(truth);
        if self.apply_warp {
            for r in 0..WARP_RANK {
                let v = &effect.warp_in[r * f..(r + 1) * f];
                let h = truth.iter().zip(v).map(|(x, v)| x * v).sum::<f64>().tanh();
                for (y, u) in observed
                    .iter_mut()
                    .zip(&effect.warp_out[r * f..(r + 1) * f])
                {
                    *y += h * u;
                }
            }
        }
        let plate_shift = &self.plate_shift[row.plate * f..(row.plate + 1) * f];
        for (((y, m), d), p) in observed
            .iter_mut()
            .zip(&effect.scale)
            .zip(&effect.shift)
            .zip(plate_shift)
        {
            *y = m * *y + d + p;
        }
    }
}

/// Per-chunk working memory.
pub(super) struct Scratch {
    z: Vec<f64>,
    normal: Normal,
}

impl Scratch {
    pub(super) fn new(latent: usize) -> Scratch {
        Scratch {
            z: vec![0.0; latent],
            normal: Normal::default(),
        }
    }
}
