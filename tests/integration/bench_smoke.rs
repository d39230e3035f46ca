//! The benchmark tool works: `mcpmux-bench --smoke` runs every scenario (tiny) against
//! this build of mcpmux and writes a table and JSON with every scenario. Its numbers are
//! not looked at.

use std::process::Command;

use crate::harness::root;

#[test]
fn the_benchmark_runs_every_scenario_and_reports_them() {
    let json = std::env::temp_dir().join(format!("mcpmux-bench-smoke-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_mcpmux-bench"))
        .arg("--smoke")
        .arg("--json")
        .arg(&json)
        .arg("--mcpmux")
        .arg(env!("CARGO_BIN_EXE_mcpmux"))
        .arg("--root")
        .arg(root())
        .output()
        .expect("mcpmux-bench runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mcpmux-bench --smoke failed:\n{table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON results were written");
    let _ = std::fs::remove_file(&json);
    let results: serde_json::Value = serde_json::from_str(&text).expect("the results are JSON");
    assert_eq!(results["smoke"], true);
    assert_eq!(
        results["scenarios"],
        serde_json::json!(["a", "b", "c", "d", "e", "f", "g"])
    );
    let rows = results["rows"].as_array().expect("rows");
    for scenario in ["a", "b", "c", "d", "e", "f", "g"] {
        let in_table = table
            .lines()
            .filter(|line| line.starts_with(&format!("| {scenario} ")))
            .count();
        let in_json = rows.iter().filter(|r| r["scenario"] == scenario).count();
        assert!(
            in_table > 0 && in_table == in_json,
            "scenario {scenario}: {in_table} table rows, {in_json} JSON rows\n{table}"
        );
    }
    for row in rows {
        assert!(
            row["median"].is_number(),
            "every figure was measured: {row}"
        );
    }
    assert!(table.contains("skips mcp-proxy by design"), "{table}");
}
