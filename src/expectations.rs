//! What Calico needs on a node, resolved once per run: the inventory's `calico:` section
//! where it speaks, the calico-node DaemonSet where it does not. A manifest install runs
//! calico-node in kube-system, the operator in calico-system; a hardened site runs it as
//! a non-root user. The checks judge against the result and never ask where a value came
//! from; the evidence says it.

use crate::inventory::CalicoSettings;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::PodSpec;
use std::fmt;

/// The name both installs give calico-node's DaemonSet.
pub const CALICO_NODE_DAEMONSET: &str = "calico-node";

/// Where a site's own tmpfiles.d entry for Calico usually lives; the fix commands write it
/// there when the node has none.
const DEFAULT_TMPFILES_FILE: &str = "/etc/tmpfiles.d/calico.conf";

/// calico-node as the cluster runs it, read from its DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoDeployment {
    pub namespace: String,
    pub name: String,
    /// `matchLabels` as a label selector: `k8s-app=calico-node`.
    pub selector: String,
    /// runAsUser of the calico-node container, or of the pod; None: the image's own user,
    /// which is root for calico/node.
    pub user: Option<u32>,
    pub group: Option<u32>,
}

impl CalicoDeployment {
    /// None when the DaemonSet selects its pods by expressions only, which a label
    /// selector string for a pod list cannot say; the inventory then names the selector.
    pub fn of(daemonset: &DaemonSet) -> Option<Self> {
        let spec = daemonset.spec.as_ref()?;
        let labels = spec.selector.match_labels.as_ref()?;
        if labels.is_empty() {
            return None;
        }
        let selector = labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",");
        let pod = spec.template.spec.as_ref();
        let (user, group) = pod.map(run_as).unwrap_or_default();
        Some(CalicoDeployment {
            namespace: daemonset.metadata.namespace.clone().unwrap_or_default(),
            name: daemonset.metadata.name.clone().unwrap_or_default(),
            selector,
            user,
            group,
        })
    }

    fn describe(&self) -> String {
        format!("DaemonSet {}/{}", self.namespace, self.name)
    }
}

/// The calico-node container's user and group, its own securityContext over the pod's,
/// as the kubelet resolves them.
fn run_as(pod: &PodSpec) -> (Option<u32>, Option<u32>) {
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == CALICO_NODE_DAEMONSET)
        .or(pod.containers.first());
    let own = container.and_then(|c| c.security_context.as_ref());
    let shared = pod.security_context.as_ref();
    let pick = |own: Option<i64>, shared: Option<i64>| {
        own.or(shared).and_then(|id| u32::try_from(id).ok())
    };
    (
        pick(
            own.and_then(|s| s.run_as_user),
            shared.and_then(|s| s.run_as_user),
        ),
        pick(
            own.and_then(|s| s.run_as_group),
            shared.and_then(|s| s.run_as_group),
        ),
    )
}

/// The user calico-node runs as, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoUser {
    pub uid: u32,
    /// None: the image's primary group, which only the image knows.
    pub gid: Option<u32>,
    pub source: String,
}

/// What the run directory must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunDirAccess {
    /// The inventory names it: exactly this mode, owner and group.
    Exact(RunDirStat),
    /// calico-node's user must be able to create files in it (BIRD's socket, confd's
    /// files): write and search permission through owner, group or other bits.
    UsableBy(CalicoUser),
}

/// A tmpfiles.d entry the site declares in its inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfilesDeclaration {
    pub file: String,
    pub line: String,
}

/// Everything the checks hold a node's Calico state against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoExpectations {
    pub namespace: String,
    pub selector: String,
    pub run_dir: String,
    pub access: RunDirAccess,
    /// None: nobody declared one in the inventory; the node's own entry, if any, is judged.
    pub tmpfiles: Option<TmpfilesDeclaration>,
    /// Where the values came from, for the report.
    pub source: String,
}

