//! Many plate files in, many plate files out.
//!
//! JUMP and pycytominer pipelines keep one table per plate, hundreds per
//! batch, in folders. `balans correct` and `balans apply` accept, as
//! `--input`, a folder (every table file in it, by extension) or a glob of
//! plate files (`plates/*.parquet`; `*` and `?` in the file-name part), and
//! write one corrected file per input under the `--output` folder, with
//! the same file name (so the same format).
//!
//! # Bounded memory
//!
//! [`load_stacked`] reads the files one at a time into one preallocated
//! feature matrix: the row counts come first (from the Parquet footers; the
//! other formats are read and dropped), then each file is loaded, its
//! features copied into its rows of the matrix, and its Arrow table
//! dropped before the next file is read. Nothing holds two full copies of
//! the input; the output is written the same way, one file at a time.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ndarray::Array2;

use crate::io::dataset::{LoadSpec, ProfileTable, Scope};
use crate::io::error::LoadError;
use crate::io::profile::NonFinitePolicy;
use crate::io::table::{self, Format};
use crate::method::fit::Dataset;

/// What `--input` names.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// One table file.
    One(PathBuf),
    /// Several plate files (a folder or a glob), in name order.
    Many(Vec<PathBuf>),
}

/// Does the last component of `p` hold a glob character?
fn is_glob(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().contains(['*', '?']))
        .unwrap_or(false)
}

/// `name` matches `pattern` (`*`: any run of characters, `?`: one).
fn glob_match(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Resolve `--input`: a file, a folder (its table files: every regular file
/// whose extension is a table format; other files are skipped with a
/// warning) or a glob of files. A folder or glob matching no table file is
/// an error naming it.
pub fn expand_inputs(input: &Path) -> Result<Inputs> {
    let (dir, pattern) = if input.is_dir() {
        (input.to_path_buf(), None)
    } else if is_glob(input) {
        let dir = match input.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        ensure!(
            !is_glob(&dir),
            "{}: only the file-name part of a glob may hold * or ?",
            input.display()
        );
        let pat: Vec<char> = input
            .file_name()
            .map(|n| n.to_string_lossy().chars().collect())
            .unwrap_or_default();
        (dir, Some(pat))
    } else {
        return Ok(Inputs::One(input.to_path_buf()));
    };
    let mut files = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list the input folder {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list the input folder {}", dir.display()))?;
        let path = e.path();
        let name: Vec<char> = e.file_name().to_string_lossy().chars().collect();
        if let Some(p) = &pattern {
            if !glob_match(p, &name) {
                continue;
            }
        }
        if !path.is_file() || name.first() == Some(&'.') {
            continue;
        }
        if Format::from_path(&path).is_err() {
            if pattern.is_some() {
                bail!(
                    "{}: matched by the input glob but not a table file",
                    path.display()
                );
            }
            tracing::warn!(file = %path.display(), "not a table file (by extension): skipped");
            continue;
        }
        files.push(path);
    }
    files.sort();
    ensure!(
        !files.is_empty(),
        "{}: no table file (.parquet, .pq, .csv, .csv.gz, .arrow, .ipc, .feather) matches",
        input.display()
    );
    Ok(Inputs::Many(files))
}

/// The output path of every input: `out_dir/<file name>`. Checks before any
/// work that `out_dir` is (or can be created as) a folder, that no two
/// inputs share a name, and that every output can be written and is not an
/// input ([`table::prepare_output`]).
pub fn output_paths(files: &[PathBuf], out_dir: &Path) -> Result<Vec<PathBuf>> {
    ensure!(
        !out_dir.is_file(),
        "cannot write to {}: with a folder or glob as input, --output is a folder (it is a file)",
        out_dir.display()
    );
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create the output folder {}", out_dir.display()))?;
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let name = f
            .file_name()
            .with_context(|| format!("{}: not a file path", f.display()))?;
        if let Some(other) = seen.insert(name.to_os_string(), f) {
            bail!(
                "{} and {} have the same file name: their outputs would collide",
                other.display(),
                f.display()
            );
        }
        let o = out_dir.join(name);
        table::prepare_output(&o, &inputs)?;
        out.push(o);
    }
    Ok(out)
}

/// The plate id of a file without a plate column: its name up to the first
/// dot (the daemon's rule for inbox files).
pub fn plate_id_of(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_string_lossy().split('.').next().map(str::to_string))
        .unwrap_or_else(|| "plate".into())
}

