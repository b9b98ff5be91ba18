//! Importing an Ansible inventory: what `ansible-inventory --list` prints, turned into
//! the text of a postflight inventory. This module owns running `ansible-inventory`, the
//! choice of nodes by group, the mapping of Ansible's connection variables onto `ssh:`
//! and `nodes:`, and the list of variables it leaves out. Everything it reads is written
//! by people and treated as hostile: names are validated as the inventory validates them,
//! and values reach the YAML only through the serializer.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::hostile;
use crate::inventory::{valid_host, valid_node_name};

/// The host variable that, when set, names a host's Kubernetes node instead of its
/// Ansible name.
pub const DEFAULT_NODE_NAME_VARIABLE: &str = "k8s_node_name";

/// The program that lists an Ansible inventory (from ansible-core), found on PATH.
const ANSIBLE_INVENTORY: &str = "ansible-inventory";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{ANSIBLE_INVENTORY} was not found on PATH: install ansible-core (`pip install ansible-core`) or pass --list-json with what it printed")]
    AnsibleInventoryMissing,
    #[error("cannot run {ANSIBLE_INVENTORY}: {0}")]
    AnsibleInventoryUnrunnable(std::io::Error),
    #[error("{}: no such Ansible inventory source", .source_path.display())]
    SourceMissing { source_path: PathBuf },
    #[error("`{ANSIBLE_INVENTORY} -i {} --list` failed ({status}): {stderr}", .source_path.display())]
    AnsibleInventoryFailed {
        source_path: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{}: cannot read it: {error}", .file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: not what `ansible-inventory --list` prints: {reason}")]
    NotAListing { origin: String, reason: String },
    #[error("{origin}: group {group:?} carries its own `vars`, as `ansible-inventory --list --export` prints them: list it without --export, so that _meta.hostvars holds each host's complete variables")]
    ExportedGroupVariables { origin: String, group: String },
    #[error("{origin}: there is no group {group:?}; the groups are: {}", .known.join(", "))]
    UnknownGroup {
        origin: String,
        group: String,
        known: Vec<String>,
    },
    #[error("{origin}: group {group:?} has no hosts, nor have its children")]
    EmptyGroup { origin: String, group: String },
    #[error("{origin}: host {host:?}: {problem}")]
    Host {
        origin: String,
        host: String,
        problem: Box<HostProblem>,
    },
    #[error("{origin}: hosts {first_host:?} and {second_host:?} are both the node {name:?}")]
    DuplicateNode {
        origin: String,
        name: String,
        first_host: String,
        second_host: String,
    },
    #[error("{}: the path is not UTF-8, which a YAML inventory cannot hold", .path.display())]
    PathNotUtf8 { path: PathBuf },
    #[error("writing the inventory as YAML: {0}")]
    Serialize(String),
}

/// What is wrong with one host's variables.
#[derive(Debug, thiserror::Error)]
pub enum HostProblem {
    #[error("{variable} is {found}; expected {expected}")]
    WrongType {
        variable: String,
        expected: &'static str,
        found: String,
    },
    #[error("{variable} is the template {value:?}, which ansible-inventory does not evaluate: set it to a literal value")]
    Template { variable: String, value: String },
    #[error("{variable} ({first:?}) and {alias} ({second:?}) disagree; keep one")]
    ConflictingAliases {
        variable: &'static str,
        alias: &'static str,
        first: String,
        second: String,
    },
    #[error("node name {name:?}{} is not a valid Kubernetes node name (DNS-1123: lowercase letters, digits, '-' and '.'); set {node_name_variable} on the host to its node's name", .from_variable.then(|| format!(" (from {node_name_variable})")).unwrap_or_default())]
    InvalidNodeName {
        name: String,
        /// Whether the name came from the node-name variable rather than the host name.
        from_variable: bool,
        node_name_variable: String,
    },
    #[error("{variable} {value:?} is neither an IP address nor a hostname")]
    InvalidSshHost {
        variable: &'static str,
        value: String,
    },
    #[error("ansible_become_method is {method:?}; postflight becomes root with sudo only")]
    UnsupportedBecomeMethod { method: String },
    #[error("ansible_become_user is {user:?}; postflight's sudo becomes root only")]
    UnsupportedBecomeUser { user: String },
}

/// What the imported inventory is to contain besides the hosts.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The group whose hosts (with its children's, recursively) are the nodes.
    pub group: String,
    /// Members of this group are written `protected: true` (the control plane).
    pub protected_group: Option<String>,
    /// The host variable that names a host's Kubernetes node.
    pub node_name_variable: String,
    pub known_hosts: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// A postflight inventory resolves relative paths against its own directory, while
    /// the command line and Ansible's own SSH runs resolve them against the working
    /// directory: relative paths are written out joined to this one, so the inventory
    /// reads the same files wherever it is saved.
    pub working_directory: PathBuf,
}

/// A converted inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The postflight inventory's YAML text.
    pub yaml: String,
    /// The nodes, in the order the inventory lists them.
    pub node_names: Vec<String>,
    /// Variables of the selected hosts that postflight has no use for, by name.
    pub ignored: Vec<IgnoredVariable>,
}

/// A variable the import left out, and the hosts (by Ansible name) that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredVariable {
    pub variable: String,
    pub hosts: Vec<String>,
}

impl std::fmt::Display for IgnoredVariable {
    /// Made for a terminal: names come from files anyone may have edited.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts = self.hosts.join(", ");
        write!(
            formatter,
            "{} (on {})",
            hostile::for_terminal(&self.variable),
            hostile::for_terminal(&hosts)
        )
    }
}

/// What `ansible-inventory --list` printed: the JSON, and its warnings.
#[derive(Debug, Clone)]
pub struct Listing {
    pub json: String,
    pub warnings: String,
}

