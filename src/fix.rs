//! Fix commands as data, then text. A fix is the words each program receives, at each
//! layer they pass through on the way: the engineer's own shell, ssh's remote command
//! (which the node's login shell reads again), and `kubectl debug … -- chroot /host
//! sh -c`. [`Fix::render`] is the one place a fix becomes text, and it quotes every word
//! for every shell that will read it. So a value that came from a node or the cluster —
//! a tmpfiles.d file name or line, a pod, node or namespace name — reaches its program
//! as the word it was, whatever it contains, and nothing in it runs anywhere.

use crate::inventory::SshTarget;
use std::borrow::Cow;
use std::fmt;

/// How an engineer reaches a node from their own shell, for the fix commands: the
/// inventory's SSH destination (user, host and port, which need not resolve from the
/// node's Kubernetes name, through the same bastion postflight used), with sudo unless
/// they log in as root; or, for a node reached through a node shell, `kubectl debug
/// node/…` with the host's root at /host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeShell {
    Ssh {
        /// `-J bastion` and `-p port`, as ssh takes them.
        options: Vec<String>,
        /// `user@host`.
        destination: String,
        root: bool,
    },
    /// A debugging pod in the host's namespaces, as the node-shell transport uses. It
    /// goes into the node-shell namespace, the one where Pod Security lets it run;
    /// kubectl leaves it there (`kubectl -n NAMESPACE delete pod node-debugger-…`).
    KubectlDebug {
        namespace: String,
        node: String,
        image: String,
    },
}

impl NodeShell {
    pub fn of(target: &SshTarget) -> Self {
        let mut options = Vec::new();
        // Through the same bastion postflight used: the node may not be reachable from
        // the engineer's shell any other way.
        if let Some(jump) = &target.jump {
            options.extend(["-J".to_string(), jump.to_string()]);
        }
        if target.port != 22 {
            options.extend(["-p".to_string(), target.port.to_string()]);
        }
        NodeShell::Ssh {
            options,
            destination: format!("{}@{}", target.user, target.host),
            root: target.user == "root",
        }
    }

    pub fn kubectl_debug(node: &str, image: &str, namespace: &str) -> Self {
        NodeShell::KubectlDebug {
            namespace: namespace.into(),
            node: node.into(),
            image: image.into(),
        }
    }

    /// Whether a command that needs root gets `sudo` in front of it.
    fn sudo(&self) -> bool {
        matches!(self, NodeShell::Ssh { root: false, .. })
    }

