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
    // The system zone found once per process, not per call: `vm ls` shows
    // one time per VM.
    static ZONE: std::sync::LazyLock<TimeZone> = std::sync::LazyLock::new(TimeZone::system);
    ts.to_zoned_datetime(ZONE.clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// THROTTLED as upstream shows it: throttled periods / throttled time, `-`
/// when the VM has no group or was never throttled.
pub fn throttled(stat: Option<&cocoon_engine::cgroup::CpuStat>) -> String {
    match stat {
        Some(stat) if stat.nr_throttled > 0 => {
            format!(
                "{}/{}",
                stat.nr_throttled,
                duration_text(stat.throttled_usec)
            )
        }
        _ => "-".into(),
    }
}

/// A duration in µs the way Go prints one (`1.5s`, `250ms`, `2m3.5s`).
pub fn duration_text(usec: u64) -> String {
    fn trim(whole: u64, frac: u64, digits: usize) -> String {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    }
    match usec {
        0 => "0s".into(),
        u if u < 1_000 => format!("{u}µs"),
        u if u < 1_000_000 => format!("{}ms", trim(u / 1_000, u % 1_000, 3)),
        u if u < 60_000_000 => format!("{}s", trim(u / 1_000_000, u % 1_000_000, 6)),
        u => {
            let mins = u / 60_000_000;
            let rest = u % 60_000_000;
            format!("{mins}m{}s", trim(rest / 1_000_000, rest % 1_000_000, 6))
        }
    }
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

    #[test]
    fn throttling_reads_as_periods_and_go_durations() {
        use cocoon_engine::cgroup::CpuStat;
        assert_eq!(throttled(None), "-");
        let mut stat = CpuStat::default();
        assert_eq!(throttled(Some(&stat)), "-");
        stat.nr_throttled = 12;
        stat.throttled_usec = 1_500_000;
        assert_eq!(throttled(Some(&stat)), "12/1.5s");
        assert_eq!(duration_text(250), "250µs");
        assert_eq!(duration_text(250_000), "250ms");
        assert_eq!(duration_text(1_234_567), "1.234567s");
        assert_eq!(duration_text(123_500_000), "2m3.5s");
    }
}
