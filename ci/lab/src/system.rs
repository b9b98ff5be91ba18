//! Running the real tools the lab is built from (`ip`, `mount`, `systemd-tmpfiles`,
//! `ssh-keygen`) with errors that name the command, and entering a node's namespaces.

use std::path::Path;
use std::process::{Command, Output, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, SystemError>;

pub fn io_context<T>(result: std::io::Result<T>, context: impl FnOnce() -> String) -> Result<T> {
    result.map_err(|source| SystemError::Io {
        context: context(),
        source,
    })
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SystemError::Spawn {
            command: describe(command),
            source,
        })?;
    if !output.status.success() {
        return Err(SystemError::Failed {
            command: describe(command),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// `run` for a program and its arguments.
pub fn run_args<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    run(Command::new(program).args(args))
}

/// Runs `ip` with the given arguments, inside `netns` when given.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<Output> {
    match netns {
        Some(ns) => {
            let mut all = vec!["netns", "exec", ns, "ip"];
            all.extend_from_slice(args);
            run_args("ip", &all)
        }
        None => run_args("ip", args),
    }
}

/// Runs `ip` commands, one a line as `ip -batch` reads them, in network namespace
/// `netns`: one process, where a shell running each would spawn one per command (a
/// 50-node lab starts a burst of pods at once, and every spawn is CPU the nodes share).
pub fn ip_batch(netns: &str, commands: &str) -> Result<Output> {
    use std::io::Write;
    let mut command = Command::new("ip");
    command
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_error = |source| SystemError::Spawn {
        command: format!(
            "ip -n {netns} -batch - ({})",
            commands.trim().replace('\n', "; ")
        ),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(SystemError::Failed {
            command: format!(
                "ip -n {netns} -batch - ({})",
                commands.trim().replace('\n', "; ")
            ),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// Runs a shell snippet inside a network namespace.
pub fn netns_sh(netns: &str, script: &str) -> Result<Output> {
    run_args("ip", &["netns", "exec", netns, "sh", "-ec", script])
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub fn list_netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// PIDs of every process whose network namespace is `netns` (what `ip netns pids` prints).
pub fn netns_pids(netns: &str) -> Vec<i32> {
    match run_args("ip", &["netns", "pids", netns]) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills every process in a network namespace with SIGKILL, as a power cut would, and
/// waits (bounded) until none is left.
pub fn kill_netns_processes(netns: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for _ in 0..50 {
        let pids = netns_pids(netns);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Deletes a network namespace after killing what runs in it; absent is fine.
pub fn delete_netns(netns: &str) {
    if netns_exists(netns) {
        kill_netns_processes(netns);
        let _ = run_args("ip", &["netns", "del", netns]);
    }
}

/// Mount points below `dir`, deepest first, so they can be unmounted in order.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().trim_end_matches('/').to_string();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    found
}

pub fn unmount_below(dir: &Path) {
    for mount in mounts_below(dir) {
        let _ = run_args("umount", &["-l", &mount]);
    }
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_hostile_word() {
        let word = "a'; rm -rf / #$(x)";
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(word)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
    }
}
