//! Figures of the evaluation report, drawn with `plotters` into SVG strings.
//!
//! Two kinds, both small enough to inline in an HTML page or save next to a
//! Markdown report:
//!
//! - [`scatter`]: the first two principal components of the embedding the
//!   metrics saw, one point per (sampled) row, coloured by a grouping
//!   (batch or label). A well-corrected table shows batches interleaved and
//!   labels in separate clouds.
//! - [`metric_bars`]: one horizontal bar per metric, "before" (baseline) and
//!   "after" side by side.
//!
//! Rendering needs no font files: the SVG backend writes `<text>` elements
//! and the browser lays them out.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Points drawn at most per scatter plot (a seeded sample beyond that).
pub const MAX_SCATTER_POINTS: usize = 4000;

/// Colours for groups: Tableau 10 then 10 lighter shades (cycled beyond 20).
const PALETTE: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
];

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Padded range of `v` (never empty).
fn range(v: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v.filter(|x| x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return -1.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad)..(hi + pad)
}

/// Seeded sample of at most `max` indices out of `n`, in ascending order.
pub fn sample_rows(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if n > max {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        idx.shuffle(&mut rng);
        idx.truncate(max);
        idx.sort_unstable();
    }
    idx
}

/// Scatter of 2-D points coloured by `groups` (one entry per point).
///
/// `xy` and `groups` must have the same length. Groups are listed in the
/// legend in sorted order; with more than 20 groups colours repeat and the
/// legend shows the first 20.
pub fn scatter(title: &str, xy: &[(f64, f64)], groups: &[String]) -> Result<String> {
    if xy.len() != groups.len() {
        return Err(anyhow!(
            "plot: {} points but {} group labels",
            xy.len(),
            groups.len()
        ));
    }
    let mut levels: Vec<&str> = groups.iter().map(String::as_str).collect();
    levels.sort_unstable();
    levels.dedup();
    let xr = range(xy.iter().map(|p| p.0));
    let yr = range(xy.iter().map(|p| p.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(xr, yr)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("PC1")
            .y_desc("PC2")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (li, level) in levels.iter().enumerate() {
            let c = colour(li);
            let pts = xy
                .iter()
                .zip(groups)
                .filter(|(_, g)| g.as_str() == *level)
                .map(|(&p, _)| Circle::new(p, 2, c.mix(0.7).filled()));
            let series = chart.draw_series(pts).map_err(err)?;
            if li < PALETTE.len() {
                series
                    .label(level.to_string())
                    .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 10))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One metric for [`metric_bars`]: name, value before (if any), value after.
pub(crate) type BarRow = (String, Option<f64>, Option<f64>);

/// Horizontal bars, one pair per metric: before (grey) and after (blue).
/// Values are expected in `[0, 1]`; missing values are left out.
pub fn metric_bars(title: &str, rows: &[BarRow]) -> Result<String> {
    let n = rows.len().max(1) as f64;
    let height = (60 + 26 * rows.len()).max(120) as u32;
    let before_c = RGBColor(170, 170, 170);
    let after_c = colour(0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(0)
            .build_cartesian_2d(-0.55f64..1.05f64, 0f64..n)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_y_axis()
            .x_labels(6)
            .x_label_formatter(&|v| {
                if *v < 0.0 {
                    String::new()
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (i, (name, before, after)) in rows.iter().enumerate() {
            // Row 0 at the top.
            let y0 = n - 1.0 - i as f64;
            chart
                .draw_series(std::iter::once(Text::new(
                    name.clone(),
                    (-0.53, y0 + 0.7),
                    ("sans-serif", 11),
                )))
                .map_err(err)?;
            if let Some(b) = before.filter(|v| v.is_finite()) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, y0 + 0.52), (b.clamp(-0.05, 1.05), y0 + 0.88)],
                        before_c.filled(),
                    )))
                    .map_err(err)?;
            }
            if let Some(a) = after.filter(|v| v.is_finite()) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, y0 + 0.12), (a.clamp(-0.05, 1.05), y0 + 0.48)],
                        after_c.filled(),
                    )))
                    .map_err(err)?;
            }
        }
        // Legend by hand (two swatches), so it works with rectangles.
        for (k, (label, c)) in [("before (baseline)", before_c), ("after", after_c)]
            .into_iter()
            .enumerate()
        {
            let x = 0.55 + 0.25 * k as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, n - 0.05), (x + 0.03, n - 0.3)],
                    c.filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x + 0.04, n - 0.05),
                    ("sans-serif", 10),
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_draws_one_circle_per_point_and_a_legend_entry_per_group() {
        let xy = vec![(0.0, 0.0), (1.0, 1.0), (2.0, 0.5), (0.5, 2.0)];
        let g: Vec<String> = ["a", "b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let svg = scatter("test", &xy, &g).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        // 4 points + 3 legend markers.
        assert_eq!(svg.matches("<circle").count(), 7, "{svg}");
        for label in ["a", "b", "c", "PC1", "PC2", "test"] {
            assert!(svg.contains(&format!(">\n{label}\n<")), "missing {label}");
        }
        assert!(scatter("x", &xy, &g[..2]).is_err());
    }

    #[test]
    fn bars_skip_missing_values() {
        let rows = vec![
            ("iLISI".to_string(), Some(0.2), Some(0.5)),
            ("kBET".to_string(), None, Some(0.7)),
            ("NMI".to_string(), Some(0.4), None),
        ];
        let svg = metric_bars("scores", &rows).unwrap();
        for label in ["iLISI", "kBET", "NMI", "after", "before (baseline)"] {
            assert!(svg.contains(&format!(">\n{label}\n<")), "missing {label}");
        }
        // 4 bars + background + plotting-area fill + 2 legend swatches.
        let rects = svg.matches("<rect").count();
        let empty = metric_bars("scores", &[]).unwrap().matches("<rect").count();
        assert_eq!(rects - empty, 4, "{svg}");
    }

    #[test]
    fn sample_is_seeded_sorted_and_capped() {
        let a = sample_rows(100, 10, 3);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, sample_rows(100, 10, 3));
        assert_eq!(sample_rows(5, 10, 3), vec![0, 1, 2, 3, 4]);
    }
}
