//! The lab's `nsenter`, which answers for the real one in every lab container.
//!
//! A lab node has no PID namespace of its own: its processes live in this machine's,
//! where PID 1 is the machine's init. The real `nsenter -t 1` in a lab container would
//! therefore enter the CI machine itself. This stand-in gives a container what a real
//! kubelet's would get instead:
//! - a privileged pod in the host's PID namespace enters the node: its network
//!   namespace, in the node's mount and UTS view (which every lab container starts in);
//! - a privileged pod without the host's PID namespace enters its own namespaces, which
//!   changes nothing;
//! - an unprivileged container is refused, as the kernel refuses `setns` without
//!   CAP_SYS_ADMIN.

use std::path::Path;

/// What entering PID 1's namespaces means for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Privileged, in the host's PID namespace: PID 1 is the node's init, whose network
    /// namespace the file `netns` holds.
    Node { netns: String },
    /// Privileged, in a PID namespace of its own: PID 1 is the container's own process.
    Own,
    /// Not privileged: no `setns` is allowed.
    Refused,
}

impl Reach {
    /// What a container of `pod` reaches, from its spec as the API server stored it.
    pub fn of(pod: &serde_json::Value, container: &serde_json::Value, node_netns: &Path) -> Self {
        let privileged = container["securityContext"]["privileged"] == true;
        let host_pid = pod["spec"]["hostPID"] == true;
        match (privileged, host_pid) {
            (true, true) => Reach::Node {
                netns: node_netns.to_string_lossy().into_owned(),
            },
            (true, false) => Reach::Own,
            (false, _) => Reach::Refused,
        }
    }

    fn word(&self) -> String {
        match self {
            Reach::Node { netns } => format!("node:{netns}"),
            Reach::Own => "own".into(),
            Reach::Refused => "refused".into(),
        }
    }

    fn parse(word: &str) -> Option<Self> {
        match word {
            "own" => Some(Reach::Own),
            "refused" => Some(Reach::Refused),
            _ => word.strip_prefix("node:").map(|netns| Reach::Node {
                netns: netns.to_string(),
            }),
        }
    }
}

/// The argv that stands for `nsenter` in a container that reaches `reach`.
pub fn stand_in(lab_binary: &Path, reach: &Reach) -> Vec<String> {
    vec![
        lab_binary.to_string_lossy().into_owned(),
        "nsenter".into(),
        format!("--lab-reach={}", reach.word()),
    ]
}

/// An nsenter command line, as util-linux and busybox take it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    target: Option<u32>,
    /// The namespaces asked for, as `/proc/PID/ns/` names them.
    namespaces: Vec<&'static str>,
    command: Vec<String>,
}

fn namespace_of(flag: char) -> Option<&'static str> {
    Some(match flag {
        'm' => "mnt",
        'u' => "uts",
        'i' => "ipc",
        'n' => "net",
        'p' => "pid",
        'U' => "user",
        'C' => "cgroup",
        'T' => "time",
        _ => return None,
    })
}

fn parse(args: &[String]) -> Result<Request, String> {
    let mut request = Request::default();
    let mut words = args.iter();
    let target = |value: Option<&String>| -> Result<u32, String> {
        value
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("nsenter: invalid target PID {value:?}"))
    };
    while let Some(word) = words.next() {
        match word.as_str() {
            "--" => break,
            "-t" | "--target" => request.target = Some(target(words.next())?),
            "-a" | "--all" => {
                request.namespaces = vec!["mnt", "uts", "ipc", "net", "pid", "cgroup"];
            }
            "-F" | "--no-fork" => {}
            long if long.starts_with("--target=") => {
                request.target = Some(target(Some(&long["--target=".len()..].to_string()))?)
            }
            long if long.starts_with("--") => {
                let name = &long[2..];
                let namespace = match name {
                    "mount" => "mnt",
                    "uts" => "uts",
                    "ipc" => "ipc",
                    "net" => "net",
                    "pid" => "pid",
                    "user" => "user",
                    "cgroup" => "cgroup",
                    "time" => "time",
                    _ => return Err(format!("nsenter: the lab's nsenter does not take {long}")),
                };
                request.namespaces.push(namespace);
            }
            short if short.starts_with('-') && short.len() > 1 => {
                let flags: Vec<char> = short[1..].chars().collect();
                for (index, flag) in flags.iter().enumerate() {
                    if *flag == 't' {
                        // `-t1`, or `-t 1`.
                        let rest: String = flags[index + 1..].iter().collect();
                        let value = if rest.is_empty() {
                            words.next().cloned()
                        } else {
                            Some(rest)
                        };
                        request.target = Some(target(value.as_ref())?);
                        break;
                    }
                    match namespace_of(*flag) {
                        Some(namespace) => request.namespaces.push(namespace),
                        None if *flag == 'F' => {}
                        None => {
                            return Err(format!("nsenter: the lab's nsenter does not take -{flag}"))
                        }
                    }
                }
            }
            _ => {
                request.command.push(word.clone());
                break;
            }
        }
    }
    request.command.extend(words.cloned());
    Ok(request)
}

