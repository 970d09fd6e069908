//! Standard normal variates without `rand_distr` (rand 0.8 has no normal
//! distribution of its own).

use rand::Rng;

/// Standard normal variates by the Box–Muller transform; each pair of
/// uniforms yields two independent normals, the second kept for the next call.
#[derive(Debug, Default)]
pub(super) struct Normal {
    spare: Option<f64>,
}

impl Normal {
    pub(super) fn sample<R: Rng>(&mut self, rng: &mut R) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - U(0,1] avoids ln(0).
        let u1 = 1.0 - rng.gen::<f64>();
        let u2 = rng.gen::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}
