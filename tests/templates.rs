//! The pipeline templates and example inventories users copy must at least be what they
//! claim to be: YAML that parses, and postflight command lines whose flags exist. The
//! templates also pass their CI systems' real linters (actionlint and zizmor, GitLab CI's
//! schema, ansible-lint's production profile), installed by `ci/linters.sh`; a linter
//! that is not installed fails its test, never skips it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const POSTFLIGHT: &str = env!("CARGO_BIN_EXE_postflight");

fn repository_files(folder: &str, extension: &str) -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.{extension} in {}",
        folder.display()
    );
    files
}

#[test]
fn every_pipeline_template_is_valid_yaml() {
    for path in repository_files("ci/pipelines", "yml") {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(error) = serde_saphyr::from_str::<serde_json::Value>(&text) {
            panic!("{}: {error}", path.display());
        }
    }
}

/// Commands other than postflight that templates run: what follows one on a line is its
/// own (`postflight rbac | kubectl apply -f -` keeps postflight's part).
const OTHER_COMMANDS: [&str; 2] = ["kubectl", "cargo "];

/// The `--flags` of a template's postflight command lines.
fn long_flags(text: &str) -> BTreeSet<String> {
    let postflight_part: String = text
        .lines()
        .map(|line| {
            let other = OTHER_COMMANDS.iter().filter_map(|c| line.find(c)).min();
            &line[..other.unwrap_or(line.len())]
        })
        .collect::<Vec<_>>()
        .join("\n");
    postflight_part
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '"' | '\'' | '='))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_owned)
        .collect()
}

fn help(args: &[&str]) -> String {
    let output = Command::new(POSTFLIGHT).args(args).output().unwrap();
    assert!(output.status.success(), "postflight {args:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A flag misspelt or renamed in a template would fail a user's pipeline at its first
/// run: every `--flag` in a template must be one the subcommands it calls accept.
#[test]
fn every_flag_in_a_template_is_one_postflight_accepts() {
    let templates = repository_files("ci/pipelines", "yml")
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/pipelines/Jenkinsfile")]);
    for path in templates {
        let text = std::fs::read_to_string(&path).unwrap();
        let subcommands: Vec<&str> = ["verify", "rolling", "drift", "diagnose", "rbac"]
            .into_iter()
            .filter(|subcommand| text.contains(&format!(" {subcommand}")))
            .collect();
        assert!(
            !subcommands.is_empty(),
            "{} runs no postflight subcommand",
            path.display()
        );
        let mut accepted = long_flags(&help(&["--help"]));
        for subcommand in &subcommands {
            accepted.extend(long_flags(&help(&[subcommand, "--help"])));
        }
        for flag in long_flags(&text) {
            assert!(
                accepted.contains(&flag),
                "{}: {flag} is not a flag of postflight {subcommands:?}",
                path.display()
            );
        }
    }
}

fn template(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ci/pipelines")
            .join(name),
    )
    .unwrap()
}

fn yaml(name: &str) -> serde_json::Value {
    serde_saphyr::from_str(&template(name)).unwrap()
}

/// GitLab refuses a job whose stage is not in `stages:`.
#[test]
fn every_gitlab_job_runs_in_a_declared_stage() {
    let pipeline = yaml("gitlab-ci.yml");
    let stages: Vec<&str> = pipeline["stages"]
        .as_array()
        .expect("a stages: list")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    let jobs: Vec<(&String, &serde_json::Value)> = pipeline
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, job)| job.get("script").is_some())
        .collect();
    assert!(!jobs.is_empty());
    for (name, job) in jobs {
        let stage = job["stage"].as_str().unwrap_or("test");
        assert!(
            stages.contains(&stage),
            "{name}: stage {stage} is not in {stages:?}"
        );
    }
}

