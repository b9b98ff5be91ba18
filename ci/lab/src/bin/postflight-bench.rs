//! The benchmark: runs postflight's scenarios on a lab of each given size and prints one
//! table per size — every figure measured in the same run, with the ratio to the node's
//! own reboot — so the speed targets are shown, never asserted by a timed test.
//!
//! `bash ci/bench.sh 5 20 50` builds release binaries and runs it.

use anyhow::{bail, Context, Result};
use clap::Parser;
use postflight_lab::controlplane::ControlPlanePaths;
use postflight_lab::topology::KubeletKind;
use postflight_lab::{Lab, LabConfig};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "postflight's benchmark on labs of the given sizes")]
struct Args {
    /// Lab sizes, in nodes.
    #[arg(default_values_t = [5])]
    sizes: Vec<usize>,
    /// The postflight binary (a release build).
    #[arg(long)]
    postflight: PathBuf,
    /// Healthy reboots per size, for the medians.
    #[arg(long, default_value_t = 5)]
    reboots: usize,
    /// The smallest size run on simulated kubelets (the scale profile): a 2-core machine
    /// carries real nodes up to about ten. Below it every node is real.
    #[arg(long, default_value_t = 11)]
    simulated_from: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    for &size in &args.sizes {
        let table = bench(size, &args)?;
        println!("{table}");
    }
    Ok(())
}

/// One run of postflight, with what it cost.
struct Measured {
    wall: Duration,
    peak_rss_kib: u64,
    report: Value,
    api_requests: usize,
    code: i32,
}

fn run_postflight(lab: &Lab, postflight: &Path, args: &[&str], dir: &Path) -> Result<Measured> {
    let json = dir.join("report.json");
    let audit = ControlPlanePaths::new(&lab.paths().state_dir).audit_log();
    let audit_before = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(postflight)
        .arg("--inventory")
        .arg(lab.paths().inventory())
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .context("running postflight under /usr/bin/time")?;
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let peak_rss_kib = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no peak RSS from /usr/bin/time: {stderr}"))?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    Ok(Measured {
        wall,
        peak_rss_kib,
        report,
        api_requests: requests_since(&audit, audit_before)?,
        code: output
            .status
            .code()
            .map_or(-1, |code| if code == 0 { 0 } else { code }),
    })
}

/// Requests postflight's ServiceAccount made since `offset` in the audit log: one audit
/// ID per request (a watch or exec logs two stages under one ID).
fn requests_since(audit: &Path, offset: u64) -> Result<usize> {
    let text = std::fs::read(audit).with_context(|| format!("reading {}", audit.display()))?;
    let new = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
    let ids: BTreeSet<String> = new
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| event["auditID"].as_str().map(String::from))
        .collect();
    Ok(ids.len())
}

fn step_end(node: &Value, step: &str) -> Option<f64> {
    node["steps"].as_array()?.iter().find_map(|s| {
        (s["step"] == step).then(|| {
            s["started_after"].as_f64().unwrap_or(0.0) + s["duration"].as_f64().unwrap_or(0.0)
        })
    })
}

fn step_start(node: &Value, step: &str) -> Option<f64> {
    node["steps"]
        .as_array()?
        .iter()
        .find_map(|s| (s["step"] == step).then(|| s["started_after"].as_f64().unwrap_or(0.0)))
}

/// The reboot's own figures from a `verify --reboot` report.
struct RebootFigures {
    /// calico-node Ready → the last verdict.
    calico_to_verdict: f64,
    /// Node Ready → the last verdict.
    ready_to_verdict: f64,
    /// The node's own reboot: the reboot sent → calico-node Ready.
    own_reboot: f64,
    /// The whole run minus the node's own reboot.
    overhead: f64,
}

