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
