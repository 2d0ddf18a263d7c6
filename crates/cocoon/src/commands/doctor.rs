//! `cocoon doctor`: renders the engine's host report, one line per item.

use cocoon_engine::doctor::{self, DoctorReport, Status};
use cocoon_engine::{Config, Result};

use super::{Outcome, io};
use crate::cli::FormatArg;

pub fn run(config: &Config, output: FormatArg) -> Result<Outcome> {
    let report = doctor::run(config);
    if output.json() {
        crate::output::print_json(&report).map_err(io)?;
    } else {
        crate::output::print_line(render(&report).trim_end()).map_err(io)?;
    }
    if report.can_run_vm {
        return Ok(Outcome::Success);
    }
    let failed: Vec<&str> = report.failed().map(|c| c.name).collect();
    Ok(Outcome::Failure(format!(
        "this host cannot run a VM: {} failed",
        failed.join(", ")
    )))
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Ok => "OK",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
    }
}

/// `OK   name  detail`, the fix on an indented line below, and a verdict.
fn render(report: &DoctorReport) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for check in &report.checks {
        text.push_str(&format!(
            "{:<4}  {:<width$}  {}\n",
            label(check.status),
            check.name,
            check.detail
        ));
        if let Some(fix) = &check.fix {
            text.push_str(&format!("{:indent$}fix: {fix}\n", "", indent = width + 8));
        }
    }
    let warnings = match report.warnings() {
        0 => String::new(),
        1 => " (1 warning above)".to_string(),
        n => format!(" ({n} warnings above)"),
    };
    if report.can_run_vm {
        text.push_str(&format!("This host can run VMs{warnings}.\n"));
    } else {
        let n = report.failed().count();
        text.push_str(&format!(
            "This host cannot run a VM until the {n} FAIL item{} above {} fixed.\n",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" }
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_engine::doctor::Check;

    #[test]
    fn one_line_per_item_fix_indented_then_verdict() {
        let report = DoctorReport::new(vec![
            Check::ok("kvm", "/dev/kvm works"),
            Check::warn("tun", "missing", "modprobe tun"),
            Check::fail("root_dir", "/x is not a directory", "remove /x"),
        ]);
        assert_eq!(
            render(&report),
            "\
OK    kvm       /dev/kvm works
WARN  tun       missing
                fix: modprobe tun
FAIL  root_dir  /x is not a directory
                fix: remove /x
This host cannot run a VM until the 1 FAIL item above is fixed.
"
        );
        let report = DoctorReport::new(vec![
            Check::ok("kvm", "/dev/kvm works"),
            Check::warn("tun", "missing", "modprobe tun"),
        ]);
        assert!(
            render(&report).ends_with("\nThis host can run VMs (1 warning above).\n"),
            "{}",
            render(&report)
        );
    }
}