fn reboot_figures(report: &Value) -> Option<RebootFigures> {
    let node = &report["nodes"][0];
    let ready_at = step_end(node, "wait for the node to be Ready on a new boot")?;
    let ready_to_verdict = node["ready_to_verdict"].as_f64()?;
    let calico_ready = step_end(node, "wait for calico-node Ready")?;
    let sent = step_start(node, "issue the reboot")?;
    let verdict = ready_at + ready_to_verdict;
    let own_reboot = calico_ready - sent;
    Some(RebootFigures {
        calico_to_verdict: verdict - calico_ready,
        ready_to_verdict,
        own_reboot,
        overhead: node["elapsed"].as_f64()? - own_reboot,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn worst(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// The machine's CPU use over `window`, in cores: the lab at rest.
fn cores_busy(window: Duration) -> Result<f64> {
    let sample = || -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok((fields.iter().sum(), idle))
    };
    let (total_before, idle_before) = sample()?;
    std::thread::sleep(window);
    let (total_after, idle_after) = sample()?;
    let cores = std::thread::available_parallelism()?.get() as f64;
    let busy = 1.0 - (idle_after - idle_before) as f64 / (total_after - total_before).max(1) as f64;
    Ok(busy * cores)
}

/// Resident memory of the lab: its daemon and everything under it (control plane,
/// kubelets' containers, BIRD, sshd), in MiB.
fn lab_memory_mib(name: &str) -> Result<f64> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    let mut daemon = None;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        let ppid: u32 = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        parents.entry(ppid).or_default().push(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" daemon --name ") && cmdline.contains(&format!("--name {name} ")) {
            daemon = Some(pid);
        }
    }
    let Some(daemon) = daemon else {
        bail!("the daemon of lab {name} is not running")
    };
    let mut total_kib = 0u64;
    let mut todo = vec![daemon];
    while let Some(pid) = todo.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            total_kib += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        todo.extend(parents.get(&pid).into_iter().flatten());
    }
    Ok(total_kib as f64 / 1024.0)
}