/// A workflow asks for no more than it needs, and no input is pasted into a script
/// (template injection): inputs reach `run:` as environment variables.
#[test]
fn the_github_workflow_has_least_permissions_and_no_template_injection() {
    let workflow = yaml("github-actions.yml");
    assert_eq!(
        workflow["permissions"],
        serde_json::json!({"contents": "read"})
    );
    for (name, job) in workflow["jobs"].as_object().unwrap() {
        assert!(job["timeout-minutes"].is_number(), "{name} has no timeout");
        for step in job["steps"].as_array().unwrap() {
            if let Some(run) = step["run"].as_str() {
                assert!(
                    !run.contains("${{"),
                    "{name}: an expression inside run: {run}"
                );
            }
        }
    }
}

/// Jenkins: parameters reach the shell only as environment variables (no `params.` in
/// Groovy, no interpolating string given to `sh`), the loop variable does not shadow the
/// `node` step, the pipeline has a deadline, and two builds never run at once.
#[test]
fn the_jenkinsfile_reads_parameters_from_the_environment_with_a_deadline_one_build_at_a_time() {
    let jenkinsfile = template("Jenkinsfile");
    // `//` starts a comment, except in a URL or inside a shell script's string.
    let code: String = jenkinsfile
        .lines()
        .map(|l| match l.find("// ") {
            Some(at) if !l[..at].contains('\'') => &l[..at],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // Every `sh` step is given a single-quoted string, which Groovy does not interpolate.
    let sh_steps: Vec<&str> = code
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("sh ") || l.starts_with("sh("))
        .collect();
    assert!(!sh_steps.is_empty(), "no sh step: {code}");
    for step in sh_steps {
        let script = step[2..]
            .trim_start_matches(['(', ' '])
            .trim_start_matches("script:")
            .trim_start();
        assert!(
            script.starts_with('\''),
            "a string that interpolates given to sh: {step}"
        );
    }
    assert!(!code.contains("\"\"\""), "a GString script: {code}");
    assert!(
        !code.contains("params."),
        "a parameter read in Groovy: {code}"
    );
    assert!(
        !code.contains("${"),
        "Groovy interpolation, or a ${{}} that reads as one: {code}"
    );
    assert!(
        !code.contains("for (node "),
        "the loop shadows the node step"
    );
    let options = code
        .split("options {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("an options { } block");
    assert!(options.contains("timeout("), "no timeout: {options}");
    assert!(
        options.contains("disableConcurrentBuilds()"),
        "concurrent builds allowed: {options}"
    );
    // Every declared parameter is read by the shell, as $NAME.
    for declared in code.split("name: '").skip(1) {
        let name = declared.split('\'').next().unwrap();
        assert!(
            code.contains(&format!("${name}")),
            "parameter {name} is not read from the environment"
        );
    }
}

/// The plays in order, each with its tasks, as (play name, hosts, tasks).
fn ansible_plays() -> Vec<(String, String, Vec<serde_json::Value>)> {
    let playbook = yaml("ansible-rolling-update.yml");
    playbook
        .as_array()
        .expect("a playbook is a list of plays")
        .iter()
        .map(|play| {
            (
                play["name"].as_str().unwrap_or_default().to_string(),
                play["hosts"].as_str().unwrap_or_default().to_string(),
                play["tasks"].as_array().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

fn runs_postflight(task: &serde_json::Value, subcommand: &str) -> bool {
    let argv = &task["ansible.builtin.command"]["argv"];
    argv[0] == "postflight"
        && argv
            .as_array()
            .is_some_and(|argv| argv.iter().any(|a| a == subcommand))
}

fn pins_the_tmpfiles_entry(task: &serde_json::Value) -> bool {
    task["ansible.builtin.copy"]["dest"] == "/etc/tmpfiles.d/calico.conf"
}

/// ansible-lint's name[casing]; and the order that fixes drift before gating on it: the
/// entry is put back on every node, then `postflight drift` gates (any finding stops the
/// play, before a reboot), then each node is updated, its entry put back again (the
/// update may have replaced it) and only then rebooted and verified.
#[test]
fn the_ansible_playbook_fixes_drift_before_it_gates_on_it() {
    let plays = ansible_plays();
    for (play, _, tasks) in &plays {
        for name in std::iter::once(play.as_str())
            .chain(tasks.iter().map(|t| t["name"].as_str().unwrap_or_default()))
        {
            assert!(
                name.chars().next().is_some_and(char::is_uppercase),
                "name[casing]: {name:?}"
            );
        }
    }
    let play_where = |found: &dyn Fn(&serde_json::Value) -> bool| {
        plays
            .iter()
            .position(|(_, _, tasks)| tasks.iter().any(found))
    };
    let fix = play_where(&pins_the_tmpfiles_entry).expect("a play that pins the entry");
    let gate = play_where(&|t| runs_postflight(t, "drift")).expect("a drift gate");
    let rolling = play_where(&|t| runs_postflight(t, "verify")).expect("a verify");
    assert!(
        fix < gate && gate < rolling,
        "plays out of order: fix {fix}, drift gate {gate}, rolling update {rolling}"
    );
    assert_eq!(
        plays[fix].1, plays[rolling].1,
        "the fix misses nodes it updates"
    );
    let drift = plays[gate]
        .2
        .iter()
        .find(|t| runs_postflight(t, "drift"))
        .unwrap();
    assert!(
        drift.get("failed_when").is_none() && drift.get("ignore_errors").is_none(),
        "the drift gate lets a finding through: {drift}"
    );
    let tasks = &plays[rolling].2;
    let update = tasks
        .iter()
        .position(|t| t.get("ansible.builtin.apt").is_some())
        .expect("an update task");
    let pin = tasks
        .iter()
        .rposition(pins_the_tmpfiles_entry)
        .expect("the entry pinned in the rolling play");
    let verify = tasks
        .iter()
        .position(|t| runs_postflight(t, "verify"))
        .unwrap();
    assert!(
        update < pin && pin < verify,
        "the update {update}, the pin {pin} and the reboot {verify} are out of order"
    );
    assert!(runs_postflight(&tasks[verify], "--reboot"));
    let play = &yaml("ansible-rolling-update.yml")[rolling];
    assert_eq!(play["serial"], 1);
    assert_eq!(play["max_fail_percentage"], 0);
}

/// Every action is pinned by a full commit SHA with the release tag beside it in a
/// comment, so that what runs is what was reviewed; a tag or branch can be moved.
#[test]
fn every_github_action_is_pinned_by_commit() {
    let text = template("github-actions.yml");
    let workflow = yaml("github-actions.yml");
    let mut from_yaml = Vec::new();
    for job in workflow["jobs"].as_object().unwrap().values() {
        for step in job["steps"].as_array().unwrap() {
            if let Some(uses) = step["uses"].as_str() {
                from_yaml.push(uses.to_string());
            }
        }
    }
    assert!(!from_yaml.is_empty());
    let mut from_lines = Vec::new();
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        let Some(value) = line.strip_prefix("uses:") else {
            continue;
        };
        let (reference, comment) = value.split_once('#').unwrap_or((value, ""));
        let reference = reference.trim();
        let (action, sha) = reference
            .split_once('@')
            .unwrap_or_else(|| panic!("{reference}: no @ref"));
        assert_eq!(action.split('/').count(), 2, "{reference}: owner/name@sha");
        assert!(
            sha.len() == 40
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{reference}: not pinned by a 40-hex commit SHA"
        );
        let tag = comment.trim();
        assert!(
            tag.starts_with('v') && tag[1..].starts_with(|c: char| c.is_ascii_digit()),
            "{reference}: no release tag in a comment beside it (# v1.2.3)"
        );
        from_lines.push(reference.to_string());
    }
    assert_eq!(from_lines, from_yaml, "a uses: the line check did not see");
}

/// The checks show in the run: a JUnit summary of every check, and both reports kept,
/// also when the gate failed.
#[test]
fn the_github_workflow_publishes_its_results_in_the_run() {
    let workflow = yaml("github-actions.yml");
    assert_eq!(
        workflow["concurrency"]["cancel-in-progress"], false,
        "a second run must wait, not cancel a reboot"
    );
    let steps = workflow["jobs"]["verify"]["steps"].as_array().unwrap();
    let gate = steps
        .iter()
        .position(|s| s["run"].as_str().is_some_and(|r| r.contains("postflight ")))
        .expect("a postflight step");
    let run = steps[gate]["run"].as_str().unwrap();
    assert!(run.contains("--junit junit.xml") && run.contains("--json postflight.json"));
    let after = &steps[gate + 1..];
    let summary = after
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("mikepenz/action-junit-report@"))
        })
        .expect("a step that turns junit.xml into the run's summary");
    assert_eq!(summary["if"], "always()");
    assert_eq!(summary["with"]["report_paths"], "junit.xml");
    assert_eq!(
        summary["with"]["annotate_only"], true,
        "a check run would need checks: write"
    );
    assert_eq!(summary["with"]["detailed_summary"], true);
    let upload = after
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact@"))
        })
        .expect("an upload of the reports");
    assert_eq!(upload["if"], "always()");
    let paths = upload["with"]["path"].as_str().unwrap();
    assert!(paths.contains("junit.xml") && paths.contains("postflight.json"));
}

