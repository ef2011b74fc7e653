//! The fault suite's short run, as CI runs it: every workload for 30 s on three members under mixed
//! faults (partitions, kill -9, pauses, slow links, snapshots every 100 requests). Any invalid verdict
//! fails the test; each run's history, faults, verdict and report stay under target/chaos-ci.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_workload_survives_mixed_faults() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-ci");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let run = Command::new(env!("CARGO_BIN_EXE_concord-chaos"))
        .args(["--concord", env!("CARGO_BIN_EXE_concord")])
        .args([
            "--workload",
            "register,set,bank,watch,lease,lock",
            "--time",
            "30",
            "--seed",
            &seed.to_string(),
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .expect("run concord-chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "invalid run (seed {seed}; results in {}):\n{stdout}\n{}",
        out.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let summaries: Vec<&str> = stdout.lines().filter(|l| l.starts_with("workload=")).collect();
    assert_eq!(summaries.len(), 6, "{stdout}");
    for s in summaries {
        assert!(s.ends_with("valid=true"), "{s}");
        // A run that did nothing proves nothing (the lock workload is slow by nature: one holder at a time).
        let ok: usize = s.split(' ').find_map(|f| f.strip_prefix("ok=")).unwrap().parse().unwrap();
        assert!(ok > 50, "{s}");
    }
}