/// Runs `nsenter ARGS` as a container that reaches `reach` would: replaces this process
/// with the command once in the namespaces asked for, or returns the exit code and
/// message of a refusal.
pub fn run(reach: &str, args: &[String]) -> (i32, String) {
    let Some(reach) = Reach::parse(reach) else {
        return (1, format!("nsenter: unknown lab reach {reach:?}"));
    };
    let request = match parse(args) {
        Ok(request) => request,
        Err(message) => return (1, message),
    };
    if let Some(first) = request.namespaces.first() {
        match (&reach, request.target) {
            (Reach::Refused, _) => {
                return (
                    1,
                    format!("nsenter: reassociate to namespace 'ns/{first}' failed: Operation not permitted"),
                )
            }
            (_, None) => {
                return (
                    1,
                    "nsenter: neither filename nor target pid supplied for ns/".to_string() + first,
                )
            }
            (Reach::Node { .. }, Some(pid)) if pid != 1 => {
                return (
                    1,
                    format!("nsenter: cannot open /proc/{pid}/ns/{first}: the lab simulates only the node's PID 1"),
                )
            }
            _ => {}
        }
    }
    if let Reach::Node { netns } = &reach {
        if request.namespaces.contains(&"net") {
            if let Err(error) = enter_network_namespace(netns) {
                return (
                    1,
                    format!("nsenter: reassociate to namespace 'ns/net' failed: {error}"),
                );
            }
        }
    }
    let command = if request.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        request.command
    };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    (
        127,
        format!("nsenter: failed to execute {}: {error}", command[0]),
    )
}

fn enter_network_namespace(netns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(netns)?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_debug_profile_command_line_is_read_as_nsenter_reads_it() {
        let request = parse(&words("-t 1 -m -u -i -n -p -- sh -c cat /etc/hostname")).unwrap();
        assert_eq!(request.target, Some(1));
        assert_eq!(request.namespaces, ["mnt", "uts", "ipc", "net", "pid"]);
        assert_eq!(request.command, words("sh -c cat /etc/hostname"));
        let packed = parse(&words("-t1 -mnp sh")).unwrap();
        assert_eq!(
            (packed.target, packed.namespaces, packed.command),
            (Some(1), vec!["mnt", "net", "pid"], words("sh"))
        );
        let long = parse(&words("--target=1 --mount --net true")).unwrap();
        assert_eq!((long.target, long.command), (Some(1), words("true")));
        assert!(parse(&words("-x sh")).is_err());
    }

    #[test]
    fn only_a_privileged_host_pid_container_reaches_the_node() {
        let container = |privileged: bool| json!({"securityContext": {"privileged": privileged}});
        let pod = |host_pid: bool| json!({"spec": {"hostPID": host_pid}});
        assert_eq!(
            Reach::of(&pod(true), &container(true), Path::new("/lab/n3/netns")),
            Reach::Node {
                netns: "/lab/n3/netns".into()
            }
        );
        let netns = Path::new("/lab/n3/netns");
        assert_eq!(Reach::of(&pod(false), &container(true), netns), Reach::Own);
        assert_eq!(
            Reach::of(&pod(true), &container(false), netns),
            Reach::Refused
        );
        for reach in [
            Reach::Own,
            Reach::Refused,
            Reach::Node { netns: "x".into() },
        ] {
            assert_eq!(Reach::parse(&reach.word()), Some(reach));
        }
    }

    #[test]
    fn an_unprivileged_container_is_refused_as_the_kernel_refuses_it() {
        let (code, message) = run("refused", &words("-t 1 -m -n -- true"));
        assert_eq!(code, 1);
        assert!(message.contains("Operation not permitted"), "{message}");
        let (code, message) = run("node:/lab/n3/netns", &words("-t 42 -n -- true"));
        assert_eq!(code, 1);
        assert!(message.contains("/proc/42/ns/net"), "{message}");
    }
}
