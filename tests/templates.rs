//! The pipeline templates and example inventories users copy must at least be what they
//! claim to be: YAML that parses, and postflight command lines whose flags exist.

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

/// The `--flags` of a template's postflight command lines. What follows `kubectl` on a
/// line is kubectl's (`postflight rbac | kubectl apply -f -` keeps postflight's part).
fn long_flags(text: &str) -> BTreeSet<String> {
    let postflight_part: String = text
        .lines()
        .map(|line| line.split("kubectl").next().unwrap_or_default())
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

/// Jenkins: parameters reach the shell as variables in single-quoted `sh`, the loop
/// variable does not shadow the `node` step, and the pipeline has a deadline.
#[test]
fn the_jenkinsfile_quotes_its_parameters_and_has_a_deadline() {
    let jenkinsfile = template("Jenkinsfile");
    let code: String = jenkinsfile
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !code.lines().any(|l| l.trim_start().starts_with("sh \"")),
        "a double-quoted sh interpolates: {code}"
    );
    assert!(
        !code.contains("for (node "),
        "the loop shadows the node step"
    );
    assert!(code.contains("timeout("), "no timeout");
}

/// ansible-lint's name[casing], and a drift finding must not stop the play before the
/// task that fixes it.
#[test]
fn the_ansible_playbook_names_its_tasks_and_fixes_drift_it_finds() {
    let playbook = yaml("ansible-rolling-update.yml");
    let mut names = Vec::new();
    for play in playbook.as_array().unwrap() {
        names.push(play["name"].as_str().unwrap_or_default().to_string());
        for task in play["tasks"].as_array().into_iter().flatten() {
            names.push(task["name"].as_str().unwrap_or_default().to_string());
        }
    }
    for name in &names {
        assert!(
            name.chars().next().is_some_and(char::is_uppercase),
            "name[casing]: {name:?}"
        );
    }
    let drift = &playbook[0]["tasks"][0];
    assert_eq!(drift["failed_when"], "drift.rc not in [0, 1]");
    assert_eq!(drift["register"], "drift");
}