/// The rows of a table file, read as cheaply as the format allows (a
/// Parquet footer; other formats are read whole and dropped).
fn count_rows(path: &Path) -> Result<usize, LoadError> {
    table::count_rows(path).map_err(|e| {
        if table::is_layout_error(&e) {
            LoadError::schema(format!("{e:#}"))
        } else {
            LoadError::unreadable(&e)
        }
    })
}

/// Many plate files loaded as one dataset.
#[derive(Debug, Clone)]
pub struct Stacked {
    /// Feature names, in the first file's column order.
    pub features: Vec<String>,
    /// Feature values, rows x features (every file's rows, in file order).
    pub x: Array2<f64>,
    /// Batch of every row.
    pub batch: Vec<String>,
    /// Plate of every row (a file without a plate column: [`plate_id_of`]).
    pub plate: Vec<String>,
    /// Control rows (with a selector).
    pub controls: Option<Vec<bool>>,
    /// Biological labels (with a label column).
    pub labels: Option<Vec<String>>,
    /// Every file and its rows.
    pub files: Vec<(PathBuf, Range<usize>)>,
}

impl Stacked {
    /// The method's view.
    pub fn dataset(&self) -> Dataset<'_> {
        Dataset {
            x: self.x.view(),
            batch: &self.batch,
            plate: Some(&self.plate),
            controls: self.controls.as_deref(),
        }
    }
}

/// The corrected values of one plate file: rows `rows` of `corrected`
/// (the stacked fit, columns in `features` order) placed in the file's own
/// feature column order ([`feature_order`]), ready for
/// [`ProfileTable::corrected_table`].
pub fn file_values(
    t: &ProfileTable,
    features: &[String],
    rows: Range<usize>,
    corrected: ndarray::ArrayView2<f64>,
) -> Result<Array2<f64>, LoadError> {
    let pos = feature_order(t, features)?;
    let mut values = Array2::<f64>::zeros(t.x.dim());
    for (r, i) in rows.enumerate() {
        for (j, &p) in pos.iter().enumerate() {
            values[(r, p)] = corrected[(i, j)];
        }
    }
    Ok(values)
}

/// For every feature of `features`, its column in `t` (which must have
/// exactly these features, in any order); the error names the file and
/// the first column that differs.
pub fn feature_order(t: &ProfileTable, features: &[String]) -> Result<Vec<usize>, LoadError> {
    let at: HashMap<&str, usize> = t
        .columns
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut pos = Vec::with_capacity(features.len());
    for f in features {
        match at.get(f.as_str()) {
            Some(&j) => pos.push(j),
            None => {
                return Err(LoadError::schema(format!(
                    "{}: missing feature column '{f}' (the other files have it)",
                    t.source
                )))
            }
        }
    }
    if t.columns.names.len() != features.len() {
        let extra = t
            .columns
            .names
            .iter()
            .find(|n| !features.contains(n))
            .cloned()
            .unwrap_or_default();
        return Err(LoadError::schema(format!(
            "{}: feature column '{extra}' is not in the other files",
            t.source
        )));
    }
    Ok(pos)
}