impl CalicoExpectations {
    /// The incident's site, as its inventory declares it: calico-node as uid/gid 999 in
    /// kube-system, and its own tmpfiles.d entry.
    pub fn hardened_site() -> Self {
        CalicoExpectations {
            namespace: "kube-system".into(),
            selector: "k8s-app=calico-node".into(),
            run_dir: "/var/run/calico".into(),
            access: RunDirAccess::Exact(RunDirStat {
                mode: "755".into(),
                uid: 999,
                gid: 999,
            }),
            tmpfiles: Some(TmpfilesDeclaration {
                file: DEFAULT_TMPFILES_FILE.into(),
                line: "d /run/calico 0755 999 999 -".into(),
            }),
            source: "the inventory".into(),
        }
    }

    /// What the run directory should look like, as `mode uid gid`, for evidence and for
    /// the commands that recreate it.
    pub fn wanted_stat(&self) -> RunDirStat {
        match &self.access {
            RunDirAccess::Exact(stat) => stat.clone(),
            RunDirAccess::UsableBy(user) => RunDirStat {
                mode: "755".into(),
                uid: user.uid,
                gid: user.gid.unwrap_or(user.uid),
            },
        }
    }

    /// The requirement in words, for the evidence's "expected" column.
    pub fn wanted(&self) -> String {
        match &self.access {
            RunDirAccess::Exact(stat) => stat.to_string(),
            RunDirAccess::UsableBy(user) => format!("usable by uid {} ({})", user.uid, user.source),
        }
    }

    /// calico-node's user, in words: "uid 999".
    pub fn user(&self) -> String {
        match &self.access {
            RunDirAccess::Exact(stat) => format!("uid {}", stat.uid),
            RunDirAccess::UsableBy(user) => format!("uid {}", user.uid),
        }
    }

    /// Whether the run directory as observed meets the requirement; Err says why not.
    pub fn judge_access(&self, observed: &RunDirStat) -> Result<(), String> {
        match &self.access {
            RunDirAccess::Exact(want) if observed == want => Ok(()),
            RunDirAccess::Exact(want) => Err(format!(
                "expected {want}: calico-node (uid {}) cannot use it",
                want.uid
            )),
            RunDirAccess::UsableBy(user) if usable(observed, user) => Ok(()),
            RunDirAccess::UsableBy(user) => Err(format!(
                "calico-node runs as uid {} ({}) and cannot create files in it",
                user.uid, user.source
            )),
        }
    }

    /// The tmpfiles.d file the fix writes: the declared one, else the run directory's own
    /// (Calico's usual file). An entry found in any other file is never written over:
    /// it belongs to whatever put it there, and the fix names the line to take out.
    pub fn tmpfiles_file(&self) -> String {
        match &self.tmpfiles {
            Some(declared) => declared.file.clone(),
            None => DEFAULT_TMPFILES_FILE.into(),
        }
    }

    /// The tmpfiles.d line that makes the run directory right at every boot.
    pub fn tmpfiles_line(&self) -> String {
        match &self.tmpfiles {
            Some(declared) => declared.line.clone(),
            None => {
                let want = self.wanted_stat();
                format!(
                    "d {} 0{} {} {} -",
                    canonical_run_path(&self.run_dir),
                    want.mode,
                    want.uid,
                    want.gid
                )
            }
        }
    }
}

impl Default for CalicoExpectations {
    fn default() -> Self {
        Self::hardened_site()
    }
}

/// Write and search permission on a directory for `user`, as the kernel decides it:
/// root passes; otherwise the owner bits apply to the owner, the group bits to the group
/// (when the group is known), the other bits to everyone else.
fn usable(stat: &RunDirStat, user: &CalicoUser) -> bool {
    if user.uid == 0 {
        return true;
    }
    let Ok(mode) = u32::from_str_radix(&stat.mode, 8) else {
        return false;
    };
    let write_and_search = |bits: u32| bits & 0o3 == 0o3;
    if stat.uid == user.uid {
        write_and_search(mode >> 6)
    } else if user.gid == Some(stat.gid) {
        write_and_search(mode >> 3)
    } else {
        write_and_search(mode)
    }
}