/// GitLab: postflight is installed by a job of an earlier stage, with flags that
/// `cargo install` accepts, from this repository (the one the inventories are in); the
/// binary it leaves is the artifact, and every job that runs postflight needs that job
/// and puts the binary on its PATH.
#[test]
fn the_gitlab_pipeline_installs_postflight_before_it_runs_it() {
    let pipeline = yaml("gitlab-ci.yml");
    let stages: Vec<&str> = pipeline["stages"]
        .as_array()
        .expect("a stages: list")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    let jobs = pipeline.as_object().unwrap();
    let script = |job: &serde_json::Value| -> Vec<String> {
        ["before_script", "script"]
            .iter()
            .flat_map(|key| job[*key].as_array().cloned().unwrap_or_default())
            .filter_map(|line| line.as_str().map(str::to_owned))
            .collect()
    };
    let (install_name, install) = jobs
        .iter()
        .find(|(_, job)| script(job).iter().any(|l| l.starts_with("cargo install ")))
        .expect("a job that installs postflight");
    let install_line = script(install)
        .into_iter()
        .find(|l| l.starts_with("cargo install "))
        .unwrap();
    let words: Vec<&str> = install_line.split_whitespace().collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .args(["install", "--help"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{cargo} install --help: {output:?}"
    );
    let cargo_help = String::from_utf8(output.stdout).unwrap();
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(
            cargo_help.contains(&format!("{flag} ")),
            "{flag} is not a flag of cargo install"
        );
    }
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .map(|at| words[at + 1])
            .unwrap_or_else(|| panic!("{install_line}: no {flag}"))
    };
    assert!(words.contains(&"--locked"), "{install_line}: not --locked");
    assert_eq!(
        after("--path"),
        ".",
        "postflight is built from its own repository"
    );
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"postflight\""));
    let binary = format!("{}/bin/postflight", after("--root"));
    assert!(
        install["artifacts"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| *p == binary),
        "{install_name} does not keep {binary}"
    );
    let install_stage = install["stage"].as_str().unwrap();
    let mut gates = 0;
    for (name, job) in jobs {
        let lines = script(job);
        let Some(run) = lines.iter().position(|l| l.starts_with("postflight ")) else {
            continue;
        };
        gates += 1;
        let stage = job["stage"].as_str().unwrap_or("test");
        let position = |s: &str| stages.iter().position(|x| *x == s).unwrap();
        assert!(
            position(install_stage) < position(stage),
            "{name} runs in {stage}, not after {install_stage}"
        );
        assert!(
            job["needs"]
                .as_array()
                .is_some_and(|needs| needs.iter().any(|n| n == install_name.as_str())),
            "{name} does not need {install_name}"
        );
        let bin = format!("$CI_PROJECT_DIR/{}/bin", after("--root"));
        assert!(
            lines[..run]
                .iter()
                .any(|l| l.starts_with("export PATH=") && l.contains(&bin)),
            "{name} does not put {bin} on its PATH before it runs postflight"
        );
    }
    assert!(gates > 0, "no job runs postflight");
}

