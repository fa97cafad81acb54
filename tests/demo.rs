//! `demo`, the command the README starts with: the whole stage against librdkafka's mock cluster. Its
//! summary accounts for every input, matches every status to what was generated, and reports the paced
//! phase's time inside the stage apart from the backlog's throughput.

use std::process::{Command, Stdio};

/// The milliseconds after `label` in `line`, e.g. `p99 0.412 ms` → 0.412.
fn millis_after(line: &str, label: &str) -> f64 {
    let rest = line
        .split(&format!("{label} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {label} in {line:?}"));
    rest.split(" ms").next().unwrap().parse().unwrap()
}

#[test]
fn demo_accounts_for_every_input_and_reports_the_paced_latency_apart_from_the_backlog() {
    let out = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args([
            "demo",
            "--count",
            "3000",
            "--rate",
            "400",
            "--paced-seconds",
            "2",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("<- differs"), "{stdout}");
    assert!(
        stdout.contains("every input accounted for:") && stdout.contains("= 3800 ✓"),
        "{stdout}"
    );
    assert!(stdout.contains("backlog: 3000 requests"), "{stdout}");
    assert!(
        stdout.contains("paced: 800 requests at 400 records/s"),
        "{stdout}"
    );
    let handed = stdout
        .lines()
        .find(|l| l.contains("consumed → handed to the producer"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let acked = stdout
        .lines()
        .find(|l| l.contains("consumed → acknowledged by the brokers"))
        .unwrap_or_else(|| panic!("{stdout}"));
    // Each percentile is at most the next, and a record is handed over before it is acknowledged.
    for line in [handed, acked] {
        let p: Vec<f64> = ["p50", "p90", "p99", "p99.9", "max"]
            .iter()
            .map(|label| millis_after(line, label))
            .collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{line}");
        assert!(p[0] > 0.0, "{line}");
    }
    assert!(
        millis_after(handed, "p50") <= millis_after(acked, "p50"),
        "{handed}\n{acked}"
    );
    println!("RESULT demo summary:\n{stdout}");
}