/// Whether the run must read the calico-node DaemonSet: the inventory leaves out where it
/// runs or as whom.
pub fn needs_deployment(settings: &CalicoSettings) -> bool {
    settings.namespace.is_none() || settings.selector.is_none() || settings.run_dir_owner.is_none()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpectationError {
    #[error("no DaemonSet named {CALICO_NODE_DAEMONSET} in {searched}: is Calico installed? Name where calico-node runs and as whom in the inventory (calico.namespace, calico.selector, calico.run_dir_owner)")]
    NoDaemonSet { searched: String },
    #[error("calico-node runs in more than one namespace ({found}): name the one to check with calico.namespace in the inventory")]
    Ambiguous { found: String },
    #[error("DaemonSet {daemonset} selects its pods without matchLabels: name calico.selector in the inventory")]
    NoSelector { daemonset: String },
}

/// The expectations of a run: the inventory's values where it sets them, the DaemonSet's
/// where it does not. `daemonsets` are the DaemonSets named calico-node that the cluster
/// has (in the inventory's namespace, when it names one).
pub fn resolve(
    settings: &CalicoSettings,
    daemonsets: &[DaemonSet],
) -> Result<CalicoExpectations, ExpectationError> {
    let deployment = if needs_deployment(settings) {
        Some(find_deployment(settings, daemonsets)?)
    } else {
        None
    };
    let from_cluster = |pick: &dyn Fn(&CalicoDeployment) -> String| {
        deployment.as_ref().map(pick).unwrap_or_default()
    };
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| from_cluster(&|d| d.namespace.clone()));
    let selector = settings
        .selector
        .clone()
        .unwrap_or_else(|| from_cluster(&|d| d.selector.clone()));
    let user = deployment.as_ref().map(|d| CalicoUser {
        uid: d.user.unwrap_or(0),
        gid: match (d.user, d.group) {
            (_, Some(group)) => Some(group),
            // The image's user is root, whose group is root.
            (None, None) => Some(0),
            (Some(_), None) => None,
        },
        source: match d.user {
            Some(_) => format!("runAsUser of {}", d.describe()),
            None => format!("no runAsUser in {}: the image's user, root", d.describe()),
        },
    });
    let exact = settings.run_dir_owner.is_some()
        || settings.run_dir_group.is_some()
        || settings.run_dir_mode.is_some();
    let access = match user {
        Some(user) if !exact => RunDirAccess::UsableBy(user),
        user => {
            let uid = settings
                .run_dir_owner
                .or(user.as_ref().map(|u| u.uid))
                .unwrap_or(0);
            let gid = settings
                .run_dir_group
                .or(user.as_ref().and_then(|u| u.gid))
                .unwrap_or(uid);
            let mode = settings.run_dir_mode.as_deref().unwrap_or("0755");
            let mode = mode.trim_start_matches('0');
            RunDirAccess::Exact(RunDirStat {
                mode: if mode.is_empty() { "0" } else { mode }.into(),
                uid,
                gid,
            })
        }
    };
    let tmpfiles = match (&settings.tmpfiles_file, &settings.tmpfiles_line) {
        (Some(file), Some(line)) => Some(TmpfilesDeclaration {
            file: file.clone(),
            line: line.clone(),
        }),
        _ => None,
    };
    let source = match &deployment {
        Some(d) if exact || settings.namespace.is_some() || settings.selector.is_some() => {
            format!("the inventory and {}", d.describe())
        }
        Some(d) => d.describe(),
        None => "the inventory".into(),
    };
    Ok(CalicoExpectations {
        namespace,
        selector,
        run_dir: settings.run_dir.clone(),
        access,
        tmpfiles,
        source,
    })
}

