//! The evaluation report: every metric, the batch / bio aggregates, and its
//! JSON, plain-text and Markdown renderings.
//!
//! Aggregation follows scib-metrics' Benchmarker as used in evaluation.md:
//! `batch = mean(BRAS, iLISI, kBET, graph connectivity, PCR comparison)`
//! (PCR comparison only when a baseline was given), `bio = mean(NMI, ARI,
//! silhouette label, cLISI)`, `total = 0.4 batch + 0.6 bio`. Metrics that
//! could not be computed are `null` in JSON and left out of the means (the
//! reason is in `notes`).

use serde::Serialize;

/// All metrics of one evaluation. `None` = not computed (see `notes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Rows in the input.
    pub n_rows: usize,
    /// Non-control rows the metrics were computed on.
    pub n_evaluated: usize,
    /// Distinct batches among evaluated rows.
    pub n_batches: usize,
    /// Distinct labels among evaluated rows.
    pub n_labels: usize,
    /// Dimensions of the embedding the metrics saw (PCA components).
    pub embedding_dims: usize,

    /// Batch-removal adapted silhouette (cosine, mean over other batches).
    pub bras: Option<f64>,
    /// Classic scib silhouette batch (Euclidean, nearest other batch).
    pub silhouette_batch: Option<f64>,
    /// Integration LISI, scaled to [0, 1].
    pub ilisi: Option<f64>,
    /// kBET acceptance rate, mean over labels.
    pub kbet: Option<f64>,
    /// Graph connectivity on the 15-NN graph.
    pub graph_connectivity: Option<f64>,
    /// Variance-weighted R^2 of batch on the principal components.
    pub pcr_batch: Option<f64>,
    /// PCR comparison against the baseline (needs a baseline).
    pub pcr_comparison: Option<f64>,

    /// NMI of k-means (k = number of labels) vs labels.
    pub nmi: Option<f64>,
    /// ARI of k-means vs labels.
    pub ari: Option<f64>,
    /// Silhouette of labels, rescaled to [0, 1].
    pub silhouette_label: Option<f64>,
    /// Cell-type (label) LISI, scaled to [0, 1].
    pub clisi: Option<f64>,

    /// Cross-batch retrieval mAP (same label, other batch, other compound).
    pub map_cross_batch: Option<f64>,
    /// Share of labels retrieved significantly in the cross-batch mAP.
    pub map_cross_batch_fraction: Option<f64>,
    /// Arevalo mAP: same compound vs other compounds on the plate.
    pub map_nonrep: Option<f64>,
    /// Share of compounds retrieved significantly (non-replicate negatives).
    pub map_nonrep_fraction: Option<f64>,
    /// Arevalo mAP: same compound vs controls on the plate.
    pub map_control: Option<f64>,
    /// Share of compounds retrieved significantly (control negatives).
    pub map_control_fraction: Option<f64>,
    /// Not-same-compound MoA 1-NN accuracy.
    pub nsc: Option<f64>,
    /// Not-same-compound-or-batch MoA 1-NN accuracy.
    pub nscb: Option<f64>,
    /// Representation drift against a previous embedding (median cosine).
    pub drift: Option<f64>,
    /// Drift divided by the replicate distance.
    pub normalised_drift: Option<f64>,

    /// Mean of the batch-removal metrics.
    pub batch: Option<f64>,
    /// Mean of the bio-conservation metrics.
    pub bio: Option<f64>,
    /// `0.4 batch + 0.6 bio`.
    pub total: Option<f64>,
    /// Skipped metrics, sampling and other remarks.
    pub notes: Vec<String>,
    /// The same metrics on the uncorrected baseline (when it was scored),
    /// for before/after comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Box<Report>>,
}

/// A figure of the report: a title and an SVG document.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Caption.
    pub title: String,
    /// File-name stem used when the figure is saved next to a Markdown report.
    pub stem: String,
    /// The SVG document.
    pub svg: String,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mean(values: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |x| format!("{x:.3}"))
}

impl Report {
    /// Fill `batch`, `bio` and `total` from the individual metrics.
    pub fn aggregate(&mut self) {
        self.batch = mean(&[
            self.bras,
            self.ilisi,
            self.kbet,
            self.graph_connectivity,
            self.pcr_comparison,
        ]);
        self.bio = mean(&[self.nmi, self.ari, self.silhouette_label, self.clisi]);
        self.total = match (self.batch, self.bio) {
            (Some(b), Some(o)) => Some(0.4 * b + 0.6 * o),
            _ => None,
        };
    }