/// Runs `ansible-inventory -i SOURCE --list`, found on PATH. A source it cannot parse is
/// an error here, where by default Ansible only warns and lists an empty inventory.
///
/// # Errors
/// The source does not exist, ansible-inventory is not installed or fails.
pub fn run_ansible_inventory(source: &Path) -> Result<Listing, ImportError> {
    if !source.exists() {
        return Err(ImportError::SourceMissing {
            source_path: source.into(),
        });
    }
    let output = Command::new(ANSIBLE_INVENTORY)
        .arg("-i")
        .arg(source)
        .arg("--list")
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .env("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "true")
        .env("ANSIBLE_NOCOLOR", "true")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => ImportError::AnsibleInventoryMissing,
            _ => ImportError::AnsibleInventoryUnrunnable(error),
        })?;
    let stderr = hostile::lossy(output.stderr);
    if !output.status.success() {
        return Err(ImportError::AnsibleInventoryFailed {
            source_path: source.into(),
            status: output.status,
            stderr: hostile::tail(stderr.trim(), hostile::MAX_EVIDENCE_BYTES).into_owned(),
        });
    }
    Ok(Listing {
        json: hostile::lossy(output.stdout),
        warnings: stderr,
    })
}

/// Reads what `ansible-inventory --list` printed from a file, or from stdin for `-`.
///
/// # Errors
/// The file cannot be read.
pub fn read_listing(file: &Path) -> Result<String, ImportError> {
    let read_error = |error| ImportError::Read {
        file: file.into(),
        error,
    };
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(read_error)
}

/// How a host is reached and named, as the Ansible variables say.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    name: String,
    host: String,
    port: Option<u16>,
    user: Option<String>,
    identity_file: Option<String>,
    become_sudo: bool,
    protected: bool,
}

/// The Ansible variables postflight maps, and their legacy spellings that Ansible still
/// reads as the same thing.
const HOST_VARIABLES: [&str; 2] = ["ansible_host", "ansible_ssh_host"];
const PORT_VARIABLES: [&str; 2] = ["ansible_port", "ansible_ssh_port"];
const USER_VARIABLES: [&str; 2] = ["ansible_user", "ansible_ssh_user"];
const IDENTITY_VARIABLES: [&str; 2] = ["ansible_ssh_private_key_file", "ansible_private_key_file"];
const BECOME_VARIABLES: [&str; 3] = [
    "ansible_become",
    "ansible_become_method",
    "ansible_become_user",
];

/// The inventory's groups, by name.
struct Groups<'a> {
    origin: &'a str,
    members: BTreeMap<&'a str, GroupMembers<'a>>,
}

/// A group's own hosts and its child groups, in the order listed.
#[derive(Default)]
struct GroupMembers<'a> {
    hosts: Vec<&'a str>,
    children: Vec<&'a str>,
}

impl<'a> Groups<'a> {
    fn read(listing: &'a Map<String, Value>, origin: &'a str) -> Result<Self, ImportError> {
        let not_a_listing = |reason: String| ImportError::NotAListing {
            origin: origin.into(),
            reason,
        };
        let names = |group: &str, entry: &'a Map<String, Value>, key: &str| {
            let Some(list) = entry.get(key) else {
                return Ok(Vec::new());
            };
            let items = list
                .as_array()
                .ok_or_else(|| not_a_listing(format!("group {group:?}: `{key}` is not a list")))?;
            items
                .iter()
                .map(|item| {
                    item.as_str().ok_or_else(|| {
                        not_a_listing(format!("group {group:?}: `{key}` lists a non-string"))
                    })
                })
                .collect::<Result<Vec<&str>, _>>()
        };
        let mut members = BTreeMap::new();
        for (group, entry) in listing.iter().filter(|(key, _)| *key != "_meta") {
            let entry = entry
                .as_object()
                .ok_or_else(|| not_a_listing(format!("group {group:?} is not an object")))?;
            if entry.contains_key("vars") {
                return Err(ImportError::ExportedGroupVariables {
                    origin: origin.into(),
                    group: group.clone(),
                });
            }
            members.insert(
                group.as_str(),
                GroupMembers {
                    hosts: names(group, entry, "hosts")?,
                    children: names(group, entry, "children")?,
                },
            );
        }
        // Ansible lists `ungrouped` as a child of `all` even when it has no entry.
        let children: Vec<&str> = members
            .values()
            .flat_map(|members| members.children.iter().copied())
            .collect();
        for child in children {
            members.entry(child).or_default();
        }
        Ok(Groups { origin, members })
    }

    /// The hosts of `group` and of its children, recursively, depth first in the order
    /// listed; each host once, where it first appears.
    fn hosts(&self, group: &str) -> Result<Vec<&'a str>, ImportError> {
        if !self.members.contains_key(group) {
            return Err(ImportError::UnknownGroup {
                origin: self.origin.into(),
                group: group.into(),
                known: self.members.keys().map(|name| name.to_string()).collect(),
            });
        }
        let mut hosts = Vec::new();
        let mut seen_hosts = HashSet::new();
        let mut seen_groups = HashSet::new();
        self.collect(group, &mut hosts, &mut seen_hosts, &mut seen_groups);
        Ok(hosts)
    }

    fn collect(
        &self,
        group: &str,
        hosts: &mut Vec<&'a str>,
        seen_hosts: &mut HashSet<&'a str>,
        seen_groups: &mut HashSet<String>,
    ) {
        // A listing written by hand may have a cycle that Ansible itself would refuse.
        if !seen_groups.insert(group.to_string()) {
            return;
        }
        let Some(members) = self.members.get(group) else {
            return;
        };
        for host in &members.hosts {
            if seen_hosts.insert(host) {
                hosts.push(host);
            }
        }
        for child in &members.children {
            self.collect(child, hosts, seen_hosts, seen_groups);
        }
    }
}