fn find_deployment(
    settings: &CalicoSettings,
    daemonsets: &[DaemonSet],
) -> Result<CalicoDeployment, ExpectationError> {
    let named: Vec<&DaemonSet> = daemonsets
        .iter()
        .filter(|ds| ds.metadata.name.as_deref() == Some(CALICO_NODE_DAEMONSET))
        .filter(|ds| settings.namespace.is_none() || ds.metadata.namespace == settings.namespace)
        .collect();
    let searched = settings
        .namespace
        .as_ref()
        .map_or("any namespace".to_string(), |ns| format!("namespace {ns}"));
    match named.as_slice() {
        [] => Err(ExpectationError::NoDaemonSet { searched }),
        [one] => CalicoDeployment::of(one).ok_or_else(|| ExpectationError::NoSelector {
            daemonset: format!(
                "{}/{CALICO_NODE_DAEMONSET}",
                one.metadata.namespace.as_deref().unwrap_or_default()
            ),
        }),
        many => Err(ExpectationError::Ambiguous {
            found: many
                .iter()
                .map(|ds| ds.metadata.namespace.clone().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// /var/run is a symlink to /run on every systemd host; tmpfiles.d may name either.
pub fn canonical_run_path(path: &str) -> String {
    let path = path.trim_end_matches('/');
    match path.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => path.to_string(),
    }
}

/// The run directory as `stat -c '%a %u %g'` printed it; None when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDirStat {
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunDirStat {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let (mode, uid, gid) = (
            words.next()?,
            words.next()?.parse().ok()?,
            words.next()?.parse().ok()?,
        );
        Some(RunDirStat {
            mode: mode.into(),
            uid,
            gid,
        })
    }
}

impl fmt::Display for RunDirStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.mode, self.uid, self.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn daemonset(namespace: &str, user: Option<i64>, group: Option<i64>) -> DaemonSet {
        let mut security = json!({});
        if let Some(user) = user {
            security["runAsUser"] = json!(user);
        }
        if let Some(group) = group {
            security["runAsGroup"] = json!(group);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "calico-node", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "calico-node"}},
                "template": {"spec": {"containers": [
                    {"name": "install-cni-sidecar", "image": "x"},
                    {"name": "calico-node", "image": "calico/node", "securityContext": security},
                ]}},
            },
        }))
        .expect("a DaemonSet")
    }

    fn stat(mode: &str, uid: u32, gid: u32) -> RunDirStat {
        RunDirStat {
            mode: mode.into(),
            uid,
            gid,
        }
    }

    #[test]
    fn a_manifest_install_runs_calico_node_as_root_in_kube_system() {
        let resolved = resolve(
            &CalicoSettings::default(),
            &[daemonset("kube-system", None, None)],
        )
        .unwrap();
        assert_eq!(resolved.namespace, "kube-system");
        assert_eq!(resolved.selector, "k8s-app=calico-node");
        assert_eq!(resolved.tmpfiles, None);
        assert!(resolved.judge_access(&stat("755", 0, 0)).is_ok());
        assert!(resolved.wanted().contains("image's user, root"));
    }

    #[test]
    fn the_operator_runs_calico_node_in_calico_system() {
        let resolved = resolve(
            &CalicoSettings::default(),
            &[daemonset("calico-system", None, None)],
        )
        .unwrap();
        assert_eq!(resolved.namespace, "calico-system");
        assert_eq!(resolved.source, "DaemonSet calico-system/calico-node");
    }

    #[rstest]
    #[case::owner_can_write(stat("755", 999, 999), true)]
    #[case::root_only(stat("700", 0, 0), false)]
    #[case::root_owned_world_readable(stat("755", 0, 0), false)]
    #[case::group_writable(stat("770", 0, 999), true)]
    #[case::owner_without_search(stat("600", 999, 999), false)]
    #[case::world_writable(stat("1777", 0, 0), true)]
    fn a_hardened_calico_node_needs_write_and_search(
        #[case] observed: RunDirStat,
        #[case] ok: bool,
    ) {
        let resolved = resolve(
            &CalicoSettings::default(),
            &[daemonset("kube-system", Some(999), Some(999))],
        )
        .unwrap();
        assert_eq!(resolved.judge_access(&observed).is_ok(), ok, "{observed}");
    }

    #[test]
    fn an_unknown_group_grants_nothing_through_group_bits() {
        let resolved = resolve(
            &CalicoSettings::default(),
            &[daemonset("kube-system", Some(999), None)],
        )
        .unwrap();
        assert!(resolved.judge_access(&stat("770", 0, 999)).is_err());
        assert_eq!(resolved.wanted_stat(), stat("755", 999, 999));
    }

    #[test]
    fn the_inventory_wins_over_the_daemonset() {
        let settings = CalicoSettings {
            run_dir_owner: Some(1000),
            run_dir_mode: Some("0750".into()),
            tmpfiles_file: Some("/etc/tmpfiles.d/c.conf".into()),
            tmpfiles_line: Some("d /run/calico 0750 1000 1000 -".into()),
            ..CalicoSettings::default()
        };
        let resolved =
            resolve(&settings, &[daemonset("kube-system", Some(999), Some(999))]).unwrap();
        assert_eq!(resolved.access, RunDirAccess::Exact(stat("750", 1000, 999)));
        assert_eq!(resolved.tmpfiles_line(), "d /run/calico 0750 1000 1000 -");
        assert_eq!(
            resolved.source,
            "the inventory and DaemonSet kube-system/calico-node"
        );
    }

    #[test]
    fn an_inventory_that_says_everything_needs_no_daemonset() {
        let settings = CalicoSettings {
            namespace: Some("kube-system".into()),
            selector: Some("k8s-app=calico-node".into()),
            run_dir_owner: Some(999),
            ..CalicoSettings::default()
        };
        assert!(!needs_deployment(&settings));
        let resolved = resolve(&settings, &[]).unwrap();
        assert_eq!(resolved.access, RunDirAccess::Exact(stat("755", 999, 999)));
        assert_eq!(resolved.source, "the inventory");
    }

    #[test]
    fn without_a_declaration_the_fix_writes_a_line_for_calico_nodes_user() {
        let resolved = resolve(
            &CalicoSettings::default(),
            &[daemonset("kube-system", Some(999), Some(999))],
        )
        .unwrap();
        assert_eq!(resolved.tmpfiles_line(), "d /run/calico 0755 999 999 -");
        assert_eq!(resolved.tmpfiles_file(), "/etc/tmpfiles.d/calico.conf");
    }

    #[rstest]
    #[case::none(vec![], None, "no DaemonSet named calico-node in any namespace")]
    #[case::two(vec![daemonset("kube-system", None, None), daemonset("calico-system", None, None)], None, "more than one namespace (kube-system, calico-system)")]
    #[case::elsewhere(vec![daemonset("calico-system", None, None)], Some("kube-system"), "in namespace kube-system")]
    fn calico_node_must_be_found_once(
        #[case] daemonsets: Vec<DaemonSet>,
        #[case] namespace: Option<&str>,
        #[case] says: &str,
    ) {
        let settings = CalicoSettings {
            namespace: namespace.map(String::from),
            ..CalicoSettings::default()
        };
        let error = resolve(&settings, &daemonsets).unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
    }

    #[test]
    fn a_selector_without_match_labels_is_named_in_the_error() {
        let mut ds = daemonset("kube-system", None, None);
        ds.spec.as_mut().unwrap().selector.match_labels = None;
        let error = resolve(&CalicoSettings::default(), &[ds]).unwrap_err();
        assert!(matches!(error, ExpectationError::NoSelector { .. }));
    }
}