fn bench(size: usize, args: &Args) -> Result<String> {
    let name = format!("bench{size}");
    let started = Instant::now();
    let kubelet = if size >= args.simulated_from {
        KubeletKind::Simulated
    } else {
        KubeletKind::Real
    };
    let lab = Lab::up(LabConfig::new(&name).nodes(size).kubelet(kubelet))
        .context("bringing the lab up")?;
    let up = started.elapsed();
    let dir = std::env::temp_dir().join(format!("postflight-bench-{size}"));
    std::fs::create_dir_all(&dir)?;
    let workers: Vec<String> = lab
        .node_names()
        .into_iter()
        .filter(|n| n.contains("worker"))
        .collect();
    if workers.is_empty() {
        bail!("a lab of {size} nodes has no worker to reboot");
    }
    // Let the lab settle after its start before it is measured at rest.
    std::thread::sleep(Duration::from_secs(10));
    let idle_cores = cores_busy(Duration::from_secs(10))?;
    let lab_mib = lab_memory_mib(&name)?;

    let mut rows: Vec<(String, String, &str)> = Vec::new();
    let mut row = |figure: &str, value: String, target: &'static str| {
        rows.push((figure.to_string(), value, target));
    };
    row("lab up", format!("{:.1} s", up.as_secs_f64()), "");
    row(
        "lab at rest",
        format!("{idle_cores:.2} cores"),
        "< 1 core at 50 nodes",
    );
    row("lab memory", format!("{lab_mib:.0} MiB"), "reported");

    let verify = run_postflight(
        &lab,
        &args.postflight,
        &["verify", "--node", &workers[0]],
        &dir,
    )?;
    row(
        "verify, no reboot",
        format!("{:.2} s (exit {})", verify.wall.as_secs_f64(), verify.code),
        "≤ 5 s at 50 nodes",
    );
    let drift = run_postflight(&lab, &args.postflight, &["drift"], &dir)?;
    row(
        "drift, every node",
        format!("{:.2} s (exit {})", drift.wall.as_secs_f64(), drift.code),
        "≤ 5 s at 50 nodes",
    );
    let mesh = run_postflight(&lab, &args.postflight, &["mesh"], &dir)?;
    let pairs: usize = mesh.report["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["results"][0]["pairs"].as_array().map(Vec::len))
        .sum();
    let probing = step_end(&mesh.report["nodes"][0], "probe the pod mesh").unwrap_or(0.0)
        - step_start(&mesh.report["nodes"][0], "probe the pod mesh").unwrap_or(0.0);
    row(
        "mesh",
        format!(
            "{pairs} pairs: {probing:.2} s probing, {:.2} s in all (exit {})",
            mesh.wall.as_secs_f64(),
            mesh.code
        ),
        "≤ 30 s at 50 nodes",
    );

    let (mut calico, mut ready, mut overhead, mut own, mut ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut requests = Vec::new();
    let mut peak_rss = verify
        .peak_rss_kib
        .max(drift.peak_rss_kib)
        .max(mesh.peak_rss_kib);
    for round in 0..args.reboots {
        let node = &workers[round % workers.len()];
        // As between the nodes of a rolling update: real calico-node is not Ready while a
        // BGP peer is down, so each reboot starts once its peers have settled again.
        settle(&lab)?;
        let run = run_postflight(
            &lab,
            &args.postflight,
            &["verify", "--node", node, "--reboot"],
            &dir,
        )?;
        if run.code != 0 {
            bail!(
                "a healthy reboot of {node} did not pass (exit {}): {}",
                run.code,
                run.report
            );
        }
        let figures = reboot_figures(&run.report).context("a reboot report without its steps")?;
        calico.push(figures.calico_to_verdict);
        ready.push(figures.ready_to_verdict);
        overhead.push(figures.overhead);
        own.push(figures.own_reboot);
        ratio.push((figures.overhead + figures.own_reboot) / figures.own_reboot);
        requests.push(run.api_requests as f64);
        peak_rss = peak_rss.max(run.peak_rss_kib);
    }
    row(
        "calico-node Ready → verdict, healthy",
        format!(
            "{:.2} s median, {:.2} s worst",
            median(&mut calico),
            worst(&calico)
        ),
        "≤ 0.5 s",
    );
    row(
        "node Ready → verdict, healthy",
        format!("{:.2} s median", median(&mut ready)),
        "",
    );
    row(
        "the node's own reboot (sent → calico-node Ready)",
        format!("{:.2} s median", median(&mut own)),
        "",
    );
    row(
        "overhead of verify --reboot over it",
        format!(
            "{:.2} s median, {:.2} s worst",
            median(&mut overhead),
            worst(&overhead)
        ),
        "≤ 1.5 s at 5 nodes, ≤ 3 s at 50",
    );
    row(
        "verify --reboot ÷ the node's own reboot",
        format!("{:.2} median", median(&mut ratio)),
        "",
    );
    row(
        "API requests per verify --reboot",
        format!(
            "{:.0} median, {:.0} most",
            median(&mut requests),
            worst(&requests)
        ),
        "≤ 40 at 5 nodes",
    );

    let incident_node = workers.last().expect("a worker");
    lab.os_update(incident_node, true)?;
    settle(&lab)?;
    let incident = run_postflight(
        &lab,
        &args.postflight,
        &["verify", "--node", incident_node, "--reboot"],
        &dir,
    )?;
    let diagnosed = incident.report["nodes"][0]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| !r["diagnosis"].is_null());
    row(
        "node Ready → failure verdict, incident",
        format!(
            "{:.2} s (exit {}, diagnosis {})",
            incident.report["nodes"][0]["ready_to_verdict"]
                .as_f64()
                .unwrap_or(f64::NAN),
            incident.code,
            if diagnosed { "named" } else { "MISSING" }
        ),
        "≤ 3 s",
    );
    peak_rss = peak_rss.max(incident.peak_rss_kib);
    row(
        "peak RSS of postflight",
        format!("{:.1} MB", peak_rss as f64 / 1024.0),
        "≤ 64 MB at 50 nodes",
    );
    lab.down();

    let mut table = format!(
        "## {size} nodes, {} (release build, {} cores)\n\n| figure | measured | target |\n|---|---|---|\n",
        match kubelet {
            KubeletKind::Real => "real",
            KubeletKind::Simulated => "simulated kubelets (the scale profile)",
        },
        std::thread::available_parallelism()?.get()
    );
    for (figure, value, target) in rows {
        table.push_str(&format!("| {figure} | {value} | {target} |\n"));
    }
    Ok(table)
}

/// Waits until every calico-node is Ready (after a reboot its peers' sessions take a
/// readiness probe or two to be seen Established again).
fn settle(lab: &Lab) -> Result<()> {
    let output = Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(lab.paths().kubeconfig())
        .args(["-n", lab.topology().calico.namespace()])
        .args([
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "k8s-app=calico-node",
        ])
        .arg("--timeout=300s")
        .output()
        .context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "calico-node did not settle: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