/// One host's variables, read with the host and variable named in every error.
struct HostVariables<'a> {
    origin: &'a str,
    host: &'a str,
    variables: Option<&'a Map<String, Value>>,
}

impl HostVariables<'_> {
    /// A variable's value; null is unset, as Ansible reads an empty value.
    fn value(&self, variable: &str) -> Option<&Value> {
        self.variables?
            .get(variable)
            .filter(|value| !value.is_null())
    }

    fn problem(&self, problem: HostProblem) -> ImportError {
        ImportError::Host {
            origin: self.origin.into(),
            host: self.host.into(),
            problem: Box::new(problem),
        }
    }

    fn wrong_type(&self, variable: &str, expected: &'static str, value: &Value) -> ImportError {
        let found = match value {
            Value::Bool(_) => "a boolean".to_string(),
            Value::Number(number) => format!("the number {number}"),
            Value::String(text) => format!("{text:?}"),
            Value::Array(_) => "a list".to_string(),
            Value::Object(_) => "a mapping (a vaulted value?)".to_string(),
            Value::Null => "null".to_string(),
        };
        self.problem(HostProblem::WrongType {
            variable: variable.into(),
            expected,
            found,
        })
    }

    /// A text variable. Numbers are text as Ansible would pass them on; a template is an
    /// error, since nothing here can evaluate it.
    fn text(&self, variable: &str) -> Result<Option<String>, ImportError> {
        let Some(value) = self.value(variable) else {
            return Ok(None);
        };
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            other => return Err(self.wrong_type(variable, "text", other)),
        };
        if text.contains("{{") || text.contains("{%") {
            return Err(self.problem(HostProblem::Template {
                variable: variable.into(),
                value: text,
            }));
        }
        Ok(Some(text))
    }

    /// A text variable that has a legacy spelling, and which of the two set it: either
    /// may be set, but not to two different values.
    fn text_of_either(
        &self,
        variables: [&'static str; 2],
    ) -> Result<Option<(String, &'static str)>, ImportError> {
        match (self.text(variables[0])?, self.text(variables[1])?) {
            (Some(first), Some(second)) if first != second => {
                Err(self.problem(HostProblem::ConflictingAliases {
                    variable: variables[0],
                    alias: variables[1],
                    first,
                    second,
                }))
            }
            (Some(first), _) => Ok(Some((first, variables[0]))),
            (None, second) => Ok(second.map(|second| (second, variables[1]))),
        }
    }

    fn port(&self) -> Result<Option<u16>, ImportError> {
        let expected = "a port number (1-65535)";
        let mut ports = Vec::new();
        for variable in PORT_VARIABLES {
            let Some(value) = self.value(variable) else {
                continue;
            };
            let port = match value {
                Value::Number(number) => number.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(text) => text.trim().parse::<u16>().ok(),
                _ => None,
            }
            .filter(|port| *port > 0)
            .ok_or_else(|| self.wrong_type(variable, expected, value))?;
            ports.push((variable, port));
        }
        match ports.as_slice() {
            [(_, first), (_, second)] if first != second => {
                Err(self.problem(HostProblem::ConflictingAliases {
                    variable: PORT_VARIABLES[0],
                    alias: PORT_VARIABLES[1],
                    first: first.to_string(),
                    second: second.to_string(),
                }))
            }
            _ => Ok(ports.first().map(|(_, port)| *port)),
        }
    }

    /// A boolean as Ansible reads one: true/false, or the strings and numbers its
    /// `boolean` filter accepts.
    fn boolean(&self, variable: &str) -> Result<Option<bool>, ImportError> {
        let Some(value) = self.value(variable) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Bool(flag) => Some(*flag),
            Value::Number(number) => match number.as_u64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
                "y" | "yes" | "on" | "1" | "true" | "t" => Some(true),
                "n" | "no" | "off" | "0" | "false" | "f" => Some(false),
                _ => None,
            },
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| self.wrong_type(variable, "a boolean", value))
    }

    /// Whether commands run through sudo: only sudo to root is something postflight does.
    fn become_sudo(&self) -> Result<bool, ImportError> {
        if self.boolean("ansible_become")? != Some(true) {
            return Ok(false);
        }
        if let Some(method) = self.text("ansible_become_method")? {
            if method != "sudo" {
                return Err(self.problem(HostProblem::UnsupportedBecomeMethod { method }));
            }
        }
        if let Some(user) = self.text("ansible_become_user")? {
            if user != "root" {
                return Err(self.problem(HostProblem::UnsupportedBecomeUser { user }));
            }
        }
        Ok(true)
    }
}

