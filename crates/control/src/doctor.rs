//! `doctor`: the stack's prerequisite checks, as the panel and the terminal show them.

use std::fmt::Write;

use lookit_config::{Config, Home};
use lookit_panel::DoctorCheck;
use lookit_stack::CheckOutcome;

/// Every prerequisite, with what is wrong and the exact command that fixes it.
pub async fn run(home: &Home, config: &Config) -> Vec<DoctorCheck> {
    lookit_stack::doctor(home, config)
        .await
        .into_iter()
        .map(|check| DoctorCheck {
            ok: check.outcome != CheckOutcome::Failed,
            problem: (check.outcome != CheckOutcome::Ok).then_some(check.detail),
            name: check.name,
            fix: check.fix,
        })
        .collect()
}

/// The terminal view: one line per check, the fix command under each problem.
pub fn render(checks: &[DoctorCheck]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = match (check.ok, check.problem.is_some()) {
            (true, false) => "ok  ",
            (true, true) => "warn",
            (false, _) => "FAIL",
        };
        let _ = writeln!(out, "[{mark}] {}", check.name);
        if let Some(problem) = &check.problem {
            let _ = writeln!(out, "       {problem}");
        }
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "       fix: {fix}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
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