// The real linters, installed by ci/linters.sh (pinned versions, outside the repository).
// A missing one fails the test: a linter that did not run must never read as a pass.

fn pipelines() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/pipelines")
}

fn linter_path(name: &str) -> PathBuf {
    let bin = std::env::var_os("POSTFLIGHT_LINTERS_BIN").map_or_else(
        || PathBuf::from("/opt/postflight-linters/bin"),
        PathBuf::from,
    );
    let path = bin.join(name);
    assert!(
        path.is_file(),
        "{} is missing: install the template linters with `bash ci/linters.sh` \
         (or point POSTFLIGHT_LINTERS_BIN at the directory it installed them in)",
        path.display()
    );
    path
}

fn linter(name: &str) -> Command {
    let mut command = Command::new(linter_path(name));
    command.current_dir(pipelines()).env("NO_COLOR", "1");
    command
}

/// Runs it: whether it exited 0, and everything it said.
fn run(mut command: Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let said = format!(
        "{command:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// The template passes the linter, and a copy broken by `break_it` does not (so the
/// linter really read the file, with the rules that matter switched on).
fn assert_linter_passes(
    template_name: &str,
    lint: fn(&Path) -> Command,
    break_it: impl Fn(&str) -> String,
) {
    let (clean, said) = run(lint(&pipelines().join(template_name)));
    assert!(clean, "{template_name} has findings:\n{said}");

    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join(template_name);
    std::fs::write(&broken, break_it(&template(template_name))).unwrap();
    let (clean, said) = run(lint(&broken));
    assert!(
        !clean,
        "the linter let a broken {template_name} through:\n{said}"
    );
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?} to break in {text}");
    text.replacen(from, to, 1)
}

fn actionlint(path: &Path) -> Command {
    let mut command = linter("actionlint");
    command
        .arg("-no-color")
        .arg("-config-file")
        .arg(pipelines().join("actionlint.yaml"))
        .arg("-shellcheck")
        .arg(linter_path("shellcheck"))
        .arg("-pyflakes=")
        .arg(path);
    command
}

/// actionlint, with ShellCheck on the run: scripts (an unquoted "$NODE" is SC2086).
#[test]
fn the_github_workflow_passes_actionlint() {
    assert_linter_passes("github-actions.yml", actionlint, |text| {
        replace_once(text, "--node \"$NODE\"", "--node $NODE")
    });
}

fn zizmor(path: &Path) -> Command {
    let mut command = linter("zizmor");
    command
        .args([
            "--offline",
            "--no-config",
            "--no-progress",
            "--color",
            "never",
        ])
        .args(["--min-severity", "medium"])
        .arg(path);
    command
}

/// zizmor, offline (its audits that ask GitHub are skipped): nothing above low.
#[test]
fn the_github_workflow_passes_zizmor() {
    assert_linter_passes("github-actions.yml", zizmor, |text| {
        let pin = "actions/checkout@";
        let sha = text.find(pin).expect("a checkout step") + pin.len();
        format!("{}v7{}", &text[..sha], &text[sha + 40..])
    });
}

fn gitlab_schema(path: &Path) -> Command {
    let mut command = linter("check-jsonschema");
    command
        .args(["--builtin-schema", "vendor.gitlab-ci", "--color", "never"])
        .arg(path);
    command
}

/// GitLab CI's own JSON schema (the one its editor uses), vendored in check-jsonschema.
#[test]
fn the_gitlab_pipeline_matches_gitlabs_schema() {
    assert_linter_passes("gitlab-ci.yml", gitlab_schema, |text| {
        replace_once(text, "expire_in: 1 day", "expire_in: [1 day]")
    });
}

fn ansible_lint(path: &Path) -> Command {
    let mut command = linter("ansible-lint");
    command
        .args([
            "--offline",
            "--strict",
            "--nocolor",
            "--profile",
            "production",
        ])
        .arg(path);
    command
}

/// ansible-lint's strictest profile, warnings included.
#[test]
fn the_ansible_playbook_passes_ansible_lint_production() {
    assert_linter_passes("ansible-rolling-update.yml", ansible_lint, |text| {
        replace_once(text, "ansible.builtin.apt:", "apt:")
    });
}
