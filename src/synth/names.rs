//! Names of the generated entities: zero-padded so that lexical order is
//! numeric order (`Batch01`, `Batch01_Plate02`, `G03`, `T0004`,
//! `Feature_005`), and wells in 384-well order.

/// Wells of a 384-well plate.
const WELLS_PER_PLATE: usize = 384;
/// Columns of a 384-well plate (rows are `A`..`P`).
const PLATE_COLUMNS: usize = 24;

/// Feature column names `Feature_000`.. (at least three digits, more if needed).
pub fn feature_names(n: usize) -> Vec<String> {
    let width = digits(n.saturating_sub(1)).max(3);
    (0..n).map(|j| format!("Feature_{j:0width$}")).collect()
}

/// Group labels `G01`.. (at least two digits).
pub(super) fn group_names(groups: usize) -> Vec<String> {
    let width = digits(groups).max(2);
    (1..=groups).map(|g| format!("G{g:0width$}")).collect()
}

/// Well name of position `i` within a plate: `A01`..`P24`, then `A01_s2`..
pub(super) fn well_name(i: usize) -> String {
    let site = i / WELLS_PER_PLATE;
    let w = i % WELLS_PER_PLATE;
    let row = (b'A' + (w / PLATE_COLUMNS) as u8) as char;
    let column = w % PLATE_COLUMNS + 1;
    if site == 0 {
        format!("{row}{column:02}")
    } else {
        format!("{row}{column:02}_s{}", site + 1)
    }
}

/// Number of decimal digits of `n` (1 for 0).
pub(super) fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}
