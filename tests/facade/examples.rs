//! The seed demos, run unchanged on both backends. They run as built by
//! `cargo build --examples` (which `make test` does first).

use std::path::PathBuf;
use std::process::Command;

use locksmith_etcd::testing::EtcdServer;

fn example(name: &str) -> Command {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_locksmith"));
    let path = bin
        .parent()
        .map(|dir| dir.join("examples").join(name))
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --examples` first (as `make test` does)",
        path.display()
    );
    let mut cmd = Command::new(path);
    cmd.env_remove("LOCKSMITH_URL");
    cmd
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Each acquire follows the previous holder's release: `acquired`, `releases`, in turn,
/// three times, with timestamps that never go back.
fn assert_strict_alternation(output: &str) {
    let events: Vec<(f64, &str)> = output
        .lines()
        .filter(|line| line.contains(" acquired ") || line.ends_with(" releases"))
        .map(|line| {
            let (at, rest) = line.trim().split_once("s client ").unwrap();
            let kind = if rest.contains(" acquired ") {
                "acquire"
            } else {
                "release"
            };
            (at.parse().unwrap(), kind)
        })
        .collect();
    assert_eq!(events.len(), 6, "{output}");
    for (i, (_, kind)) in events.iter().enumerate() {
        assert_eq!(
            *kind,
            if i % 2 == 0 { "acquire" } else { "release" },
            "{output}"
        );
    }
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0), "{output}");
}

#[test]
fn three_clients_alternate_on_memory() {
    let mut cmd = example("three_clients");
    cmd.args(["--hold-ms", "100"]);
    assert_strict_alternation(&run(cmd));
}

#[test]
fn three_clients_alternate_on_etcd() {
    let etcd = EtcdServer::start().unwrap();
    let mut cmd = example("three_clients");
    cmd.args([
        "--hold-ms",
        "100",
        "--url",
        &format!("etcd://{}/", etcd.endpoint()),
    ]);
    assert_strict_alternation(&run(cmd));
}

#[test]
fn crashed_client_does_not_deadlock_on_memory() {
    let output = run(example("crash"));
    assert!(output.contains("no deadlock"), "{output}");
}

#[test]
fn crashed_client_does_not_deadlock_on_etcd() {
    let etcd = EtcdServer::start().unwrap();
    let mut cmd = example("crash");
    cmd.args(["--url", &format!("etcd://{}/demo/", etcd.endpoint())]);
    let output = run(cmd);
    assert!(
        output.contains("client 2 acquired demo/demo/crash/"),
        "{output}"
    );
    assert!(output.contains("no deadlock"), "{output}");
}

#[test]
fn generic_runs_on_etcd() {
    let etcd = EtcdServer::start().unwrap();
    let mut cmd = example("generic");
    cmd.args(["--url", &format!("etcd://{}/", etcd.endpoint())]);
    let output = run(cmd);
    assert!(output.starts_with("ran: true"), "{output}");
}

/// `etcd_bench` reads a locksmith URL for its endpoints and prints, beside its percentiles,
/// the distributions `bench/chart` draws, consistent with them.
#[test]
fn etcd_bench_reads_etcd_urls_and_prints_distributions() {
    let etcd = EtcdServer::start().unwrap();
    let url = format!("etcd://{0},{0}/bench-test/", etcd.endpoint());
    for implementation in ["locksmith", "v3lock"] {
        let mut cmd = example("etcd_bench");
        cmd.args(["--endpoints", &url, "--mode", "contended", "--clients", "3"]);
        cmd.args(["--duration", "0.5", "--impl", implementation]);
        cmd.args(["--setup", "1 member", "--probe-floor"]);
        let output = run(cmd);
        let report: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(report["impl"], implementation, "{output}");
        assert_eq!(report["violations"], 0, "{output}");
        assert_eq!(report["setup"], "1 member", "{output}");
        assert_eq!(report["latency_us"]["n"], report["ops"], "{output}");
        assert_eq!(report["latency_us"]["p50"], report["p50_us"], "{output}");
        assert_eq!(report["latency_us"]["p99"], report["p99_us"], "{output}");
        let handoff = &report["handoff_us"];
        assert_eq!(handoff["p50"], report["handoff_p50_us"], "{output}");
        let points: Vec<f64> = ["min", "p1", "p10", "p50", "p90", "p99", "p99.9", "max"]
            .iter()
            .map(|key| handoff[key].as_f64().unwrap())
            .collect();
        assert!(points.windows(2).all(|w| w[0] <= w[1]), "{output}");
        // The holders' releases and the floor sampled under the run's load.
        assert_eq!(
            report["release_us"]["p50"], report["release_p50_us"],
            "{output}"
        );
        assert!(report["release_us"]["n"].as_u64() > Some(0), "{output}");
        assert_eq!(
            report["loaded_floor_us"]["p50"], report["loaded_floor_p50_us"],
            "{output}"
        );
        assert!(
            report["loaded_floor_us"]["n"].as_u64() > Some(0),
            "{output}"
        );
    }
    let mut cmd = example("etcd_bench");
    cmd.args(["--endpoints", "memory://", "--duration", "0.1"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an etcd config"),
        "{out:?}"
    );
}

/// `etcd_bench`'s election modes, briefly: failover and observe print their distributions
/// consistent with their percentiles, no two leaders overlap, and the observers of one name
/// on one session add at most one watch stream and one watcher on etcd.
#[test]
fn etcd_bench_election_modes_print_their_distributions() {
    let etcd = EtcdServer::start().unwrap();
    let url = format!("etcd://{}/bench-test/", etcd.endpoint());
    let bench = |mode: &str, extra: &[&str]| {
        let mut cmd = example("etcd_bench");
        cmd.args(["--endpoints", &url, "--mode", mode, "--duration", "0.5"]);
        cmd.args(extra);
        let output = run(cmd);
        let report: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(report["mode"], mode, "{output}");
        assert_eq!(report["violations"], 0, "{output}");
        assert_eq!(report["latency_us"]["p50"], report["p50_us"], "{output}");
        (report, output)
    };

    let (report, output) = bench("failover", &["--clients", "3", "--probe-floor"]);
    assert_eq!(report["clients"], 3, "{output}");
    assert_eq!(report["latency_us"]["n"], report["ops"], "{output}");
    let failover = &report["failover_us"];
    assert_eq!(failover["p50"], report["failover_p50_us"], "{output}");
    assert_eq!(failover["p99"], report["failover_p99_us"], "{output}");
    assert!(failover["n"].as_u64() > Some(0), "{output}");
    assert_eq!(
        report["resign_us"]["p50"], report["resign_p50_us"],
        "{output}"
    );
    assert_eq!(
        report["loaded_floor_us"]["p50"], report["loaded_floor_p50_us"],
        "{output}"
    );
    assert!(
        report["loaded_floor_us"]["n"].as_u64() > Some(0),
        "{output}"
    );

    let (report, output) = bench("observe", &[]);
    assert_eq!(report["latency_us"]["n"], report["ops"], "{output}");
    assert_eq!(report["observe_us"]["n"], report["ops"], "{output}");
    assert_eq!(
        report["observe_us"]["p50"], report["observe_p50_us"],
        "{output}"
    );

    let (report, output) = bench("observers", &["--observers", "200"]);
    assert_eq!(report["observers"], 200, "{output}");
    assert_eq!(report["all_seen_us"]["n"], report["ops"], "{output}");
    let seen = report["latency_us"]["n"].as_u64();
    assert_eq!(
        seen,
        report["ops"].as_u64().map(|ops| ops * 200),
        "{output}"
    );
    assert!(report["rss_kib"].as_u64() > Some(0), "{output}");
    let added = |gauge: &str| {
        report[gauge].as_u64().unwrap() - report[&format!("{gauge}_before")].as_u64().unwrap()
    };
    assert!(added("watch_streams") <= 1, "{output}");
    assert!(added("watchers") <= 1, "{output}");
}

/// `etcd_bench`'s reader-writer and semaphore modes, briefly: no writer beside anyone else, no
/// more holders than the limit, no token out of order; both modes read and print their
/// handoffs, releases and the floor under their load, consistent with their percentiles.
#[test]
fn etcd_bench_rw_and_semaphore_modes_print_their_distributions() {
    let etcd = EtcdServer::start().unwrap();
    let url = format!("etcd://{}/bench-test/", etcd.endpoint());
    let bench = |mode: &str, extra: &[&str]| {
        let mut cmd = example("etcd_bench");
        cmd.args(["--endpoints", &url, "--mode", mode, "--duration", "1"]);
        cmd.args(["--clients", "6", "--probe-floor"]);
        cmd.args(extra);
        let output = run(cmd);
        let report: serde_json::Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(report["mode"], mode, "{output}");
        assert_eq!(report["clients"], 6, "{output}");
        assert_eq!(report["violations"], 0, "{output}");
        assert_eq!(report["latency_us"]["n"], report["ops"], "{output}");
        assert_eq!(report["latency_us"]["p50"], report["p50_us"], "{output}");
        assert_eq!(report["release_us"]["n"], report["ops"], "{output}");
        assert_eq!(
            report["loaded_floor_us"]["p50"], report["loaded_floor_p50_us"],
            "{output}"
        );
        (report, output)
    };

    let (report, output) = bench("rw", &[]);
    let (reads, writes) = (report["reads"].as_u64(), report["writes"].as_u64());
    assert_eq!(
        reads.zip(writes).map(|(r, w)| r + w),
        report["ops"].as_u64(),
        "{output}"
    );
    assert!(reads > writes && writes > Some(0), "{output}");
    assert_eq!(report["read_us"]["n"].as_u64(), reads, "{output}");
    assert_eq!(report["write_us"]["n"].as_u64(), writes, "{output}");
    let handoff = &report["writer_handoff_us"];
    assert_eq!(handoff["p50"], report["writer_handoff_p50_us"], "{output}");
    assert!(handoff["n"].as_u64() > Some(0), "{output}");
    assert!(handoff["n"].as_u64() <= writes, "{output}");

    let (report, output) = bench("semaphore", &["--limit", "2"]);
    assert_eq!(report["limit"], 2, "{output}");
    let handoff = &report["handoff_us"];
    assert_eq!(handoff["p50"], report["handoff_p50_us"], "{output}");
    assert!(handoff["n"].as_u64() > Some(0), "{output}");
    assert!(handoff["n"].as_u64() <= report["ops"].as_u64(), "{output}");

    let mut cmd = example("etcd_bench");
    cmd.args(["--endpoints", &url, "--mode", "rw", "--impl", "v3lock"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locksmith only"),
        "{out:?}"
    );
}

/// A free loopback port for an example's listener.
#[cfg(feature = "metrics")]
fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The value of the first sample line starting with `series`.
#[cfg(feature = "metrics")]
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
}

/// Three memory clients for 2 s: the scrape, fetched over HTTP from the example's listener,
/// counts their acquisitions, waits and holds.
#[cfg(feature = "metrics")]
#[test]
fn metrics_serves_a_prometheus_scrape_on_memory() {
    let mut cmd = example("metrics");
    cmd.args(["--secs", "2", "--listen", &free_port()]);
    let scrape = run(cmd);
    let acquired =
        r#"locksmith_acquisitions_total{backend="memory",kind="lock",outcome="acquired"}"#;
    assert!(sample(&scrape, acquired) >= 5.0, "{scrape}");
    assert!(
        sample(
            &scrape,
            r#"locksmith_sessions_started_total{backend="memory"}"#
        ) == 3.0
    );
    assert!(
        scrape.contains("# TYPE locksmith_wait_seconds histogram"),
        "{scrape}"
    );
    assert!(scrape.contains("# TYPE locksmith_holds gauge"), "{scrape}");
    let held = r#"locksmith_hold_seconds_count{backend="memory",kind="lock",end="released"}"#;
    assert!(sample(&scrape, held) >= 1.0, "{scrape}");
}

/// With `--etcd`, the etcd clients contend too and their keepalives are timed.
#[cfg(feature = "metrics")]
#[test]
fn metrics_serves_etcd_metrics_with_etcd_url() {
    let etcd = EtcdServer::start().unwrap();
    let mut cmd = example("metrics");
    let url = format!("etcd://{}/metrics-example/?ttl=2", etcd.endpoint());
    cmd.args(["--secs", "2", "--listen", &free_port(), "--etcd", &url]);
    let scrape = run(cmd);
    let acquired = r#"locksmith_acquisitions_total{backend="etcd",kind="lock",outcome="acquired"}"#;
    assert!(sample(&scrape, acquired) >= 1.0, "{scrape}");
    let keepalives = r#"locksmith_keepalive_seconds_count{backend="etcd"}"#;
    assert!(sample(&scrape, keepalives) >= 3.0, "{scrape}");
}
