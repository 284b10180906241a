//! How views reach the terminal: a typed row is serialized as is for
//! `-o json` and laid out through its [`Row::COLUMNS`] as a table. A column
//! is a header paired with the function that draws its cell, so a table
//! cannot have a header without cells, and JSON and table cannot disagree
//! about the value they show.

use serde::Serialize;
use trackwire_core::time::format_utc;

use crate::args::Output;

/// A table column: its header and how a row's cell under it is drawn
/// (given the current time, in unix ms, for ages).
pub struct Column<R: ?Sized> {
    pub header: &'static str,
    pub cell: fn(&R, u64) -> String,
}

/// A column: its header and how a row fills its cell (`now` in unix ms).
pub const fn col<R: ?Sized>(header: &'static str, cell: fn(&R, u64) -> String) -> Column<R> {
    Column { header, cell }
}

/// One line of a view.
pub trait Row: Serialize + 'static {
    const COLUMNS: &'static [Column<Self>];
}

/// Prints `rows` as `output` asks.
pub fn print_rows<R: Row>(rows: &[R], output: Output, now_ms: u64) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", render_table(rows, now_ms)),
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
    }
    Ok(())
}

/// The header line and a line per row, aligned.
pub fn render_table<R: Row>(rows: &[R], now_ms: u64) -> String {
    let mut lines = vec![R::COLUMNS.iter().map(|c| c.header.to_string()).collect()];
    lines.extend(rows.iter().map(|r| cells(r, now_ms)));
    table(&lines)
}

/// A row's cells, in column order.
pub fn cells<R: Row>(row: &R, now_ms: u64) -> Vec<String> {
    R::COLUMNS.iter().map(|c| (c.cell)(row, now_ms)).collect()
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A time for people: `2026-11-26T21:29:41Z (12s ago)`, or `(in 3m0s)`
/// for one still ahead.
pub fn human_time(at_ms: u64, now_ms: u64) -> String {
    let when = format_utc(at_ms);
    if at_ms <= now_ms {
        format!("{when} ({} ago)", human_age(now_ms - at_ms))
    } else {
        format!("{when} (in {})", human_age(at_ms - now_ms))
    }
}

/// `4m2s`, `3h0m`, `12s`.
pub fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `850us`, `12.3ms`, `1.50s`.
pub fn human_latency(us: u32) -> String {
    match us {
        0..1000 => format!("{us}us"),
        1000..1_000_000 => format!("{:.1}ms", f64::from(us) / 1e3),
        _ => format!("{:.2}s", f64::from(us) / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["long".into(), "x".into()],
        ]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }

    #[test]
    fn times_for_people() {
        let at = 1_798_320_581_000;
        assert_eq!(
            human_time(at, at + 12_500),
            "2026-12-26T21:29:41Z (12s ago)"
        );
        assert_eq!(
            human_time(at, at - 180_000),
            "2026-12-26T21:29:41Z (in 3m0s)"
        );
        assert_eq!(human_age(242_000), "4m2s");
        assert_eq!(human_age(3 * 3_600_000 + 5_000), "3h0m");
        assert_eq!(human_latency(850), "850us");
        assert_eq!(human_latency(12_340), "12.3ms");
        assert_eq!(human_latency(1_500_000), "1.50s");
    }
}
