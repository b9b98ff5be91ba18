//! What an SRE installs beside the binary, as they use it: shell completions that bash
//! really completes with, man pages that `man` really renders, and `postflight version`.

use std::process::Command;

const POSTFLIGHT: &str = env!("CARGO_BIN_EXE_postflight");

fn postflight(args: &[&str]) -> String {
    let output = Command::new(POSTFLIGHT)
        .args(args)
        .output()
        .expect("postflight runs");
    assert!(output.status.success(), "postflight {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// What bash's completion offers for the words typed so far.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT={point}; \
         _postflight postflight '{current}' '{previous}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        words = words.join(" "),
        cword = words.len() - 1,
        point = line.len(),
        current = words.last().unwrap(),
        previous = words[words.len().saturating_sub(2)],
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("postflight.bash");
    std::fs::write(&script, postflight(&["completions", "bash"])).unwrap();
    assert_eq!(
        bash_completes(&script, &["postflight", "ve"]),
        ["verify", "version"]
    );
    let flags = bash_completes(&script, &["postflight", "verify", "--re"]);
    assert_eq!(flags, ["--reboot"]);
    for shell in ["zsh", "fish"] {
        let text = postflight(&["completions", shell]);
        assert!(
            text.contains("verify") && text.contains("--reboot"),
            "{shell}: {text}"
        );
    }
}

#[test]
fn every_subcommand_has_a_man_page_that_man_renders() {
    let dir = tempfile::tempdir().unwrap();
    postflight(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "postflight.1",
        "postflight-verify.1",
        "postflight-mesh.1",
        "postflight-rolling.1",
        "postflight-drift.1",
        "postflight-version.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    let rendered = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("postflight-verify.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs (bash ci/report-tools.sh installs man-db)");
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        text.contains("postflight-verify") && text.contains("--reboot"),
        "{text}"
    );
    assert!(text.contains("Verify that a node is really back"), "{text}");
}

#[test]
fn version_says_what_built_the_binary_in_text_and_json() {
    let text = postflight(&["version"]);
    assert!(
        text.starts_with(&format!("postflight {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for field in [
        "commit: ",
        "built: ",
        "rustc: rustc ",
        "Kubernetes API: v1.",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&postflight(&["version", "--output", "json"])).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    let commit = json["commit"].as_str().unwrap();
    assert!(commit == "unknown" || commit.len() == 12, "{commit}");
    assert!(
        text.contains(&format!("commit: {commit}\n")),
        "the two outputs agree"
    );
}

/// `kubectl postflight …` finds the binary on PATH as `kubectl-postflight`, as kubectl
/// plugins are found, and behaves exactly as the binary does, errors included.
#[test]
fn kubectl_runs_it_as_a_plugin_with_the_same_answers() {
    let kubectl = std::env::var("POSTFLIGHT_LAB_K8S_BIN")
        .expect("POSTFLIGHT_LAB_K8S_BIN names the lab's Kubernetes binary, whose kubectl finds plugins (ci/test.sh sets it)");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(POSTFLIGHT, dir.path().join("kubectl-postflight")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = |args: &[&str]| {
        Command::new(&kubectl)
            .arg("kubectl")
            .arg("postflight")
            .args(args)
            .env("PATH", &path)
            .output()
            .expect("kubectl runs")
    };
    let version = plugin(&["version"]);
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        postflight(&["version"])
    );
    let inventory = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/inventory/example-staging.yaml"
    );
    let args = [
        "--inventory",
        inventory,
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "verify",
        "--node",
        "k8s-worker-03",
    ];
    let through_kubectl = plugin(&args);
    let direct = Command::new(POSTFLIGHT).args(args).output().unwrap();
    assert_eq!(
        through_kubectl.status.code(),
        Some(2),
        "{through_kubectl:?}"
    );
    assert_eq!(through_kubectl.status.code(), direct.status.code());
    assert_eq!(through_kubectl.stderr, direct.stderr);
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("/nonexistent/kubeconfig"),
        "{direct:?}"
    );
}

/// ci/release.sh on a machine without its tools names each one and how to install it,
/// and builds nothing.
#[test]
fn the_release_script_names_every_tool_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH with the shell's own tools and cargo, and none of the release's.
    for program in [
        "bash",
        "sed",
        "head",
        "dirname",
        "grep",
        "sha256sum",
        "cargo",
        "rustup",
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {program}"))
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(!path.is_empty(), "{program} is on this machine");
        std::os::unix::fs::symlink(path, dir.path().join(program)).unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/release.sh");
    let output = Command::new(dir.path().join("bash"))
        .arg(script)
        .arg(env!("CARGO_PKG_VERSION"))
        .env("PATH", dir.path())
        .env("POSTFLIGHT_DIST", dir.path().join("dist"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    for missing in [
        "musl-gcc (apt-get install musl-tools)",
        "umoci (apt-get install umoci)",
        "cargo-cyclonedx (cargo install --locked cargo-cyclonedx@0.5.9)",
    ] {
        assert!(said.contains(missing), "{missing} in {said}");
    }
    assert!(!dir.path().join("dist").exists(), "nothing was built");
    let wrong = Command::new("bash")
        .arg(script)
        .arg("9.9.9")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("is not Cargo.toml's"));
}