    /// `(section, display name, value)` for every metric, in report order.
    pub fn rows(&self) -> Vec<(&'static str, &'static str, Option<f64>)> {
        vec![
            ("batch", "BRAS", self.bras),
            ("batch", "iLISI", self.ilisi),
            ("batch", "kBET", self.kbet),
            ("batch", "graph connectivity", self.graph_connectivity),
            ("batch", "PCR comparison", self.pcr_comparison),
            ("batch", "silhouette batch (classic)", self.silhouette_batch),
            ("batch", "PCR batch", self.pcr_batch),
            ("bio", "NMI", self.nmi),
            ("bio", "ARI", self.ari),
            ("bio", "silhouette label", self.silhouette_label),
            ("bio", "cLISI", self.clisi),
            ("retrieval", "cross-batch mAP", self.map_cross_batch),
            (
                "retrieval",
                "cross-batch fraction retrieved",
                self.map_cross_batch_fraction,
            ),
            ("retrieval", "mAP (non-rep negatives)", self.map_nonrep),
            (
                "retrieval",
                "fraction retrieved (non-rep)",
                self.map_nonrep_fraction,
            ),
            ("retrieval", "mAP (control negatives)", self.map_control),
            (
                "retrieval",
                "fraction retrieved (control)",
                self.map_control_fraction,
            ),
            ("retrieval", "NSC", self.nsc),
            ("retrieval", "NSCB", self.nscb),
            ("drift", "drift", self.drift),
            ("drift", "normalised drift", self.normalised_drift),
            ("score", "batch", self.batch),
            ("score", "bio", self.bio),
            ("score", "total", self.total),
        ]
    }

    /// Pretty JSON with one key per metric.
    pub fn to_json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// `(section, name, before, after)` rows; `before` is `None` without a
    /// scored baseline.
    fn compare_rows(&self) -> Vec<(&'static str, &'static str, Option<f64>, Option<f64>)> {
        let before = self.before.as_ref().map(|b| b.rows());
        self.rows()
            .into_iter()
            .enumerate()
            .map(|(i, (sec, name, v))| {
                let b = before.as_ref().and_then(|r| r.get(i)).and_then(|r| r.2);
                (sec, name, b, v)
            })
            .collect()
    }