/// Converts what `ansible-inventory --list` printed into a postflight inventory.
/// `origin` names where the listing came from, for errors.
///
/// Nodes are written in inventory order, as [`Groups::hosts`] walks the group. Values
/// that every node shares (user, port, identity file, become) are written once, under
/// `ssh:`; the others on each node.
///
/// # Errors
/// A listing that is not one, an unknown or empty group, and a host whose variables
/// cannot be mapped, each naming the host and the variable.
pub fn convert(
    listing: &str,
    origin: &str,
    options: &ImportOptions,
) -> Result<Import, ImportError> {
    let listing: Value =
        serde_json::from_str(listing).map_err(|error| ImportError::NotAListing {
            origin: origin.into(),
            reason: error.to_string(),
        })?;
    let listing = listing
        .as_object()
        .ok_or_else(|| ImportError::NotAListing {
            origin: origin.into(),
            reason: "it is not a JSON object".into(),
        })?;
    let no_hostvars = Map::new();
    let hostvars = match listing.get("_meta").and_then(|meta| meta.get("hostvars")) {
        None => &no_hostvars,
        Some(hostvars) => hostvars
            .as_object()
            .ok_or_else(|| ImportError::NotAListing {
                origin: origin.into(),
                reason: "_meta.hostvars is not an object".into(),
            })?,
    };
    let groups = Groups::read(listing, origin)?;
    let hosts = groups.hosts(&options.group)?;
    if hosts.is_empty() {
        return Err(ImportError::EmptyGroup {
            origin: origin.into(),
            group: options.group.clone(),
        });
    }
    let protected: HashSet<&str> = match &options.protected_group {
        Some(group) => groups.hosts(group)?.into_iter().collect(),
        None => HashSet::new(),
    };

    let mapped: HashSet<&str> = HOST_VARIABLES
        .iter()
        .chain(&PORT_VARIABLES)
        .chain(&USER_VARIABLES)
        .chain(&IDENTITY_VARIABLES)
        .chain(&BECOME_VARIABLES)
        .copied()
        .chain([options.node_name_variable.as_str()])
        .collect();
    let mut nodes = Vec::with_capacity(hosts.len());
    let mut host_of_node: HashMap<String, &str> = HashMap::new();
    let mut ignored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for host in hosts {
        let variables = HostVariables {
            origin,
            host,
            variables: hostvars.get(host).and_then(Value::as_object),
        };
        let node = node(&variables, options, protected.contains(host))?;
        if let Some(first_host) = host_of_node.insert(node.name.clone(), host) {
            return Err(ImportError::DuplicateNode {
                origin: origin.into(),
                name: node.name,
                first_host: first_host.into(),
                second_host: host.into(),
            });
        }
        nodes.push(node);
        for variable in variables.variables.into_iter().flat_map(Map::keys) {
            if !mapped.contains(variable.as_str()) {
                ignored
                    .entry(variable.clone())
                    .or_default()
                    .push(host.into());
            }
        }
    }

    let yaml = render(&nodes, options)?;
    Ok(Import {
        yaml,
        node_names: nodes.into_iter().map(|node| node.name).collect(),
        ignored: ignored
            .into_iter()
            .map(|(variable, hosts)| IgnoredVariable { variable, hosts })
            .collect(),
    })
}

fn node(
    variables: &HostVariables,
    options: &ImportOptions,
    protected: bool,
) -> Result<Node, ImportError> {
    let host = variables.host;
    let named = variables.text(&options.node_name_variable)?;
    let name = named.clone().unwrap_or_else(|| host.to_string());
    if !valid_node_name(&name) {
        return Err(variables.problem(HostProblem::InvalidNodeName {
            name,
            from_variable: named.is_some(),
            node_name_variable: options.node_name_variable.clone(),
        }));
    }
    // As Ansible does: without ansible_host, the inventory name is the address.
    let (ssh_host, variable) = variables
        .text_of_either(HOST_VARIABLES)?
        .unwrap_or_else(|| (host.to_string(), "the host name"));
    if !valid_host(&ssh_host) {
        return Err(variables.problem(HostProblem::InvalidSshHost {
            variable,
            value: ssh_host,
        }));
    }
    let identity_file = variables
        .text_of_either(IDENTITY_VARIABLES)?
        .map(|(path, _)| absolute_path(Path::new(&path), &options.working_directory))
        .transpose()?;
    Ok(Node {
        name,
        host: ssh_host,
        port: variables.port()?,
        user: variables
            .text_of_either(USER_VARIABLES)?
            .map(|(user, _)| user),
        identity_file,
        become_sudo: variables.become_sudo()?,
        protected,
    })
}

/// `path` as text, joined to `working_directory` when relative; `~/` is kept, since the
/// inventory expands it as a shell would.
fn absolute_path(path: &Path, working_directory: &Path) -> Result<String, ImportError> {
    let path = if path.is_relative() && !path.starts_with("~") {
        working_directory.join(path)
    } else {
        path.to_path_buf()
    };
    path.to_str()
        .map(String::from)
        .ok_or(ImportError::PathNotUtf8 { path })
}

#[derive(Serialize)]
struct InventoryDocument {
    #[serde(skip_serializing_if = "ClusterSection::is_empty")]
    cluster: ClusterSection,
    ssh: SshSection,
    nodes: Vec<NodeSection>,
}

#[derive(Serialize)]
struct ClusterSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    kubeconfig: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
}

impl ClusterSection {
    fn is_empty(&self) -> bool {
        self.kubeconfig.is_none() && self.context.is_none()
    }
}

#[derive(Serialize)]
struct SshSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_file: Option<String>,
    known_hosts: String,
    #[serde(rename = "become", skip_serializing_if = "Option::is_none")]
    become_method: Option<&'static str>,
}

#[derive(Serialize)]
struct NodeSection {
    name: String,
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_file: Option<String>,
    #[serde(rename = "become", skip_serializing_if = "Option::is_none")]
    become_method: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    protected: bool,
}

/// The value of a field when every node has it, the same and set; a node without it
/// takes postflight's default, so a value only some nodes have stays on those.
fn shared<T: PartialEq + Clone>(nodes: &[Node], field: impl Fn(&Node) -> Option<T>) -> Option<T> {
    let first = field(nodes.first()?)?;
    nodes
        .iter()
        .all(|node| field(node).as_ref() == Some(&first))
        .then_some(first)
}

/// A node's own value, unless the `ssh:` defaults already carry the one all nodes share.
fn unless_shared<T, U>(value: Option<T>, shared: &Option<U>) -> Option<T> {
    value.filter(|_| shared.is_none())
}

