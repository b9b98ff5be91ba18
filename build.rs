//! Two things decided at build time.
//!
//! Whether the cluster suite (tests/post_update.rs) is pointed at a cluster: libtest
//! cannot skip a test at run time, so a suite that finds no cluster would have to report
//! its checks as passed. Instead its tests are built as ignored, with the reason, unless
//! POSTFLIGHT_INVENTORY is set: `cargo test` then lists them as ignored, never as
//! passes, and cargo rebuilds the suite whenever the variable changes.
//!
//! What the binary is built from (`src/build_info.rs`): the git commit, the build date
//! and rustc's version, for `postflight version` and the reports.
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=POSTFLIGHT_INVENTORY");
    println!("cargo::rustc-check-cfg=cfg(postflight_cluster)");
    if std::env::var_os("POSTFLIGHT_INVENTORY").is_some_and(|value| !value.is_empty()) {
        println!("cargo::rustc-cfg=postflight_cluster");
    }

    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // The commit only: whether the tree had edits would make every `git add` a rebuild.
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=POSTFLIGHT_GIT_COMMIT={commit}");
    // A new commit or a checkout changes HEAD or the ref it names: build again then.
    if let Some(path) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo::rerun-if-changed={path}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
            println!("cargo::rerun-if-changed={path}");
        }
    }

    println!("cargo::rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    println!("cargo::rustc-env=POSTFLIGHT_BUILD_DATE={}", utc(epoch));

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rustc unknown".into());
    println!("cargo::rustc-env=POSTFLIGHT_RUSTC={version}");
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the civil-from-days algorithm; a
/// build script has no date library to lean on).
fn utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let seconds = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}