    /// Plain-text table (a `before` column when the baseline was scored).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "rows {} (evaluated {}), batches {}, labels {}, dims {}\n",
            self.n_rows, self.n_evaluated, self.n_batches, self.n_labels, self.embedding_dims
        );
        let has_before = self.before.is_some();
        if has_before {
            s.push_str(&format!("  {:<32} {:>8} {:>8}\n", "", "before", "after"));
        }
        let mut section = "";
        for (sec, name, b, v) in self.compare_rows() {
            if sec != section {
                s.push_str(&format!("[{sec}]\n"));
                section = sec;
            }
            if has_before {
                s.push_str(&format!("  {name:<32} {:>8} {:>8}\n", fmt(b), fmt(v)));
            } else {
                s.push_str(&format!("  {name:<32} {:>8}\n", fmt(v)));
            }
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }

    /// Markdown report: a summary line, one table (with a `before` column
    /// when the baseline was scored), figures linked by relative path, notes.
    pub fn to_markdown(&self) -> String {
        self.to_markdown_with(&[])
    }

    /// [`Report::to_markdown`] with figure links `(caption, relative path)`.
    pub fn to_markdown_with(&self, figures: &[(String, String)]) -> String {
        let mut s = String::from("# balans evaluation\n\n");
        s.push_str(&format!(
            "{} rows, {} evaluated (non-control), {} batches, {} labels, {}-dimensional embedding.\n\n",
            self.n_rows, self.n_evaluated, self.n_batches, self.n_labels, self.embedding_dims
        ));
        s.push_str(&format!(
            "**batch {} · bio {} · total {}**\n\n",
            fmt(self.batch),
            fmt(self.bio),
            fmt(self.total)
        ));
        if self.before.is_some() {
            s.push_str("| section | metric | before | after |\n|---|---|---|---|\n");
            for (sec, name, b, v) in self.compare_rows() {
                s.push_str(&format!("| {sec} | {name} | {} | {} |\n", fmt(b), fmt(v)));
            }
        } else {
            s.push_str("| section | metric | value |\n|---|---|---|\n");
            for (sec, name, v) in self.rows() {
                s.push_str(&format!("| {sec} | {name} | {} |\n", fmt(v)));
            }
        }
        if !figures.is_empty() {
            s.push_str("\n## Figures\n\n");
            for (caption, path) in figures {
                s.push_str(&format!("![{caption}]({path})\n\n"));
            }
        }
        if !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// A self-contained HTML page: summary, metric table, inline SVG figures,
    /// notes.
    pub fn to_html(&self, title: &str, figures: &[Figure]) -> String {
        let mut s =
            String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        s.push_str(&format!("<title>{}</title>", html_escape(title)));
        s.push_str(
            "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}\
             table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}\
             td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}\
             .figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}</style></head><body>\n",
        );
        s.push_str(&format!("<h1>{}</h1>\n", html_escape(title)));
        s.push_str(&format!(
            "<p>{} rows, {} evaluated (non-control), {} batches, {} labels, {}-dimensional embedding.</p>\n",
            self.n_rows, self.n_evaluated, self.n_batches, self.n_labels, self.embedding_dims
        ));
        s.push_str(&format!(
            "<p><b>batch {} · bio {} · total {}</b></p>\n",
            fmt(self.batch),
            fmt(self.bio),
            fmt(self.total)
        ));
        let has_before = self.before.is_some();
        s.push_str("<table><tr><th>section</th><th>metric</th>");
        if has_before {
            s.push_str("<th>before</th>");
        }
        s.push_str("<th>after</th></tr>\n");
        for (sec, name, b, v) in self.compare_rows() {
            s.push_str(&format!("<tr><td>{sec}</td><td>{}</td>", html_escape(name)));
            if has_before {
                s.push_str(&format!("<td>{}</td>", fmt(b)));
            }
            s.push_str(&format!("<td>{}</td></tr>\n", fmt(v)));
        }
        s.push_str("</table>\n");
        if !figures.is_empty() {
            s.push_str("<h2>Figures</h2><div class=\"figs\">\n");
            for f in figures {
                s.push_str(&format!(
                    "<figure>{}<figcaption>{}</figcaption></figure>\n",
                    f.svg,
                    html_escape(&f.title)
                ));
            }
            s.push_str("</div>\n");
        }
        if !self.notes.is_empty() {
            s.push_str("<h2>Notes</h2><ul>\n");
            for n in &self.notes {
                s.push_str(&format!("<li>{}</li>\n", html_escape(n)));
            }
            s.push_str("</ul>\n");
        }
        s.push_str("</body></html>\n");
        s
    }

    /// `(name, before, after)` of the metrics that enter the aggregates and
    /// the retrieval scores — the rows of the before/after bar figure.
    pub fn bar_rows(&self) -> Vec<(String, Option<f64>, Option<f64>)> {
        const SHOWN: [&str; 14] = [
            "BRAS",
            "iLISI",
            "kBET",
            "graph connectivity",
            "PCR comparison",
            "NMI",
            "ARI",
            "silhouette label",
            "cLISI",
            "cross-batch mAP",
            "NSCB",
            "batch",
            "bio",
            "total",
        ];
        self.compare_rows()
            .into_iter()
            .filter(|(_, name, b, v)| SHOWN.contains(name) && (b.is_some() || v.is_some()))
            .map(|(_, name, b, v)| (name.to_string(), b, v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_skip_missing_metrics() {
        let mut r = Report {
            bras: Some(0.5),
            ilisi: Some(0.1),
            kbet: None,
            graph_connectivity: Some(0.9),
            nmi: Some(0.6),
            ari: Some(0.4),
            silhouette_label: Some(0.5),
            clisi: Some(0.9),
            ..Default::default()
        };
        r.aggregate();
        assert!((r.batch.unwrap() - 0.5).abs() < 1e-12);
        assert!((r.bio.unwrap() - 0.6).abs() < 1e-12);
        assert!((r.total.unwrap() - (0.4 * 0.5 + 0.6 * 0.6)).abs() < 1e-12);
        let json: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert!(json["kbet"].is_null());
        assert_eq!(json["bras"], 0.5);
        assert!(r.to_text().contains("kBET"));
        assert!(r.to_markdown().contains("| batch | BRAS | 0.500 |"));
    }
}