/// Load `files` as one dataset with bounded memory (see the module docs).
/// Every file must hold the same feature columns (in any order). Non-finite
/// values are refused (`--impute` and `--drop-features` would decide per
/// file, so they are not available here). A control selector must match a
/// row of some file, not of every file. Errors name the file.
pub fn load_stacked(files: &[PathBuf], spec: &LoadSpec) -> Result<Stacked, LoadError> {
    if spec.non_finite != NonFinitePolicy::Error {
        return Err(LoadError::schema(
            "--impute and --drop-features need a single input table (with a folder or glob each file would decide alone)",
        ));
    }
    let mut sizes = Vec::with_capacity(files.len());
    for f in files {
        sizes.push(count_rows(f)?);
    }
    let n: usize = sizes.iter().sum();
    let file_spec = LoadSpec {
        scope: Scope::Plate,
        ..spec.clone()
    };
    let mut out: Option<Stacked> = None;
    let mut at = 0;
    for (f, &rows) in files.iter().zip(&sizes) {
        let t = ProfileTable::load(f, &file_spec)?;
        if t.rows() != rows {
            return Err(LoadError::unreadable(&anyhow::anyhow!(
                "{}: {} rows, {rows} a moment ago (the file changed while read)",
                f.display(),
                t.rows()
            )));
        }
        if t.rows() == 0 {
            return Err(LoadError::empty(format!(
                "{}: the table has no rows",
                f.display()
            )));
        }
        let s = out.get_or_insert_with(|| Stacked {
            features: t.columns.names.clone(),
            x: Array2::zeros((n, t.columns.names.len())),
            batch: Vec::with_capacity(n),
            plate: Vec::with_capacity(n),
            controls: spec.control.as_ref().map(|_| Vec::with_capacity(n)),
            labels: spec.label_col.as_ref().map(|_| Vec::with_capacity(n)),
            files: Vec::with_capacity(files.len()),
        });
        let pos = feature_order(&t, &s.features)?;
        for (r, row) in t.x.rows().into_iter().enumerate() {
            let mut dst = s.x.row_mut(at + r);
            for (j, &p) in pos.iter().enumerate() {
                dst[j] = row[p];
            }
        }
        s.batch.extend(t.batch.iter().cloned());
        match &t.plate {
            Some(p) => s.plate.extend(p.iter().cloned()),
            None => s
                .plate
                .extend(std::iter::repeat_n(plate_id_of(f), t.rows())),
        }
        if let (Some(c), Some(tc)) = (&mut s.controls, &t.controls) {
            c.extend_from_slice(tc);
        }
        if let (Some(l), Some(tl)) = (&mut s.labels, &t.labels) {
            l.extend(tl.iter().cloned());
        }
        s.files.push((f.clone(), at..at + rows));
        at += rows;
        tracing::debug!(file = %f.display(), rows, "loaded plate file");
    }
    let Some(s) = out else {
        return Err(LoadError::empty("no input file"));
    };
    if let (Some(sel), Some(c)) = (&spec.control, &s.controls) {
        if !c.iter().any(|&v| v) {
            return Err(LoadError::schema(format!(
                "no row of the {} input files has {}={} (the --control selector); check the column and value",
                files.len(),
                sel.column,
                sel.value
            )));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        let p: Vec<char> = p.chars().collect();
        let n: Vec<char> = n.chars().collect();
        glob_match(&p, &n)
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(m("*.parquet", "a.parquet"));
        assert!(m("*.parquet", ".parquet"));
        assert!(!m("*.parquet", "a.parquet.tmp"));
        assert!(m("P?_*.csv", "P1_x.csv"));
        assert!(!m("P?_*.csv", "P12_x.csv"));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn folders_and_globs_expand_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.parquet", "a.csv", "c.parquet", "notes.txt"] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub.parquet")).unwrap();
        let names = |i: Inputs| match i {
            Inputs::Many(v) => v
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            Inputs::One(p) => vec![format!("one:{}", p.display())],
        };
        assert_eq!(
            names(expand_inputs(d.path()).unwrap()),
            ["a.csv", "b.parquet", "c.parquet"]
        );
        assert_eq!(
            names(expand_inputs(&d.path().join("*.parquet")).unwrap()),
            ["b.parquet", "c.parquet"]
        );
        let e = expand_inputs(&d.path().join("*.arrow"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("*.arrow") && e.contains("no table file"), "{e}");
        let e = expand_inputs(&d.path().join("*.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("notes.txt"), "{e}");
        assert_eq!(
            expand_inputs(&d.path().join("b.parquet")).unwrap(),
            Inputs::One(d.path().join("b.parquet"))
        );
        assert_eq!(plate_id_of(Path::new("x/P01.qc.parquet")), "P01");
    }
}
