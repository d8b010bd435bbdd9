//! `doctor`: the stack's prerequisite checks as the terminal shows them.

use std::fmt::Write;

use lookit_status::{CheckOutcome, DoctorCheck};

/// The terminal view: one line per check, the fix command under each problem.
pub fn render(checks: &[DoctorCheck]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = match check.outcome {
            CheckOutcome::Ok => "ok  ",
            CheckOutcome::Warning => "warn",
            CheckOutcome::Failed => "FAIL",
        };
        let _ = writeln!(out, "[{mark}] {}", check.name);
        if check.outcome != CheckOutcome::Ok {
            let _ = writeln!(out, "       {}", check.detail);
        }
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "       fix: {fix}");
        }
    }
    let failed = checks
        .iter()
        .filter(|c| c.outcome == CheckOutcome::Failed)
        .count();
    let _ = writeln!(
        out,
        "\n{}",
        if failed == 0 {
            "Everything Lookit Local needs is here.".to_string()
        } else {
            format!("{failed} problem(s) to fix before Lookit Local can run.")
        }
    );
    out
}
