//! Rendering: JSON documents and human tables on stdout, nothing else there.

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// A tab-aligned table like cocoon's (Go tabwriter): no borders, columns
/// separated by three spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut text: String = table
        .to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    std::io::stdout()
        .lock()
        .write_all(table(headers, rows).as_bytes())
}

pub fn print_line(line: &str) -> std::io::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}")
}

/// Local time as cocoon shows it: `2006-01-02 15:04:05`.
pub fn local_time(ts: Timestamp) -> String {
    ts.to_zoned_datetime(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_without_borders() {
        let text = table(
            &["ID", "NAME"],
            vec![
                vec!["A".into(), "alpha".into()],
                vec!["BBBB".into(), "b".into()],
            ],
        );
        assert_eq!(text, "ID     NAME\nA      alpha\nBBBB   b\n");
    }
}
