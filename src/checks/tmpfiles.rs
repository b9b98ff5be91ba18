//! The host state Calico needs: the tmpfiles.d entry that rebuilds the run directory at
//! every boot, what the next boot will make of it, and the directory as it is now.

use super::{Evidence, Judgement, RunDirStat, Verdict};
use crate::expectations::{canonical_run_path, CalicoExpectations, TmpfilesDeclaration};

/// `tmpfiles_config_present` where the inventory declares the entry: the file exists and
/// has the declared line (whitespace between fields does not matter, as systemd-tmpfiles
/// reads it).
pub fn judge_tmpfiles(
    content: Option<&str>,
    declared: &TmpfilesDeclaration,
    run_dir: &str,
) -> Judgement {
    let file = &declared.file;
    let want = normalise(&declared.line);
    let Some(content) = content else {
        return (
            Verdict::Failed(format!("{file} does not exist")),
            vec![Evidence::new(
                file.as_str(),
                "missing",
                format!("contains `{want}`"),
            )],
        );
    };
    let lines: Vec<String> = content
        .lines()
        .map(normalise)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let observed = if lines.is_empty() {
        "(empty)".to_string()
    } else {
        lines.join(" | ")
    };
    let evidence = vec![Evidence::new(
        file.as_str(),
        observed,
        format!("contains `{want}`"),
    )];
    if !lines.contains(&want) {
        return (Verdict::Failed(format!("{file} lacks `{want}`")), evidence);
    }
    // Another entry for the same directory in the same file contradicts it:
    // systemd-tmpfiles applies the first one and only warns about the rest.
    let run_dir = canonical_run_path(run_dir);
    let contradicting: Vec<String> = parse_tmpfiles(content)
        .into_iter()
        .filter(|entry| {
            canonical_run_path(&entry.path) == run_dir && normalise(&entry.line) != want
        })
        .map(|entry| entry.line)
        .collect();
    if contradicting.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        let message = format!(
            "{file} has `{want}` but also `{}`, which contradicts it",
            contradicting.join("`, `")
        );
        (Verdict::Failed(message), evidence)
    }
}

/// One line of a tmpfiles.d configuration, and the file it came from (as
/// `systemd-tmpfiles --cat-config` names it in a `# /path` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfilesEntry {
    pub kind: String,
    pub path: String,
    pub mode: String,
    pub user: String,
    pub group: String,
    /// The line with its fields' whitespace normalised, as entries are compared.
    pub line: String,
    /// The line exactly as the file has it, for a fix that removes it and nothing else.
    pub raw: String,
    pub source: Option<String>,
}

