//! `herald bench` runs end to end: a tiny run (far too short for figures
//! worth quoting) still starts its servers, drives every scenario and
//! prints every line of the report.

#[test]
fn a_short_benchmark_run_reports_every_scenario() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "bench",
            "--seconds",
            "0.3",
            "--connections",
            "4",
            "--agents",
            "2",
        ])
        .args(["--callback-sessions", "20", "--waiting-sessions", "40"])
        .args(["--smpp-messages", "200"])
        .args([
            "--campaign-recipients",
            "3000",
            "--campaign-pace",
            "50",
            "--campaign-seconds",
            "2",
        ])
        .env("HERALD_LOG", "warn")
        .output()
        .expect("herald bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout
            .matches("messages with their statuses back: 2000 in")
            .count(),
        3,
        "{stdout}"
    );
    for line in [
        "| no-op JSON route (baseline) |",
        "| accepted triggers (durable) |",
        "| rejected triggers (429) |",
        "| accepted at 1/4 load (",
        "callbacks as sessions run: 40 delivered in",
        "callbacks from a backlog: 40 delivered in",
        "server memory with conversations waiting for a reply: 0: ",
        "accepted triggers >= 50% of the baseline",
        "on the fake Vonage:",
        "on the fake Twilio:",
        "on the fake WhatsApp Cloud:",
        "voice webhook p99 under 50 ms at load",
        "on the local SMSC (SMPP, window 1000,",
        "  trigger to submit_sm: 200 SMS in",
        "  receipt to delivered callback: 200 of 200 in",
        "5 000 SMS a second end to end, every receipt reported:",
        "campaign: 3000 recipients uploaded as CSV and stored in",
        "  dispatched at 50/s: ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