    /// The words the local shell hands to ssh or kubectl before the node's command.
    pub fn argv(&self) -> Vec<String> {
        match self {
            NodeShell::Ssh {
                options,
                destination,
                ..
            } => {
                let mut argv = vec!["ssh".to_string()];
                argv.extend(options.iter().cloned());
                if destination.starts_with('-') {
                    argv.push("--".into());
                }
                argv.push(destination.clone());
                argv
            }
            NodeShell::KubectlDebug {
                namespace,
                node,
                image,
            } => [
                "kubectl",
                "-n",
                namespace,
                "debug",
                &format!("node/{node}"),
                "-i",
                "--quiet",
                "--profile=sysadmin",
                &format!("--image={image}"),
                "--",
                "chroot",
                "/host",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// One program and the words it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub argv: Vec<String>,
    /// Needs root on the node: `sudo` goes in front for a user who is not root.
    pub root: bool,
    /// Lines written to its standard input (`printf '%s\n' LINE… | program`).
    pub input: Vec<String>,
}

impl Command {
    pub fn new(program: &str) -> Self {
        Command {
            argv: vec![program.to_string()],
            root: false,
            input: Vec::new(),
        }
    }

    pub fn arg(mut self, word: impl Into<String>) -> Self {
        self.argv.push(word.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, words: impl IntoIterator<Item = S>) -> Self {
        self.argv.extend(words.into_iter().map(Into::into));
        self
    }

    /// The operands after the options. A name that begins with `-` would be read as an
    /// option; `--` in front of them ends the options first.
    pub fn operands<S: Into<String>>(mut self, words: impl IntoIterator<Item = S>) -> Self {
        let words: Vec<String> = words.into_iter().map(Into::into).collect();
        if words.iter().any(|w| w.starts_with('-')) {
            self.argv.push("--".into());
        }
        self.argv.extend(words);
        self
    }

    pub fn as_root(mut self) -> Self {
        self.root = true;
        self
    }

    pub fn fed<S: Into<String>>(mut self, lines: impl IntoIterator<Item = S>) -> Self {
        self.input = lines.into_iter().map(Into::into).collect();
        self
    }

    /// The words as the program's caller runs them: with `sudo` when asked.
    pub fn words(&self, sudo: bool) -> Vec<String> {
        let mut words = Vec::with_capacity(self.argv.len() + 1);
        if sudo && self.root {
            words.push("sudo".to_string());
        }
        words.extend(self.argv.iter().cloned());
        words
    }

    /// The command as a POSIX shell line.
    fn line(&self, sudo: bool) -> String {
        let run = join(&self.words(sudo));
        if self.input.is_empty() {
            return run;
        }
        let mut feed = vec!["printf".to_string(), "%s\\n".to_string()];
        feed.extend(self.input.iter().cloned());
        format!("{} | {run}", join(&feed))
    }
}

/// A fix command as an engineer pastes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    /// None: the engineer's own shell (kubectl against the cluster).
    pub on: Option<NodeShell>,
    /// Run in order; each only when the one before succeeded, unless `keep_going`.
    pub commands: Vec<Command>,
    pub keep_going: bool,
    /// A program on the engineer's side that reads the output (`| grep -w 179`).
    pub filter: Option<Command>,
    /// Why, after a `#`; postflight's own words, never a value from a node.
    pub comment: Option<String>,
}

impl Fix {
    /// Commands for the engineer's own shell.
    pub fn here(commands: impl IntoIterator<Item = Command>) -> Self {
        Fix {
            on: None,
            commands: commands.into_iter().collect(),
            keep_going: false,
            filter: None,
            comment: None,
        }
    }

    /// Commands for the node's shell, reached through `shell`.
    pub fn on(shell: &NodeShell, commands: impl IntoIterator<Item = Command>) -> Self {
        Fix {
            on: Some(shell.clone()),
            ..Fix::here(commands)
        }
    }

    /// Advice without a command: a comment line, harmless when pasted.
    pub fn note(text: impl Into<String>) -> Self {
        Fix {
            comment: Some(text.into()),
            ..Fix::here([])
        }
    }

    pub fn keep_going(mut self) -> Self {
        self.keep_going = true;
        self
    }

    pub fn filtered(mut self, filter: Command) -> Self {
        self.filter = Some(filter);
        self
    }

    pub fn commented(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// The commands as one POSIX shell script, `sudo` in front of each that needs it.
    fn script(&self, sudo: bool) -> String {
        let separator = if self.keep_going { "; " } else { " && " };
        self.commands
            .iter()
            .map(|c| c.line(sudo))
            .collect::<Vec<_>>()
            .join(separator)
    }

    /// One program with its words and nothing else: no shell is needed on the far side
    /// to run it, and its words can be passed as words.
    fn single_program(&self) -> Option<&Command> {
        match self.commands.as_slice() {
            [one] if one.input.is_empty() => Some(one),
            _ => None,
        }
    }

    /// The one line to paste. Through ssh, the node's login shell reads the remote
    /// command again, so each of its words is quoted twice: once for it, once for the
    /// engineer's shell. kubectl passes its words to chroot as they are, so a single
    /// program is quoted once, and several go to an `sh -c` of their own.
    pub fn render(&self) -> String {
        let mut line = match &self.on {
            _ if self.commands.is_empty() => String::new(),
            None => self.script(false),
            Some(shell @ NodeShell::Ssh { .. }) => {
                let mut words: Vec<String> = shell.argv();
                match self.single_program() {
                    Some(command) => words.extend(
                        command
                            .words(shell.sudo())
                            .iter()
                            .map(|w| quote(w).into_owned()),
                    ),
                    None => words.push(self.script(shell.sudo())),
                }
                join(&words)
            }
            Some(shell @ NodeShell::KubectlDebug { .. }) => {
                let mut words = shell.argv();
                match self.single_program() {
                    Some(command) => words.extend(command.words(false)),
                    None => words.extend(["sh".to_string(), "-c".into(), self.script(false)]),
                }
                join(&words)
            }
        };
        if let Some(filter) = &self.filter {
            line = format!("{line} | {}", join(&filter.words(false)));
        }
        if let Some(comment) = &self.comment {
            let comment = comment_text(comment);
            line = if line.is_empty() {
                format!("# {comment}")
            } else {
                format!("{line}   # {comment}")
            };
        }
        line
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// In the report a fix is the line to paste.
impl serde::Serialize for Fix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.render())
    }
}

fn join(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// A word for a POSIX shell (sh, bash, zsh, as an engineer pastes into them), read back
/// as exactly this word: bare when nothing in it means anything to a shell (a
/// `user@host:port` does not); in single quotes when it holds none; in double quotes,
/// with `\`, `$`, `` ` `` and `"` escaped, when it holds a single quote but no `!`
/// (which bash expands from its history inside double quotes); else in single quotes
/// with each `'` written `'\''`.
pub fn quote(word: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"@:._-/,+%=".contains(&b);
    // zsh expands a word that begins with `=` to a program's path.
    if !word.is_empty() && !word.starts_with('=') && word.bytes().all(plain) {
        return Cow::Borrowed(word);
    }
    if !word.contains('\'') {
        return Cow::Owned(format!("'{word}'"));
    }
    if !word.contains('!') {
        let mut quoted = String::with_capacity(word.len() + 8);
        quoted.push('"');
        for c in word.chars() {
            if matches!(c, '\\' | '$' | '`' | '"') {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        return Cow::Owned(quoted);
    }
    Cow::Owned(format!("'{}'", word.replace('\'', "'\\''")))
}

/// A comment's text on one line, with nothing a shell without interactive comments
/// (zsh's default) would expand or run.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || " .,:_-/@+=%?()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A basic regular expression (as sed reads one between `\#` delimiters) that matches
/// exactly `line` as a whole line.
pub fn whole_line_pattern(line: &str) -> String {
    let mut pattern = String::from("\\#^");
    for c in line.chars() {
        if matches!(c, '\\' | '.' | '[' | '*' | '^' | '$' | '#') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str("$#");
    pattern
}

#[cfg(test)]
pub(crate) mod paste {
    //! Pastes fixes into real shells with ssh, kubectl and every program a fix runs
    //! replaced by scripts on a temporary PATH that record the words they receive. ssh's
    //! stand-in runs its remote command through `sh -c`, as the node's login shell
    //! would; kubectl's runs what follows `--` (chroot, then `sh -c`), so what is
    //! recorded is what each program on the far side would really be given.

    use super::*;
    use std::path::{Path, PathBuf};

    /// The incident's node over SSH as `user`, on `port`, through `jump` if given: the
    /// shell the tests of every fix start from.
    pub fn ssh(user: &str, port: u16, jump: Option<crate::inventory::JumpHost>) -> NodeShell {
        NodeShell::of(&SshTarget {
            node: "k8s-worker-03".into(),
            host: "10.20.0.13".into(),
            port,
            user: user.into(),
            identity_file: None,
            known_hosts: "known_hosts".into(),
            become_method: None,
            jump,
        })
    }

    /// What one program received: its name, its words, its standard input.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Call {
        pub program: String,
        pub args: Vec<String>,
        pub stdin: String,
    }

    /// Programs the fixes run on a node or locally, each recorded and nothing more.
    const RECORDED: &[&str] = &[
        "sudo",
        "tee",
        "sed",
        "systemd-tmpfiles",
        "install",
        "birdcl",
        "iptables",
        "nft",
        "grep",
        "tail",
        "ip",
        "pgrep",
        "rm",
        "stat",
        "chown",
        "sh",
    ];

    pub struct Paste {
        dir: tempfile::TempDir,
    }

    impl Paste {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            std::fs::create_dir(dir.path().join("cwd")).unwrap();
            let log = dir.path().join("calls");
            std::fs::create_dir(&log).unwrap();
            // name, argc, args, stdin; NUL-separated (no word can hold a NUL). One file
            // per process: the stages of a pipeline write at the same time.
            let record = |reads_stdin: bool| {
                format!(
                    "{{ printf '%s\\0' \"${{0##*/}}\" \"$#\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done; {} printf '\\0'; }} >>'{}'/$$\n",
                    if reads_stdin { "/bin/cat;" } else { "" },
                    log.display()
                )
            };
            let write = |name: &str, body: String| {
                let path = bin.join(name);
                std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .unwrap();
            };
            for name in RECORDED {
                write(name, record(true));
            }
            // ssh: the options postflight's fixes use, then the destination; the rest
            // is joined with spaces, as ssh sends it, for the login shell to read.
            write(
                "ssh",
                format!(
                    "{}while :; do case \"$1\" in -J|-p) shift 2;; --) shift; break;; *) break;; esac; done\nshift\nexec /bin/sh -c \"$*\"\n",
                    record(false)
                ),
            );
            // kubectl: `debug … -- chroot /host …` runs what follows `--`.
            write(
                "kubectl",
                format!(
                    "{}debug=\nwhile [ $# -gt 0 ]; do case \"$1\" in debug) debug=1;; --) [ -n \"$debug\" ] || exit 0; shift; exec \"$@\";; esac; shift; done\n",
                    record(false)
                ),
            );
            // chroot /host sh -c SCRIPT: a real shell reads the script.
            write(
                "chroot",
                format!(
                    "{}shift\nif [ \"$1\" = sh ]; then shift; exec /bin/sh \"$@\"; fi\nexec \"$@\"\n",
                    record(false)
                ),
            );
            Paste { dir }
        }

        fn cwd(&self) -> PathBuf {
            self.dir.path().join("cwd")
        }

        /// Runs `line` in `shell`, from an empty directory, and returns what every
        /// program received. Panics when the line does not parse, when it fails to run,
        /// or when anything appeared in the directory (a `touch PWNED` that ran).
        pub fn run(&self, shell: &str, line: &str) -> Vec<Call> {
            let log = self.dir.path().join("calls");
            for file in std::fs::read_dir(&log).unwrap() {
                std::fs::remove_file(file.unwrap().path()).unwrap();
            }
            let parsed = std::process::Command::new(shell)
                .args(["-n", "-c", line])
                .output()
                .unwrap();
            assert!(
                parsed.status.success(),
                "{shell} -n rejects {line}: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
            let path = format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                self.dir.path().join("bin").display()
            );
            // The shell by its path: the PATH given to it has a recording `sh` first.
            let ran = std::process::Command::new(format!("/bin/{shell}"))
                .args(["-c", line])
                .current_dir(self.cwd())
                .env("PATH", path)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                ran.status.success(),
                "{shell} -c {line}: {}",
                String::from_utf8_lossy(&ran.stderr)
            );
            let left: Vec<_> = std::fs::read_dir(self.cwd()).unwrap().collect();
            assert!(left.is_empty(), "{line} ran something locally: {left:?}");
            parse_calls(&log)
        }
    }

    fn parse_calls(log: &Path) -> Vec<Call> {
        let mut calls = Vec::new();
        for file in std::fs::read_dir(log).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            calls.extend(parse_records(
                &String::from_utf8(bytes).expect("UTF-8 words"),
            ));
        }
        calls.sort();
        calls
    }

    fn parse_records(text: &str) -> Vec<Call> {
        let mut fields = text.split('\0');
        let mut calls = Vec::new();
        while let Some(program) = fields.next().filter(|p| !p.is_empty()) {
            let count: usize = fields.next().unwrap().parse().unwrap();
            let args = (0..count)
                .map(|_| fields.next().unwrap().to_string())
                .collect();
            let stdin = fields.next().unwrap().to_string();
            calls.push(Call {
                program: program.to_string(),
                args,
                stdin,
            });
        }
        calls
    }

    fn call(words: Vec<String>, stdin: String) -> Call {
        Call {
            program: words[0].clone(),
            args: words[1..].to_vec(),
            stdin,
        }
    }

    /// What every program must receive when `fix` is pasted, from the fix's data alone.
    pub fn intended(fix: &Fix) -> Vec<Call> {
        let mut calls = Vec::new();
        let sudo = fix.on.as_ref().is_some_and(NodeShell::sudo);
        let single = fix.single_program().is_some();
        for command in &fix.commands {
            let stdin: String = command.input.iter().map(|l| format!("{l}\n")).collect();
            calls.push(call(command.words(sudo), stdin));
        }
        match &fix.on {
            Some(shell @ NodeShell::Ssh { .. }) => {
                let remote = if single {
                    fix.commands[0]
                        .words(sudo)
                        .iter()
                        .map(|w| quote(w).into_owned())
                        .collect()
                } else {
                    vec![fix.script(sudo)]
                };
                calls.push(call([shell.argv(), remote].concat(), String::new()));
            }
            Some(shell @ NodeShell::KubectlDebug { .. }) => {
                let after = if single {
                    fix.commands[0].words(false)
                } else {
                    vec!["sh".into(), "-c".into(), fix.script(false)]
                };
                let kubectl = [shell.argv(), after].concat();
                let chroot = kubectl.iter().position(|w| w == "chroot").unwrap();
                calls.push(call(kubectl[chroot..].to_vec(), String::new()));
                calls.push(call(kubectl, String::new()));
            }
            None => {}
        }
        if let Some(filter) = &fix.filter {
            calls.push(call(filter.words(false), String::new()));
        }
        calls.sort();
        calls
    }

    /// Pastes `fix` into sh and bash and holds what ran to what the fix says.
    pub fn assert_pastes_as_intended(paste: &Paste, fix: &Fix) {
        let line = fix.render();
        for shell in ["sh", "bash"] {
            assert_eq!(
                paste.run(shell, &line),
                intended(fix),
                "{shell}: {line}\n{fix:#?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::paste::*;
    use super::*;
    use crate::inventory::JumpHost;
    use rstest::rstest;

    /// The adversary's file name, and everything else a shell reads specially.
    pub(crate) const HOSTILE: &[&str] = &[
        "00-$(touch${IFS}PWNED)`id`';x.conf",
        "$(touch PWNED)",
        "`touch PWNED`",
        "a; touch PWNED",
        "it's \"quoted\" \\ too",
        "line\ntouch PWNED",
        "${IFS}touch${IFS}PWNED",
        "-rf",
        "--help",
        "!! !-1 !touch",
        "' ; touch PWNED ; '",
        "\" ; touch PWNED ; \"",
        "=touch",
        "~root #x",
        "a|touch PWNED&",
        "",
    ];

    #[rstest]
    #[case::bare("/etc/tmpfiles.d/calico.conf", "/etc/tmpfiles.d/calico.conf")]
    #[case::space("d /run/calico 0755 999 999 -", "'d /run/calico 0755 999 999 -'")]
    #[case::single_quote("it's", "\"it's\"")]
    #[case::both("it's $HOME", "\"it's \\$HOME\"")]
    #[case::bang("it's!", "'it'\\''s!'")]
    #[case::empty("", "''")]
    #[case::zsh_equals("=ls", "'=ls'")]
    fn words_are_quoted_as_lightly_as_is_safe(#[case] word: &str, #[case] quoted: &str) {
        assert_eq!(quote(word), quoted);
    }

    #[test]
    fn every_hostile_word_reads_back_as_itself_in_sh_and_bash() {
        let paste = Paste::new();
        for word in HOSTILE {
            let fix = Fix::here([Command::new("tee").arg(*word).arg("-a")]);
            assert_pastes_as_intended(&paste, &fix);
        }
    }

    #[test]
    fn the_adversarys_file_name_reaches_the_node_as_one_word() {
        let file = "/etc/tmpfiles.d/00-$(touch${IFS}PWNED)`id`';x.conf";
        let write = Command::new("tee")
            .arg("-a")
            .operands([file])
            .as_root()
            .fed(["d /run/calico 0755 999 999 -"]);
        let create = Command::new("systemd-tmpfiles")
            .arg("--create")
            .operands([file])
            .as_root();
        let paste = Paste::new();
        for shell in [
            ssh("ops", 22, None),
            ssh("root", 2222, None),
            NodeShell::kubectl_debug("k8s-worker-03", "busybox:1.37.0", "postflight-node-shell"),
        ] {
            for fix in [
                Fix::on(&shell, [write.clone()]),
                Fix::on(&shell, [create.clone()]),
                Fix::on(&shell, [write.clone(), create.clone()]),
            ] {
                assert_pastes_as_intended(&paste, &fix);
            }
        }
    }

    #[test]
    fn every_slot_of_every_shell_takes_a_hostile_word() {
        let paste = Paste::new();
        for word in HOSTILE.iter().filter(|w| !w.is_empty()) {
            let shells = [
                NodeShell::Ssh {
                    options: vec!["-J".into(), format!("{word}@bastion:22")],
                    destination: format!("{word}@10.20.0.13"),
                    root: false,
                },
                NodeShell::Ssh {
                    options: vec!["-p".into(), "2222".into()],
                    destination: word.to_string(),
                    root: true,
                },
                NodeShell::kubectl_debug(word, word, word),
            ];
            for shell in &shells {
                let command = Command::new("install")
                    .args(["-d", "-m", "0755"])
                    .operands([*word])
                    .as_root();
                for fix in [
                    Fix::on(shell, [command.clone()]),
                    Fix::on(shell, [command.clone().fed([*word, "second"])])
                        .filtered(Command::new("grep").arg(*word))
                        .commented(*word),
                    Fix::on(
                        shell,
                        [
                            Command::new("iptables").arg("-S").as_root(),
                            command.clone(),
                        ],
                    )
                    .keep_going(),
                ] {
                    assert_pastes_as_intended(&paste, &fix);
                }
            }
            assert_pastes_as_intended(
                &paste,
                &Fix::here([Command::new("tail").arg("-n").operands([*word])])
                    .commented(format!("{word} and $(touch PWNED)")),
            );
            assert_pastes_as_intended(&paste, &Fix::note(*word));
        }
    }

    #[test]
    fn a_bastion_and_a_port_are_ssh_options_and_the_destination_is_one_word() {
        let bastion = JumpHost {
            user: "jump".into(),
            host: "fd00::1".into(),
            port: 2200,
        };
        let fix = Fix::on(
            &ssh("ops", 2222, Some(bastion)),
            [Command::new("systemd-tmpfiles")
                .arg("--create")
                .operands(["/etc/tmpfiles.d/calico.conf"])
                .as_root()],
        );
        assert_eq!(
            fix.render(),
            "ssh -J 'jump@[fd00::1]:2200' -p 2222 ops@10.20.0.13 sudo systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf"
        );
        assert_pastes_as_intended(&Paste::new(), &fix);
    }

    #[test]
    fn a_whole_line_pattern_matches_that_line_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.conf");
        let lines = [
            "d /run/calico 0700 root root -",
            "d /run/calico 0700 root root - ",
            "d /run/calicoX0700 root root -",
            "$(touch PWNED) .* [a] ^x$ \\# # ` ' \"",
            "keep me",
        ];
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        for removed in [lines[0], lines[3]] {
            let status = std::process::Command::new("sed")
                .args(["-i", "-e"])
                .arg(format!("{}d", whole_line_pattern(removed)))
                .arg(&file)
                .current_dir(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            [lines[1], lines[2], lines[4]].join("\n") + "\n"
        );
        assert!(!dir.path().join("PWNED").exists());
    }
}