fn render(nodes: &[Node], options: &ImportOptions) -> Result<String, ImportError> {
    let sudo = |node: &Node| node.become_sudo.then_some("sudo");
    let ssh = SshSection {
        user: shared(nodes, |node| node.user.clone()),
        port: shared(nodes, |node| node.port),
        identity_file: shared(nodes, |node| node.identity_file.clone()),
        known_hosts: absolute_path(&options.known_hosts, &options.working_directory)?,
        become_method: shared(nodes, sudo),
    };
    let document = InventoryDocument {
        cluster: ClusterSection {
            kubeconfig: options
                .kubeconfig
                .as_deref()
                .map(|path| absolute_path(path, &options.working_directory))
                .transpose()?,
            context: options.context.clone(),
        },
        nodes: nodes
            .iter()
            .map(|node| NodeSection {
                name: node.name.clone(),
                host: node.host.clone(),
                port: unless_shared(node.port, &ssh.port),
                user: unless_shared(node.user.clone(), &ssh.user),
                identity_file: unless_shared(node.identity_file.clone(), &ssh.identity_file),
                become_method: unless_shared(sudo(node), &ssh.become_method),
                protected: node.protected,
            })
            .collect(),
        ssh,
    };
    let yaml = serde_saphyr::to_string_with_options(
        &document,
        serde_saphyr::ser_options! {
            compact_list_indent: false,
            prefer_block_scalars: false,
        },
    )
    .map_err(|error| ImportError::Serialize(error.to_string()))?;
    // The group is the only text here that is not serialized: Debug-quoting keeps it
    // on the comment's line, whatever it holds.
    Ok(format!(
        "# postflight inventory, imported from the Ansible group {:?} by `postflight inventory from-ansible`.\n{yaml}",
        options.group
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Become, Inventory, SshTarget};
    use rstest::rstest;
    use serde_json::json;

    fn options() -> ImportOptions {
        ImportOptions {
            group: "all".into(),
            protected_group: None,
            node_name_variable: DEFAULT_NODE_NAME_VARIABLE.into(),
            known_hosts: "ssh/known_hosts".into(),
            kubeconfig: None,
            context: None,
            working_directory: "/srv/ops".into(),
        }
    }

    /// A listing as `ansible-inventory --list` prints it: `groups` beside `_meta`.
    fn listing(groups: Value, hostvars: Value) -> String {
        let mut listing = groups;
        listing["_meta"] = json!({ "hostvars": hostvars, "profile": "inventory_legacy" });
        listing.to_string()
    }

    fn one_host(name: &str, variables: Value) -> String {
        listing(
            json!({"all": {"children": ["ungrouped"]}, "ungrouped": {"hosts": [name]}}),
            json!({ name: variables }),
        )
    }

    /// The import, read back as postflight reads an inventory.
    fn imported(listing: &str, options: &ImportOptions) -> (Import, Inventory) {
        let import = convert(listing, "listing.json", options).unwrap();
        let inventory = Inventory::parse(&import.yaml, Path::new("/elsewhere/inventory.yaml"))
            .unwrap_or_else(|error| panic!("{error}\n{}", import.yaml));
        (import, inventory)
    }

    /// The host an error names and what is wrong with it; any other error fails the test.
    fn host_problem(error: &ImportError) -> (&str, &HostProblem) {
        match error {
            ImportError::Host { host, problem, .. } => (host, problem),
            other => panic!("not a host's problem: {other}"),
        }
    }

    fn target(inventory: &Inventory, node: &str) -> SshTarget {
        inventory
            .ssh_target(inventory.node(node).expect(node))
            .expect("reached over SSH")
    }

    fn cluster() -> String {
        listing(
            json!({
                "all": {"children": ["ungrouped", "k8s"]},
                "k8s": {"children": ["control", "workers"]},
                "control": {"hosts": ["k8s-control-01"]},
                "workers": {"hosts": ["k8s-worker-02", "k8s-worker-01"]},
            }),
            json!({
                "k8s-control-01": {"ansible_host": "10.0.0.10", "ansible_user": "ops"},
                "k8s-worker-01": {
                    "ansible_host": "10.0.0.11", "ansible_user": "ops",
                    "ansible_ssh_private_key_file": "keys/id_ed25519",
                },
                "k8s-worker-02": {
                    "ansible_host": "10.0.0.12", "ansible_user": "ops", "ansible_port": 2222,
                    "ansible_become": "true",
                },
            }),
        )
    }

    #[test]
    fn connection_variables_map_onto_each_nodes_ssh_target() {
        let (import, inventory) = imported(&cluster(), &options());
        assert_eq!(
            import.node_names,
            ["k8s-control-01", "k8s-worker-02", "k8s-worker-01"]
        );
        assert_eq!(
            target(&inventory, "k8s-worker-02"),
            SshTarget {
                node: "k8s-worker-02".into(),
                host: "10.0.0.12".into(),
                port: 2222,
                user: "ops".into(),
                jump: None,
                identity_file: None,
                known_hosts: "/srv/ops/ssh/known_hosts".into(),
                become_method: Some(Become::Sudo),
            }
        );
        let worker = target(&inventory, "k8s-worker-01");
        assert_eq!((worker.port, worker.become_method), (22, None));
        assert_eq!(
            worker.identity_file.as_deref(),
            Some(Path::new("/srv/ops/keys/id_ed25519")),
            "relative to where Ansible ran, not to where the inventory is saved"
        );
        assert_eq!(target(&inventory, "k8s-control-01").identity_file, None);
        // What all share is said once; what only some have stays on those.
        assert_eq!(inventory.ssh.user, "ops");
        assert!(inventory.nodes.iter().all(|node| node.user.is_none()));
        assert_eq!(inventory.node("k8s-worker-02").unwrap().port, Some(2222));
        assert!(import.ignored.is_empty(), "{:?}", import.ignored);
    }

    #[test]
    fn the_output_is_the_same_for_the_same_listing_and_says_what_made_it() {
        let first = convert(&cluster(), "listing.json", &options()).unwrap();
        let second = convert(&cluster(), "listing.json", &options()).unwrap();
        assert_eq!(first, second);
        assert!(
            first
                .yaml
                .starts_with("# postflight inventory, imported from the Ansible group \"all\""),
            "{}",
            first.yaml
        );
    }

    #[test]
    fn values_every_node_shares_go_to_the_ssh_defaults() {
        let listing = listing(
            json!({"all": {"hosts": ["a", "b"]}}),
            json!({
                "a": {"ansible_host": "10.0.0.1", "ansible_port": 2200, "ansible_become": true,
                      "ansible_ssh_private_key_file": "/keys/id"},
                "b": {"ansible_host": "10.0.0.2", "ansible_port": "2200", "ansible_become": "yes",
                      "ansible_ssh_private_key_file": "/keys/id"},
            }),
        );
        let (_, inventory) = imported(&listing, &options());
        assert_eq!(inventory.ssh.port, 2200);
        assert_eq!(inventory.ssh.become_method, Some(Become::Sudo));
        assert_eq!(
            inventory.ssh.identity_file.as_deref(),
            Some(Path::new("/keys/id"))
        );
        assert!(inventory
            .nodes
            .iter()
            .all(|node| node.port.is_none() && node.become_method.is_none()));
        assert_eq!(
            inventory.ssh.user, "root",
            "unset everywhere: postflight's default"
        );
    }

    #[test]
    fn a_host_without_ansible_host_is_reached_by_its_name() {
        let (_, inventory) = imported(
            &one_host("k8s-worker-07.example.com", json!({})),
            &options(),
        );
        assert_eq!(
            target(&inventory, "k8s-worker-07.example.com").host,
            "k8s-worker-07.example.com"
        );
    }

    #[test]
    fn the_node_name_variable_names_the_node_and_is_not_reported_as_ignored() {
        let host = one_host(
            "Worker_1",
            json!({"ansible_host": "10.0.0.1", "k8s_node_name": "k8s-worker-01"}),
        );
        let (import, inventory) = imported(&host, &options());
        assert_eq!(import.node_names, ["k8s-worker-01"]);
        assert_eq!(target(&inventory, "k8s-worker-01").host, "10.0.0.1");
        assert!(import.ignored.is_empty());

        let renamed = ImportOptions {
            node_name_variable: "kubernetes_name".into(),
            ..options()
        };
        let host = one_host(
            "worker-1",
            json!({"ansible_host": "10.0.0.1", "kubernetes_name": "k8s-worker-09", "k8s_node_name": "x"}),
        );
        let (import, _) = imported(&host, &renamed);
        assert_eq!(import.node_names, ["k8s-worker-09"]);
        assert_eq!(import.ignored[0].variable, "k8s_node_name");
    }

    #[rstest]
    #[case::uppercase("Worker1", json!({}), false)]
    #[case::underscore("worker_1", json!({"ansible_host": "10.0.0.1"}), false)]
    #[case::bad_variable("worker-1", json!({"k8s_node_name": "Worker 1"}), true)]
    #[case::trailing_dash("worker-", json!({"ansible_host": "10.0.0.1"}), false)]
    fn a_name_kubernetes_would_refuse_is_an_error_naming_the_host(
        #[case] host: &str,
        #[case] variables: Value,
        #[case] from_variable: bool,
    ) {
        let error = convert(&one_host(host, variables), "listing.json", &options()).unwrap_err();
        let (
            named,
            HostProblem::InvalidNodeName {
                from_variable: from,
                ..
            },
        ) = host_problem(&error)
        else {
            panic!("{error}")
        };
        assert_eq!((named, *from), (host, from_variable), "{error}");
        let message = error.to_string();
        assert!(message.starts_with("listing.json: host "), "{message}");
        assert!(
            message.contains("set k8s_node_name on the host"),
            "{message}"
        );
    }

    #[test]
    fn a_group_selects_its_hosts_and_its_childrens_recursively_in_inventory_order() {
        let listing = listing(
            json!({
                "all": {"children": ["ungrouped", "site"]},
                "ungrouped": {"hosts": ["bastion"]},
                "site": {"hosts": ["k8s-control-01"], "children": ["workers", "gpu"]},
                "workers": {"hosts": ["k8s-worker-02", "k8s-worker-01"]},
                "gpu": {"hosts": ["k8s-worker-01", "k8s-gpu-01"], "children": ["site"]},
            }),
            json!({}),
        );
        let select = |group: &str| {
            let options = ImportOptions {
                group: group.into(),
                ..options()
            };
            convert(&listing, "listing.json", &options).map(|import| import.node_names)
        };
        assert_eq!(
            select("site").unwrap(),
            [
                "k8s-control-01",
                "k8s-worker-02",
                "k8s-worker-01",
                "k8s-gpu-01"
            ],
            "each host once, and a cycle ends"
        );
        assert_eq!(select("gpu").unwrap()[..2], ["k8s-worker-01", "k8s-gpu-01"]);
        assert_eq!(select("all").unwrap()[0], "bastion");
        assert_eq!(
            select("workers").unwrap(),
            ["k8s-worker-02", "k8s-worker-01"]
        );
    }

    #[test]
    fn an_unknown_group_is_an_error_listing_the_groups_there_are() {
        let options = ImportOptions {
            group: "wokers".into(),
            ..options()
        };
        let error = convert(&cluster(), "listing.json", &options).unwrap_err();
        let ImportError::UnknownGroup { known, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(known, &["all", "control", "k8s", "ungrouped", "workers"]);
        assert_eq!(
            error.to_string(),
            "listing.json: there is no group \"wokers\"; the groups are: all, control, k8s, ungrouped, workers"
        );
        let options = ImportOptions {
            protected_group: Some("controll".into()),
            ..self::options()
        };
        let error = convert(&cluster(), "listing.json", &options).unwrap_err();
        assert!(
            matches!(&error, ImportError::UnknownGroup { group, .. } if group == "controll"),
            "{error}"
        );
    }

    #[test]
    fn a_group_without_hosts_is_an_error() {
        let listing = listing(
            json!({"all": {"children": ["ungrouped", "empty"]}, "empty": {"children": ["ungrouped"]}}),
            json!({}),
        );
        let options = ImportOptions {
            group: "empty".into(),
            ..options()
        };
        let error = convert(&listing, "listing.json", &options).unwrap_err();
        assert!(
            matches!(&error, ImportError::EmptyGroup { group, .. } if group == "empty"),
            "{error}"
        );
    }

    #[test]
    fn the_protected_group_marks_its_members_protected() {
        let options = ImportOptions {
            protected_group: Some("control".into()),
            ..options()
        };
        let (_, inventory) = imported(&cluster(), &options);
        let protected: Vec<&str> = inventory
            .nodes
            .iter()
            .filter(|node| node.protected)
            .map(|node| node.name.value.as_str())
            .collect();
        assert_eq!(protected, ["k8s-control-01"]);
    }

    #[rstest]
    #[case::boolean(json!(true), Some(Become::Sudo))]
    #[case::ini_text(json!("True"), Some(Become::Sudo))]
    #[case::yes(json!("yes"), Some(Become::Sudo))]
    #[case::one(json!(1), Some(Become::Sudo))]
    #[case::off(json!(false), None)]
    #[case::no(json!("no"), None)]
    fn become_is_read_as_ansible_reads_a_boolean(
        #[case] value: Value,
        #[case] expected: Option<Become>,
    ) {
        let host = one_host(
            "a",
            json!({"ansible_host": "10.0.0.1", "ansible_become": value}),
        );
        let (_, inventory) = imported(&host, &options());
        assert_eq!(target(&inventory, "a").become_method, expected);
    }

    #[test]
    fn become_other_than_sudo_to_root_is_an_error_naming_the_host() {
        let with = |variables: Value| {
            convert(
                &one_host("k8s-worker-01", variables),
                "listing.json",
                &options(),
            )
        };
        let error =
            with(json!({"ansible_become": true, "ansible_become_method": "su"})).unwrap_err();
        assert!(
            matches!(host_problem(&error), ("k8s-worker-01", HostProblem::UnsupportedBecomeMethod { method })
                if method == "su"),
            "{error}"
        );
        assert!(
            error.to_string().contains("host \"k8s-worker-01\""),
            "{error}"
        );
        let error =
            with(json!({"ansible_become": true, "ansible_become_user": "postgres"})).unwrap_err();
        assert!(
            matches!(host_problem(&error).1, HostProblem::UnsupportedBecomeUser { user } if user == "postgres"),
            "{error}"
        );
        let error = with(json!({"ansible_become": "maybe"})).unwrap_err();
        assert!(
            matches!(host_problem(&error).1, HostProblem::WrongType { variable, .. } if variable == "ansible_become"),
            "{error}"
        );
        // A method for a become that is off changes nothing.
        with(json!({"ansible_become": false, "ansible_become_method": "su"})).unwrap();
        with(json!({"ansible_become": true, "ansible_become_method": "sudo", "ansible_become_user": "root"}))
            .unwrap();
    }

    #[test]
    fn variables_postflight_does_not_use_are_left_out_and_reported_with_their_hosts() {
        let listing = listing(
            json!({"all": {"hosts": ["a", "b", "unselected"]}, "k8s": {"hosts": ["a", "b"]}}),
            json!({
                "a": {"ansible_python_interpreter": "/usr/bin/python3", "rack": "r1", "ansible_host": "10.0.0.1"},
                "b": {"ansible_python_interpreter": "/usr/bin/python3", "ansible_host": "10.0.0.2"},
                "unselected": {"secret_of_another_group": "x"},
            }),
        );
        let options = ImportOptions {
            group: "k8s".into(),
            ..options()
        };
        let (import, _) = imported(&listing, &options);
        assert_eq!(
            import.ignored,
            [
                IgnoredVariable {
                    variable: "ansible_python_interpreter".into(),
                    hosts: vec!["a".into(), "b".into()],
                },
                IgnoredVariable {
                    variable: "rack".into(),
                    hosts: vec!["a".into()],
                },
            ]
        );
        assert!(!import.yaml.contains("python"), "{}", import.yaml);
        assert!(!import.yaml.contains("r1"), "{}", import.yaml);
        assert_eq!(import.ignored[1].to_string(), "rack (on a)");
    }

    #[test]
    fn hostile_values_are_serialized_so_they_read_back_exactly() {
        let hostile_user = "ops\nnodes:\n  - name: evil\n    host: 6.6.6.6";
        let hostile_key = "/keys/id: #'\"{x} & *anchor ~";
        let host = one_host(
            "k8s-worker-01",
            json!({"ansible_host": "10.0.0.1", "ansible_user": hostile_user,
                   "ansible_ssh_private_key_file": hostile_key}),
        );
        let options = ImportOptions {
            context: Some("yes".into()),
            kubeconfig: Some("null".into()),
            known_hosts: "/keys/known hosts: [1]".into(),
            ..options()
        };
        let (import, inventory) = imported(&host, &options);
        assert_eq!(inventory.node_names(), ["k8s-worker-01"], "{}", import.yaml);
        let worker = target(&inventory, "k8s-worker-01");
        assert_eq!(worker.user, hostile_user);
        assert_eq!(
            worker.identity_file.as_deref(),
            Some(Path::new(hostile_key))
        );
        assert_eq!(worker.known_hosts, Path::new("/keys/known hosts: [1]"));
        assert_eq!(inventory.cluster.context.as_deref(), Some("yes"));
        assert_eq!(
            inventory.cluster.kubeconfig.as_deref(),
            Some(Path::new("/srv/ops/null"))
        );
    }

    #[test]
    fn a_hostile_group_name_stays_inside_the_header_comment() {
        let group = "k8s\nnodes: []\n";
        let listing = listing(
            json!({"all": {"children": [group]}, group: {"hosts": ["a"]}}),
            json!({"a": {"ansible_host": "10.0.0.1"}}),
        );
        let options = ImportOptions {
            group: group.into(),
            ..options()
        };
        let (_, inventory) = imported(&listing, &options);
        assert_eq!(inventory.node_names(), ["a"]);
    }

    #[rstest]
    #[case::shell_in_address(json!({"ansible_host": "10.0.0.1; reboot"}), "ansible_host")]
    #[case::option_as_address(json!({"ansible_host": "-oProxyCommand=x"}), "ansible_host")]
    #[case::legacy_spelling(json!({"ansible_ssh_host": "a b"}), "ansible_ssh_host")]
    fn an_address_that_is_not_one_is_an_error(#[case] variables: Value, #[case] variable: &str) {
        let error = convert(&one_host("a", variables), "listing.json", &options()).unwrap_err();
        assert!(
            matches!(host_problem(&error).1, HostProblem::InvalidSshHost { variable: named, .. } if *named == variable),
            "{error}"
        );
    }

    #[rstest]
    #[case::port_text(json!({"ansible_port": "ssh"}), "ansible_port")]
    #[case::port_zero(json!({"ansible_port": 0}), "ansible_port")]
    #[case::port_too_big(json!({"ansible_port": 70000}), "ansible_port")]
    #[case::user_list(json!({"ansible_user": ["a"]}), "ansible_user")]
    #[case::vaulted_key(
        json!({"ansible_ssh_private_key_file": {"__ansible_vault": "$ANSIBLE_VAULT;1.1"}}),
        "ansible_ssh_private_key_file"
    )]
    fn a_value_of_the_wrong_kind_is_an_error_naming_host_and_variable(
        #[case] variables: Value,
        #[case] variable: &str,
    ) {
        let error = convert(&one_host("a", variables), "listing.json", &options()).unwrap_err();
        assert!(
            matches!(host_problem(&error), ("a", HostProblem::WrongType { variable: named, .. })
                if named == variable),
            "{error}"
        );
    }

    #[test]
    fn a_template_cannot_be_imported() {
        let host = one_host("a", json!({"ansible_host": "{{ lookup('env', 'IP') }}"}));
        let error = convert(&host, "listing.json", &options()).unwrap_err();
        assert!(
            matches!(host_problem(&error).1, HostProblem::Template { variable, .. } if variable == "ansible_host"),
            "{error}"
        );
    }

    #[test]
    fn legacy_spellings_count_and_may_not_disagree() {
        let host = one_host(
            "a",
            json!({"ansible_ssh_host": "10.0.0.1", "ansible_ssh_user": "ops", "ansible_ssh_port": 2222}),
        );
        let (import, inventory) = imported(&host, &options());
        let target = target(&inventory, "a");
        assert_eq!(
            (target.host.as_str(), target.user.as_str(), target.port),
            ("10.0.0.1", "ops", 2222)
        );
        assert!(import.ignored.is_empty());
        let host = one_host("a", json!({"ansible_port": 22, "ansible_ssh_port": "2222"}));
        let error = convert(&host, "listing.json", &options()).unwrap_err();
        assert!(
            matches!(
                host_problem(&error).1,
                HostProblem::ConflictingAliases {
                    variable: "ansible_port",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn two_hosts_naming_one_node_is_an_error() {
        let listing = listing(
            json!({"all": {"hosts": ["a", "b"]}}),
            json!({"b": {"k8s_node_name": "a"}}),
        );
        let error = convert(&listing, "listing.json", &options()).unwrap_err();
        assert!(
            matches!(&error, ImportError::DuplicateNode { first_host, second_host, .. }
                if first_host == "a" && second_host == "b"),
            "{error}"
        );
    }

    #[rstest]
    #[case::not_json("PLAY [all]")]
    #[case::not_an_object("[1]")]
    #[case::hosts_not_a_list(r#"{"all": {"hosts": "a"}}"#)]
    #[case::hostvars_not_an_object(r#"{"all": {"hosts": ["a"]}, "_meta": {"hostvars": []}}"#)]
    fn what_is_not_a_listing_is_said_to_be_not_one(#[case] text: &str) {
        let error = convert(text, "listing.json", &options()).unwrap_err();
        assert!(matches!(error, ImportError::NotAListing { .. }), "{error}");
        assert!(error.to_string().starts_with("listing.json: "), "{error}");
    }

    #[test]
    fn an_exported_listing_is_refused_rather_than_read_without_its_group_variables() {
        let listing = listing(
            json!({"all": {"hosts": ["a"], "vars": {"ansible_user": "ops"}}}),
            json!({}),
        );
        let error = convert(&listing, "listing.json", &options()).unwrap_err();
        assert!(
            matches!(&error, ImportError::ExportedGroupVariables { group, .. } if group == "all"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_source_is_said_before_ansible_is_asked() {
        let error = run_ansible_inventory(Path::new("/nonexistent/hosts.ini")).unwrap_err();
        assert!(
            matches!(&error, ImportError::SourceMissing { source_path } if source_path == Path::new("/nonexistent/hosts.ini")),
            "{error}"
        );
    }
}