/// Parses tmpfiles.d lines (`type path mode user group age argument`), skipping comments.
pub fn parse_tmpfiles(text: &str) -> Vec<TmpfilesEntry> {
    let mut source = None;
    let mut entries = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix("# /") {
            if !header.contains(' ') {
                source = Some(format!("/{header}"));
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("-").to_string();
        entries.push(TmpfilesEntry {
            kind: field(0),
            path: field(1),
            mode: field(2),
            user: field(3),
            group: field(4),
            line: normalise(line),
            raw: raw.to_string(),
            source: source.clone(),
        });
    }
    entries
}

/// A user or group field as a number: `-` and `root` are 0, digits are themselves; a
/// name is kept as written, since only the node could resolve it.
fn numeric_owner(field: &str) -> Result<u32, String> {
    match field {
        "-" | "root" => Ok(0),
        other => other.parse().map_err(|_| other.to_string()),
    }
}

/// The entry systemd-tmpfiles applies to the run directory, from its merged configuration
/// (`--cat-config`): the first directory entry for the path wins.
pub fn effective_tmpfiles_entry(merged_config: &str, run_dir: &str) -> Option<TmpfilesEntry> {
    let run_dir = canonical_run_path(run_dir);
    parse_tmpfiles(merged_config).into_iter().find(|e| {
        canonical_run_path(&e.path) == run_dir
            && matches!(e.kind.trim_end_matches('!'), "d" | "D" | "v" | "q" | "Q")
    })
}

impl TmpfilesEntry {
    /// The directory this entry makes, as `stat` would show it; Err: the line names a
    /// user or group by name, which only the node could resolve.
    pub fn stat(&self) -> Result<RunDirStat, String> {
        // tmpfiles.d(5): a directory's mode defaults to 0755, its owner to root.
        let mode = if self.mode == "-" {
            "755".to_string()
        } else {
            let digits = self.mode.trim_start_matches('~').trim_start_matches('0');
            if digits.is_empty() { "0" } else { digits }.to_string()
        };
        match (numeric_owner(&self.user), numeric_owner(&self.group)) {
            (Ok(uid), Ok(gid)) => Ok(RunDirStat { mode, uid, gid }),
            _ => Err(format!("{mode} {} {}", self.user, self.group)),
        }
    }

    /// ` (from /etc/tmpfiles.d/calico.conf: `d /run/calico …`)`
    fn provenance(&self) -> String {
        self.source
            .as_deref()
            .map(|s| format!(" (from {s}: `{}`)", self.line))
            .unwrap_or_else(|| format!(" (`{}`)", self.line))
    }
}

/// How an entry's directory measures up: the stat it makes (in words) and why it falls
/// short, if it does.
fn measure_entry(
    entry: &TmpfilesEntry,
    expected: &CalicoExpectations,
) -> (String, Result<(), String>) {
    match entry.stat() {
        Ok(stat) => (stat.to_string(), expected.judge_access(&stat)),
        Err(named) => (
            named.clone(),
            Err(format!(
                "it names its owner as `{}`/`{}`, which postflight does not resolve: declare the entry in the inventory (calico.tmpfiles_file, calico.tmpfiles_line)",
                entry.user, entry.group
            )),
        ),
    }
}

/// The verdict on an entry: evidence of what it makes and where it comes from, and on a
/// shortfall the message `failure(made, why)` words.
fn judge_entry(
    entry: &TmpfilesEntry,
    expected: &CalicoExpectations,
    what: String,
    failure: impl FnOnce(&str, &str) -> String,
) -> Judgement {
    let (made, judged) = measure_entry(entry, expected);
    let made = format!("{made}{}", entry.provenance());
    let evidence = vec![Evidence::new(what, made.clone(), expected.wanted())];
    match judged {
        Ok(()) => (Verdict::Passed, evidence),
        Err(why) => (Verdict::Failed(failure(&made, &why)), evidence),
    }
}

/// `tmpfiles_config_present` where the inventory declares nothing: the node's own entry
/// for the run directory, if it has one, must make it usable by calico-node. With no
/// entry there is nothing to judge (calico-node's hostPath volume creates the directory),
/// and the check says so.
pub fn judge_node_tmpfiles(merged_config: &str, expected: &CalicoExpectations) -> Judgement {
    let what = format!("tmpfiles.d entry for {}", expected.run_dir);
    let Some(entry) = effective_tmpfiles_entry(merged_config, &expected.run_dir) else {
        return (
            Verdict::Skipped(format!(
                "no tmpfiles.d entry on the node names {}, and the inventory declares none (calico.tmpfiles_file): calico-node's hostPath volume creates the directory",
                expected.run_dir
            )),
            vec![Evidence::new(what, "none", "an entry, where the site declares one")],
        );
    };
    judge_entry(&entry, expected, what, |made, why| {
        format!(
            "the node's tmpfiles.d entry makes {} as {made}: {why}",
            expected.run_dir
        )
    })
}

/// `run_dir_after_next_boot`: what systemd-tmpfiles will make of the run directory at the
/// next boot, from its merged configuration (`--cat-config`). This finds the incident's
/// fault on nodes that have not rebooted yet.
pub fn judge_next_boot(merged_config: &str, expected: &CalicoExpectations) -> Judgement {
    let what = format!("{} after the next boot (mode uid gid)", expected.run_dir);
    let Some(entry) = effective_tmpfiles_entry(merged_config, &expected.run_dir) else {
        if expected.tmpfiles.is_some() {
            let message = format!(
                "no tmpfiles.d entry creates {}: after the next boot it will not exist",
                expected.run_dir
            );
            return (
                Verdict::Failed(message),
                vec![Evidence::new(what, "not created", expected.wanted())],
            );
        }
        // Nothing creates it at boot: calico-node's hostPath volume (DirectoryOrCreate)
        // makes it root-owned, mode 0755, when the pod starts.
        let by_kubelet = RunDirStat {
            mode: "755".into(),
            uid: 0,
            gid: 0,
        };
        let evidence = vec![Evidence::new(
            what,
            format!("{by_kubelet} (no tmpfiles.d entry: made by calico-node's hostPath volume)"),
            expected.wanted(),
        )];
        return match expected.judge_access(&by_kubelet) {
            Ok(()) => (Verdict::Passed, evidence),
            Err(why) => (
                Verdict::Failed(format!(
                    "no tmpfiles.d entry creates {}, so after the next boot it is made as {by_kubelet}: {why}; calico-node will fail on this node's next reboot",
                    expected.run_dir
                )),
                evidence,
            ),
        };
    };
    judge_entry(&entry, expected, what, |made, why| {
        format!(
            "at the next boot systemd-tmpfiles will make {} as {made}: {why}; calico-node will fail on this node's next reboot",
            expected.run_dir
        )
    })
}

fn normalise(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn judge_run_dir(stat: Option<&RunDirStat>, expected: &CalicoExpectations) -> Judgement {
    let what = format!("{} (mode uid gid)", expected.run_dir);
    match stat {
        None => (
            Verdict::Failed(format!("{} does not exist", expected.run_dir)),
            vec![Evidence::new(what, "missing", expected.wanted())],
        ),
        Some(stat) => {
            let evidence = vec![Evidence::new(what, stat.to_string(), expected.wanted())];
            match expected.judge_access(stat) {
                Ok(()) => (Verdict::Passed, evidence),
                Err(why) => (
                    Verdict::Failed(format!("{} is {stat}, {why}", expected.run_dir)),
                    evidence,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectations() -> CalicoExpectations {
        CalicoExpectations::default()
    }

    fn declared() -> TmpfilesDeclaration {
        expectations()
            .tmpfiles
            .expect("the hardened site declares its entry")
    }

    /// calico-node as the stock manifest runs it (root), or as a hardened DaemonSet does
    /// (uid 999), with no entry declared in the inventory.
    fn undeclared(uid: u32) -> CalicoExpectations {
        CalicoExpectations {
            access: crate::expectations::RunDirAccess::UsableBy(crate::expectations::CalicoUser {
                uid,
                gid: Some(uid),
                source: "runAsUser of DaemonSet kube-system/calico-node".into(),
            }),
            tmpfiles: None,
            ..CalicoExpectations::default()
        }
    }

    #[test]
    fn without_a_declaration_the_nodes_own_entry_is_judged_or_the_check_skipped() {
        let (verdict, _) = judge_node_tmpfiles(
            "# /usr/lib/tmpfiles.d/x.conf\nd /run/x - - - -\n",
            &undeclared(0),
        );
        assert!(
            matches!(verdict, Verdict::Skipped(ref why) if why.contains("no tmpfiles.d entry")),
            "{verdict:?}"
        );
        let clobbered = "# /etc/tmpfiles.d/calico.conf\nd /run/calico 0700 root root -\n";
        let (verdict, evidence) = judge_node_tmpfiles(clobbered, &undeclared(999));
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("700 0 0") && m.contains("uid 999")),
            "{verdict:?}"
        );
        assert!(evidence[0].observed.contains("/etc/tmpfiles.d/calico.conf"));
        assert_eq!(
            judge_node_tmpfiles(clobbered, &undeclared(0)).0,
            Verdict::Passed
        );
        let named = "d /run/calico 0755 calico calico -\n";
        assert!(
            matches!(judge_node_tmpfiles(named, &undeclared(999)).0, Verdict::Failed(ref m) if m.contains("calico.tmpfiles_line"))
        );
    }

    #[test]
    fn with_no_entry_the_next_boot_is_what_the_hostpath_volume_makes() {
        assert_eq!(judge_next_boot("", &undeclared(0)).0, Verdict::Passed);
        assert!(
            matches!(judge_next_boot("", &undeclared(999)).0, Verdict::Failed(ref m) if m.contains("755 0 0"))
        );
    }

    #[test]
    fn run_dir_verdicts_carry_observed_and_expected() {
        let (verdict, evidence) =
            judge_run_dir(RunDirStat::parse("700 0 0\n").as_ref(), &expectations());
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("700 0 0") && m.contains("755 999 999")),
            "{verdict:?}"
        );
        assert_eq!(
            (evidence[0].observed.as_str(), evidence[0].expected.as_str()),
            ("700 0 0", "755 999 999")
        );
        assert_eq!(
            judge_run_dir(RunDirStat::parse("755 999 999").as_ref(), &expectations()).0,
            Verdict::Passed
        );
        assert!(matches!(
            judge_run_dir(None, &expectations()).0,
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn tmpfiles_line_matches_regardless_of_spacing_and_comments() {
        let good = "# Calico\nd   /run/calico  0755 999 999 -\n";
        assert_eq!(
            judge_tmpfiles(Some(good), &declared(), "/var/run/calico").0,
            Verdict::Passed
        );
        let clobbered = "d /run/calico 0700 root root -\n";
        let (verdict, evidence) = judge_tmpfiles(Some(clobbered), &declared(), "/var/run/calico");
        assert!(matches!(verdict, Verdict::Failed(_)));
        assert_eq!(evidence[0].observed, "d /run/calico 0700 root root -");
        assert!(
            matches!(judge_tmpfiles(None, &declared(), "/var/run/calico").0, Verdict::Failed(ref m) if m.contains("does not exist"))
        );
    }

    #[test]
    fn a_contradicting_second_entry_fails_the_tmpfiles_check() {
        let both = "d /run/calico 0755 999 999 -\nd /var/run/calico 0700 root root -\n";
        let (verdict, _) = judge_tmpfiles(Some(both), &declared(), "/var/run/calico");
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("contradicts")),
            "{verdict:?}"
        );
    }

    #[test]
    fn the_next_boot_follows_the_first_entry_of_the_merged_configuration() {
        let healthy = "# /etc/tmpfiles.d/calico.conf\nd /run/calico 0755 999 999 -\n\n# /usr/lib/tmpfiles.d/x.conf\nd /run/x 0755 - - -\n";
        assert_eq!(judge_next_boot(healthy, &expectations()).0, Verdict::Passed);
        let clobbered = "# /etc/tmpfiles.d/calico.conf\nd /run/calico 0700 root root -\n";
        let (verdict, evidence) = judge_next_boot(clobbered, &expectations());
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("700 0 0") && m.contains("/etc/tmpfiles.d/calico.conf")),
            "{verdict:?}"
        );
        assert!(evidence[0].observed.starts_with("700 0 0"), "{evidence:?}");
        let shadowed = "# /etc/tmpfiles.d/00-hardening.conf\nd /var/run/calico 0700 - - -\n# /etc/tmpfiles.d/calico.conf\nd /run/calico 0755 999 999 -\n";
        assert!(matches!(
            judge_next_boot(shadowed, &expectations()).0,
            Verdict::Failed(_)
        ));
        assert!(
            matches!(judge_next_boot("", &expectations()).0, Verdict::Failed(ref m) if m.contains("will not exist"))
        );
    }
}
