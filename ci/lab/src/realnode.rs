//! A real lab node: Kubernetes' own kubelet (from `ci/lab/k8s`), containerd 2 with its
//! runc shim and Debian's runc, the standard CNI plugins wiring pods the Calico way (a
//! veth and a /32 per pod, host-local IPAM on the node's disk), and images made here.
//!
//! A node is a PID namespace whose PID 1 is `postflight-lab node-init`, in the node's
//! network namespace and a mount namespace of its own: `/run` is a tmpfs rebuilt from the
//! node's tmpfiles.d at every boot, `/var/lib` and `/var/log` are the node's own (they
//! survive reboots, as a disk does), the boot ID is new at every boot, and every process
//! of the node, containers included, lives in the node's cgroup. A power cut is the end
//! of that PID 1, which the kernel makes the end of every process under it.
//!
//! What a machine needs and this one may lack (Go's builds, runc, the CNI plugins,
//! usable cgroups) is checked before anything starts: [`Parts::find`] names the part and
//! the fix.

use crate::oci::{self, Image};
use crate::system::{self, shell_quote};
use crate::topology::{CalicoProfile, NodeKind, NodeSpec, Topology, CALICO_UID};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";
pub const AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:1.37.0";
/// The tags Kubernetes' e2e tests at the pinned version ask for
/// (`test/utils/image/manifest.go`): the same images, so its conformance tests run here.
pub const E2E_AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";
pub const E2E_BUSYBOX_IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2";
pub const E2E_PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
pub const CALICO_NODE_IMAGE: &str = crate::daemon::CALICO_NODE_IMAGE;

/// The cgroup v1 hierarchies a node's cgroup is made in.
const HIERARCHIES: [&str; 9] = [
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd",
];

/// Everything a real node runs, found on this machine or built from the lab's module.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Parts {
    /// lab-k8s, whose `kubelet` subcommand is the real kubelet.
    pub kubelet: PathBuf,
    pub containerd: PathBuf,
    pub shim: PathBuf,
    pub ctr: PathBuf,
    pub agnhost: PathBuf,
    pub runc: PathBuf,
    pub cni_bin: PathBuf,
    pub busybox: PathBuf,
    pub curl: PathBuf,
    /// Debian's BIRD 1.6, unpacked.
    pub bird1: PathBuf,
    pub cc: PathBuf,
    /// The `postflight` binary, made an image for running postflight as a pod (the
    /// nightly CronJob); a lab without it has no postflight image, and a pod that asks
    /// for one fails to pull it, as on a cluster.
    #[serde(default)]
    pub postflight: Option<PathBuf>,
}

/// A part a real node needs and cannot have, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("a real lab node needs {part}, and {problem}; {fix}")]
pub struct MissingPart {
    pub part: String,
    pub problem: String,
    pub fix: String,
}

fn missing(part: &str, problem: impl Into<String>, fix: &str) -> MissingPart {
    MissingPart {
        part: part.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Builds one tool of the lab's Go module (`ci/lab/k8s/build.sh TOOL`), or finds it up
/// to date, and returns its path.
fn build_tool(tool: &str) -> Result<PathBuf, MissingPart> {
    let script = crate::controlplane::go_module_dir().join("build.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(tool)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| {
            missing(
                tool,
                format!("{} cannot run: {e}", script.display()),
                "install bash",
            )
        })?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !executable(&path) {
        return Err(missing(
            tool,
            format!(
                "`bash {} {tool}` failed ({})",
                script.display(),
                output.status
            ),
            "run that command and fix what it reports (Go >= 1.26 with its module proxy)",
        ));
    }
    Ok(path)
}

impl Parts {
    /// Finds or builds every part, and checks the cgroups a node is made of.
    pub fn find(k8s_binary: &Path) -> Result<Parts, MissingPart> {
        let debian = |part: &str, path: &str, package: &str| {
            let path = PathBuf::from(path);
            if executable(&path) {
                Ok(path)
            } else {
                Err(missing(
                    part,
                    format!("{} is missing", path.display()),
                    &format!("apt-get install -y {package} (ci/setup.sh installs it)"),
                ))
            }
        };
        for hierarchy in HIERARCHIES {
            let dir = Path::new("/sys/fs/cgroup").join(hierarchy);
            if !dir.join("cgroup.procs").exists() {
                return Err(missing(
                    "cgroup v1 hierarchies",
                    format!("{} is not a mounted cgroup v1 hierarchy", dir.display()),
                    "run the lab on a machine with cgroup v1 controllers mounted under /sys/fs/cgroup",
                ));
            }
        }
        let bird1 = std::env::var_os("POSTFLIGHT_LAB_BIRD1")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                crate::controlplane::go_module_dir().join("../../../target/lab-bird1")
            });
        let unpacked = std::process::Command::new("bash")
            .arg(crate::controlplane::go_module_dir().join("../images/bird1.sh"))
            .arg(&bird1)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|root| executable(&root.join("usr/sbin/bird")))
            .ok_or_else(|| {
                missing(
                    "BIRD 1.6",
                    "Debian's bird package could not be downloaded and unpacked",
                    "bash ci/lab/images/bird1.sh target/lab-bird1 says why",
                )
            })?;
        // kube-proxy's nftables mode programs the node through the nft command.
        debian("nft", "/usr/sbin/nft", "nftables")?;
        Ok(Parts {
            kubelet: k8s_binary.to_path_buf(),
            containerd: build_tool("containerd")?,
            shim: build_tool("containerd-shim-runc-v2")?,
            ctr: build_tool("ctr")?,
            agnhost: build_tool("agnhost")?,
            // A site's own runc (another version, another place) through the
            // environment; otherwise Debian's.
            runc: match std::env::var_os("POSTFLIGHT_LAB_RUNC") {
                Some(runc) if executable(Path::new(&runc)) => PathBuf::from(runc),
                Some(runc) => {
                    return Err(missing(
                        "runc",
                        format!(
                            "POSTFLIGHT_LAB_RUNC={} is not an executable",
                            Path::new(&runc).display()
                        ),
                        "point POSTFLIGHT_LAB_RUNC at a runc binary, or unset it to use Debian's (apt-get install -y runc)",
                    ))
                }
                None => debian("runc", "/usr/sbin/runc", "runc")?,
            },
            cni_bin: {
                debian(
                    "the CNI plugins",
                    "/usr/lib/cni/ptp",
                    "containernetworking-plugins",
                )?;
                PathBuf::from("/usr/lib/cni")
            },
            busybox: debian("busybox", "/bin/busybox", "busybox-static")?,
            curl: debian("curl", "/usr/bin/curl", "curl")?,
            cc: debian("a C compiler", "/usr/bin/gcc", "gcc libc6-dev")?,
            postflight: std::env::current_exe()
                .ok()
                .map(|lab| crate::images::postflight_binary(&lab))
                .filter(|p| executable(p)),
            bird1: unpacked,
        })
    }
}

/// Where a real node keeps its state: all under the node's directory.
pub struct RealPaths {
    pub dir: PathBuf,
    pub var_lib: PathBuf,
    pub var_log: PathBuf,
    pub cni_conf: PathBuf,
    /// The node's own /etc: an overlay on this machine's, whose writes land here (the
    /// node's disk), with its work directory beside it.
    pub etc_upper: PathBuf,
    pub etc_work: PathBuf,
    /// The node's /etc/kubernetes as this machine sees it (the kubelet's and
    /// kube-proxy's configuration, kubeconfigs, certificates and static pods).
    pub etc_kubernetes: PathBuf,
    pub kubelet_config: PathBuf,
    pub kubelet_kubeconfig: PathBuf,
    pub kube_proxy_config: PathBuf,
    pub kube_proxy_kubeconfig: PathBuf,
    pub pki: PathBuf,
    pub containerd_config: PathBuf,
    pub static_pods: PathBuf,
    pub volume_plugins: PathBuf,
    pub containerd_opt: PathBuf,
    pub init_pid: PathBuf,
    pub cgroup_mount: PathBuf,
    pub logs: PathBuf,
}

impl RealPaths {
    pub fn new(topology: &Topology, node: &NodeSpec) -> Self {
        let dir = topology.node_dir(node);
        RealPaths {
            var_lib: dir.join("disk/var-lib"),
            var_log: dir.join("disk/var-log"),
            cni_conf: dir.join("disk/cni-net.d"),
            etc_upper: dir.join("disk/etc"),
            etc_work: dir.join("disk/etc-work"),
            etc_kubernetes: dir.join("disk/etc/kubernetes"),
            kubelet_config: dir.join("disk/etc/kubernetes/kubelet-config.yaml"),
            kubelet_kubeconfig: dir.join("disk/etc/kubernetes/kubelet.conf"),
            kube_proxy_config: dir.join("disk/etc/kubernetes/kube-proxy-config.yaml"),
            kube_proxy_kubeconfig: dir.join("disk/etc/kubernetes/kube-proxy.conf"),
            pki: dir.join("disk/etc/kubernetes/pki"),
            containerd_config: dir.join("containerd.toml"),
            static_pods: dir.join("disk/etc/kubernetes/manifests"),
            volume_plugins: dir.join("disk/volume-plugins"),
            containerd_opt: dir.join("disk/containerd-opt"),
            init_pid: dir.join("init.pid"),
            cgroup_mount: dir.join(".cgroup"),
            logs: dir.join("logs"),
            dir,
        }
    }
}

/// The node's cgroup, the same path in every hierarchy: the kubelet's `cgroupRoot`, with
/// the node's own processes in `node` below it.
pub fn cgroup_root(topology: &Topology, node: &NodeSpec) -> String {
    format!("/postflight-lab-{}", topology.node_netns(node))
}

/// The images every real node imports before its kubelet starts, built once per lab.
pub fn build_images(topology: &Topology, parts: &Parts) -> Result<Vec<PathBuf>, String> {
    let dir = topology.state_dir.join("images");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let pause = dir.join("pause");
    let source = crate::controlplane::go_module_dir().join("../images/pause.c");
    crate::system::run(
        std::process::Command::new(&parts.cc)
            .args(["-static", "-O2", "-s", "-o"])
            .arg(&pause)
            .arg(&source),
    )
    .map_err(|e| format!("compiling {}: {e}", source.display()))?;
    let busybox_applets = |image: &mut Image| -> Result<(), String> {
        image.copy("bin/busybox", &parts.busybox, 0o755);
        let list = std::process::Command::new(&parts.busybox)
            .arg("--list")
            .output()
            .map_err(|e| format!("busybox --list: {e}"))?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                image.symlink(&format!("bin/{applet}"), "busybox");
            }
        }
        image
            .text(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
                0o644,
            )
            .text("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644)
            .add("tmp", oci::Entry::Dir { mode: 0o1777 });
        Ok(())
    };
    let mut images = Vec::new();
    let mut write = |image: Image, file: &str| -> Result<(), String> {
        let out = dir.join(file);
        image.write_archive(&out).map_err(|e| e.to_string())?;
        images.push(out);
        Ok(())
    };

    let mut image = Image::new(PAUSE_IMAGE);
    image.also = vec![E2E_PAUSE_IMAGE.into()];
    image.copy("pause", &pause, 0o755);
    image.entrypoint = vec!["/pause".into()];
    write(image, "pause.tar")?;

    let mut image = Image::new(BUSYBOX_IMAGE);
    image.also = vec![E2E_BUSYBOX_IMAGE.into()];
    busybox_applets(&mut image)?;
    image.cmd = vec!["sh".into()];
    write(image, "busybox.tar")?;

    // agnhost as its image has it, with curl: postflight's probe client.
    let mut image = Image::new(AGNHOST_IMAGE);
    image.also = vec![E2E_AGNHOST_IMAGE.into()];
    busybox_applets(&mut image)?;
    image.copy("agnhost", &parts.agnhost, 0o755);
    image
        .copy_with_libraries("usr/bin/curl", &parts.curl)
        .map_err(|e| e.to_string())?;
    image.entrypoint = vec!["/agnhost".into()];
    image.cmd = vec!["pause".into()];
    write(image, "agnhost.tar")?;

    // postflight's release image, from the built binary: /usr/local/bin/postflight as
    // the entrypoint, tagged with the binary's own version (`image: postflight:X.Y.Z`).
    if let Some(postflight) = &parts.postflight {
        let version = crate::system::run(std::process::Command::new(postflight).arg("--version"))
            .map_err(|e| e.to_string())?;
        let version = String::from_utf8_lossy(&version.stdout);
        let version = version.split_whitespace().nth(1).unwrap_or("latest");
        let mut image = Image::new(&format!("docker.io/library/postflight:{version}"));
        // Without its debug info (a debug build's is most of its 200 MB), as a release
        // image has it: every node imports the image at every boot.
        let stripped = dir.join("postflight");
        crate::system::run(
            std::process::Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&stripped)
                .arg(postflight),
        )
        .map_err(|e| format!("stripping {} (binutils): {e}", postflight.display()))?;
        image
            .copy_with_libraries("usr/local/bin/postflight", &stripped)
            .map_err(|e| e.to_string())?;
        image.entrypoint = vec!["/usr/local/bin/postflight".into()];
        write(image, "postflight.tar")?;
    }

    // The calico-node stand-in: real BIRD 1.6, as the DaemonSet's user (file
    // capabilities let a non-root BIRD bind port 179 and program routes), started the
    // way calico-node starts it, and Calico's readiness semantics.
    let mut image = Image::new(CALICO_NODE_IMAGE);
    busybox_applets(&mut image)?;
    image.add(
        "usr/sbin/bird",
        oci::Entry::Copy {
            source: parts.bird1.join("usr/sbin/bird"),
            mode: 0o755,
            // CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW
            capabilities: Some(oci::file_capabilities(&[10, 12, 13])),
        },
    );
    image
        .copy_with_libraries("usr/sbin/birdc", &parts.bird1.join("usr/sbin/birdc"))
        .map_err(|e| e.to_string())?;
    image.text("bin/calico-node", CALICO_NODE_SCRIPT, 0o755);
    image.entrypoint = vec!["/bin/calico-node".into()];
    write(image, "calico-node.tar")?;
    Ok(images)
}

/// The stand-in's `calico-node`: with no flag it writes BIRD's configuration in the shape
/// Calico's confd gives it and becomes BIRD, so its log is BIRD's own; `-bird-ready` is
/// the readiness check of Calico's manifest (the control socket answers and every BGP
/// session is Established), worded as Calico words it.
const CALICO_NODE_SCRIPT: &str = r#"#!/bin/sh
socket=/var/run/calico/bird.ctl
if [ "$1" = "-bird-ready" ] || [ "$1" = "-bird-live" ]; then
  if ! out=$(birdc -s "$socket" show protocols 2>&1); then
    case "$out" in
      *"ermission denied"*) why="permission denied" ;;
      *) why="connection refused" ;;
    esac
    echo "calico/node is not ready: BIRD is not ready: Error querying BIRD: unable to connect to BIRDv4 socket: dial unix $socket: connect: $why"
    exit 1
  fi
  [ "$1" = "-bird-live" ] && exit 0
  down=$(echo "$out" | awk '$2 == "BGP" && $6 != "Established" {print $5}' | sed 's/^Mesh_//' | tr '_' '.' | tr '\n' ',' | sed 's/,$//')
  if [ -n "$down" ]; then
    echo "calico/node is not ready: BIRD is not ready: BGP not established with $down"
    exit 1
  fi
  exit 0
fi
config=/tmp/bird.cfg
while read -r name ip block; do
  [ "$name" = "$NODENAME" ] && { own_ip=$ip; own_block=$block; }
done < /etc/calico/lab/peers
{
  echo "router id $own_ip;"
  echo "filter calico_export_to_bgp_peers { if ( net ~ $own_block ) then { accept; } reject; }"
  echo "filter calico_kernel_programming { accept; }"
  echo "protocol kernel { learn; persist; scan time 2; import all; export filter calico_kernel_programming; graceful restart; }"
  echo "protocol device { scan time 2; }"
  echo "protocol direct { interface -\"veth*\", \"*\"; }"
  echo "protocol static { route $own_block blackhole; }"
  echo "template bgp bgp_template { local as 64512; multihop; gateway recursive; import all; export filter calico_export_to_bgp_peers; graceful restart; connect delay time 1; connect retry time 1; error wait time 1,5; hold time 9; keepalive time 3; }"
  while read -r name ip block; do
    [ "$name" = "$NODENAME" ] && continue
    echo "protocol bgp Mesh_$(echo "$ip" | tr . _) from bgp_template { neighbor $ip as 64512; source address $own_ip; }"
  done < /etc/calico/lab/peers
} > "$config"
exec bird -R -s "$socket" -d -c "$config"
"#;

/// containerd's configuration on a real node: node-private root and state, the pause
/// image pinned (it is imported, never pulled), and `restrict_oom_score_adj`, without
/// which every sandbox fails here (root lacks CAP_SYS_RESOURCE).
fn containerd_config(paths: &RealPaths, parts: &Parts) -> String {
    format!(
        "version = 3\nroot = \"/var/lib/containerd\"\nstate = \"/run/containerd\"\n\
         disabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.blockfile\", \"io.containerd.snapshotter.v1.erofs\", \"io.containerd.tracing.processor.v1.otlp\"]\n\
         [grpc]\n  address = \"/run/containerd/containerd.sock\"\n\
         [plugins.'io.containerd.internal.v1.opt']\n  path = {opt:?}\n\
         [plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n\
         \x20 [plugins.'io.containerd.cri.v1.images'.pinned_images]\n    sandbox = '{PAUSE_IMAGE}'\n\
         [plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n\
         \x20 [plugins.'io.containerd.cri.v1.runtime'.containerd]\n    default_runtime_name = 'runc'\n\
         \x20   [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n      runtime_type = 'io.containerd.runc.v2'\n\
         \x20     [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n        SystemdCgroup = false\n        BinaryName = {runc:?}\n\
         \x20 [plugins.'io.containerd.cri.v1.runtime'.cni]\n    bin_dirs = [{cni:?}]\n    conf_dir = {conf:?}\n",
        opt = paths.containerd_opt.display().to_string(),
        runc = parts.runc.display().to_string(),
        cni = parts.cni_bin.display().to_string(),
        conf = paths.cni_conf.display().to_string(),
    )
}

/// Pods wired the Calico way: a veth per pod with its /32, host-local IPAM over the
/// node's block, kept on the node's disk.
fn cni_config(node: &NodeSpec) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network",
        "plugins": [
            {"type": "ptp", "ipMasq": false, "mtu": 1440,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr()}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The kubelet's configuration: cgroup v1 with cgroupfs, the node's own cgroup root, and
/// lease and status timings that fit the lab's 8 s node-monitor grace period.
/// A path under the node's /etc/kubernetes, as the node's own processes see it.
fn in_etc_kubernetes(name: &str) -> String {
    format!("/etc/kubernetes/{name}")
}

fn kubelet_config(topology: &Topology, node: &NodeSpec, paths: &RealPaths) -> String {
    let p = |name: &str| in_etc_kubernetes(&format!("pki/{name}"));
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         failCgroupV1: false\ncgroupDriver: cgroupfs\ncgroupRoot: {root}\n\
         containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n\
         address: {ip}\nport: 10250\nreadOnlyPort: 0\nhealthzBindAddress: 127.0.0.1\nhealthzPort: 10248\n\
         tlsCertFile: {cert}\ntlsPrivateKeyFile: {key}\n\
         authentication:\n  anonymous: {{enabled: false}}\n  webhook: {{enabled: true}}\n  x509: {{clientCAFile: {ca}}}\n\
         authorization: {{mode: Webhook}}\nclusterDomain: cluster.local\n\
         staticPodPath: {static_pods}\nvolumePluginDir: {plugins}\nresolvConf: \"\"\nfailSwapOn: false\n\
         rotateCertificates: false\nserverTLSBootstrap: false\n\
         evictionHard: {{memory.available: \"100Mi\", nodefs.available: \"1%\", imagefs.available: \"1%\"}}\n\
         imageGCHighThresholdPercent: 99\nimageGCLowThresholdPercent: 98\n\
         nodeLeaseDurationSeconds: 8\nnodeStatusUpdateFrequency: 4s\n\
         serializeImagePulls: false\n",
        root = cgroup_root(topology, node),
        ip = node.ip,
        cert = p("kubelet-serving.crt"),
        key = p("kubelet-serving.key"),
        ca = p("ca.crt"),
        static_pods = in_etc_kubernetes("manifests"),
        plugins = paths.volume_plugins.display(),
    )
}

/// kube-proxy's configuration: nftables mode (the node has nft and no legacy iptables to
/// rely on), Services' traffic masqueraded so that replies from the API server (which
/// has no route to pods) come back through the node, and no conntrack sysctls (a node's
/// network namespace may not set the host's table size).
fn kube_proxy_config(topology: &Topology, node: &NodeSpec) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nclusterCIDR: {pool}\nhostnameOverride: {name}\n\
         bindAddress: {ip}\nhealthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
         clientConnection: {{kubeconfig: {kubeconfig}}}\n\
         nftables: {{masqueradeAll: true}}\n\
         conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}\n\
         oomScoreAdj: 0\n",
        pool = topology.pod_pool(),
        name = node.name,
        ip = node.ip,
        kubeconfig = in_etc_kubernetes("kube-proxy.conf"),
    )
}

/// Writes a real node's files, once at `up`.
pub fn provision(
    topology: &Topology,
    node: &NodeSpec,
    parts: &Parts,
    pki: &crate::pki::PkiPaths,
) -> Result<(), String> {
    let paths = RealPaths::new(topology, node);
    for dir in [
        &paths.var_lib,
        &paths.var_log,
        &paths.cni_conf,
        &paths.etc_work,
        &paths.pki,
        &paths.static_pods,
        &paths.volume_plugins,
        &paths.containerd_opt,
        &paths.cgroup_mount,
        &paths.logs,
    ] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let node_pki = &paths.pki;
    let serving = pki.pair("kubelet-serving");
    for (from, to) in [
        (serving.cert, "kubelet-serving.crt"),
        (serving.key, "kubelet-serving.key"),
        (pki.ca_cert(), "ca.crt"),
    ] {
        std::fs::copy(&from, node_pki.join(to))
            .map_err(|e| format!("copying {}: {e}", from.display()))?;
    }
    let files = [
        (
            paths.containerd_config.clone(),
            containerd_config(&paths, parts),
        ),
        (paths.cni_conf.join("10-calico.conflist"), cni_config(node)),
        (
            paths.kubelet_config.clone(),
            kubelet_config(topology, node, &paths),
        ),
        (
            paths.kube_proxy_config.clone(),
            kube_proxy_config(topology, node),
        ),
    ];
    for (path, text) in files {
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Makes the node's cgroup in every hierarchy (cpuset's needs its CPUs and memory
/// nodes before a process may join), with `node` below it for the node's own processes.
fn make_cgroups(topology: &Topology, node: &NodeSpec) -> Result<(), String> {
    let root = cgroup_root(topology, node);
    for hierarchy in HIERARCHIES {
        let base = Path::new("/sys/fs/cgroup").join(hierarchy);
        for dir in [base.join(&root[1..]), base.join(&root[1..]).join("node")] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            if hierarchy == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = dir.parent().expect("a cgroup has a parent");
                    let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                    std::fs::write(dir.join(file), value.trim())
                        .map_err(|e| format!("writing {}: {e}", dir.join(file).display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Where runc makes a container's cgroups besides the v1 hierarchies: on a hybrid host
/// it mirrors them into the v2 tree mounted at `unified` (process tracking only).
const ALSO_MADE_BY_RUNC: [&str; 1] = ["unified"];

/// Removes the node's cgroups once nothing is left in them: deepest first.
pub fn remove_cgroups(topology: &Topology, node: &NodeSpec) {
    let root = cgroup_root(topology, node);
    for hierarchy in HIERARCHIES.iter().chain(&ALSO_MADE_BY_RUNC) {
        let base = Path::new("/sys/fs/cgroup").join(hierarchy).join(&root[1..]);
        let mut dirs = Vec::new();
        collect_dirs(&base, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// What a lab whose daemon died (or was killed before it had shut its nodes down) left
/// in the cgroups of the nodes of the network prefix `prefix` (`pfB`): every process in
/// them is killed (containers run under their shims, outside the daemon's process
/// group), then the cgroups go, deepest first, in every hierarchy.
pub fn remove_cgroups_of_prefix(prefix: &str) {
    let name_prefix = format!("postflight-lab-{prefix}-");
    let roots = |hierarchy: &str| -> Vec<PathBuf> {
        std::fs::read_dir(Path::new("/sys/fs/cgroup").join(hierarchy))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name_prefix))
            .map(|e| e.path())
            .collect()
    };
    for _ in 0..50 {
        let mut alive = false;
        for root in roots("pids") {
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            for dir in dirs {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    alive = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for hierarchy in HIERARCHIES.iter().chain(&ALSO_MADE_BY_RUNC) {
        for root in roots(hierarchy) {
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// The processes in the node's cgroup (its own and its containers').
fn cgroup_processes(topology: &Topology, node: &NodeSpec) -> Vec<i32> {
    let base = Path::new("/sys/fs/cgroup/pids").join(&cgroup_root(topology, node)[1..]);
    let mut dirs = Vec::new();
    collect_dirs(&base, &mut dirs);
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Powers a real node on: its network as on a machine, then a new PID 1 in new mount,
/// UTS and PID namespaces, which mounts the node's view and starts its services.
/// Returns the new boot ID.
pub fn power_on(topology: &Topology, node: &NodeSpec, lab_binary: &Path) -> Result<String, String> {
    crate::node::bring_up_network(topology, node).map_err(|e| e.to_string())?;
    make_cgroups(topology, node)?;
    let paths = RealPaths::new(topology, node);
    let node_paths = crate::node::NodePaths::new(topology, node);
    let boot_id = match topology.node_kind {
        NodeKind::Machine => uuid::Uuid::new_v4().to_string(),
        NodeKind::Container => std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map_err(|e| format!("reading this machine's boot ID: {e}"))?
            .trim()
            .to_string(),
    };
    std::fs::write(&node_paths.boot_id, format!("{boot_id}\n")).map_err(|e| e.to_string())?;
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let root = cgroup_root(topology, node);
    // The node's disk over this machine's /var/lib and /var/log; a new sysfs for the
    // node's network namespace, with this machine's cgroup mounts carried under it.
    let script = format!(
        "set -e\n\
         for h in {hierarchies}; do echo 0 > /sys/fs/cgroup/$h{root}/node/cgroup.procs; done\n\
         hostname {name}\n\
         mount -t tmpfs -o mode=755,size=64m tmpfs /run\n\
         mount --rbind /sys/fs/cgroup {cg}\n\
         mount -t sysfs sysfs /sys\n\
         mount --move {cg} /sys/fs/cgroup\n\
         mount --bind {var_lib} /var/lib\n\
         mount --bind {var_log} /var/log\n\
         mount -t overlay overlay -o lowerdir=/etc,upperdir={etc_upper},workdir={etc_work} /etc\n\
         mkdir -p /etc/tmpfiles.d\n\
         mount --bind {tmpfiles} /etc/tmpfiles.d\n\
         mount --bind {boot_id} /proc/sys/kernel/random/boot_id\n\
         mount --bind {bin} /usr/local/bin\n\
         {{ [ ! -f /root/.bashrc ] || mount --bind {bashrc} /root/.bashrc; }}\n\
         set -- /etc/tmpfiles.d/*.conf\n\
         [ ! -e \"$1\" ] || systemd-tmpfiles --create --boot \"$@\"\n\
         mount --make-rshared /\n\
         exec {lab} node-init --state-dir {state} --node {name}\n",
        hierarchies = HIERARCHIES.join(" "),
        name = shell_quote(&node.name),
        cg = q(&paths.cgroup_mount),
        var_lib = q(&paths.var_lib),
        var_log = q(&paths.var_log),
        etc_upper = q(&paths.etc_upper),
        etc_work = q(&paths.etc_work),
        tmpfiles = q(&node_paths.tmpfiles_dir),
        boot_id = q(&node_paths.boot_id),
        bin = q(&node_paths.bin),
        bashrc = q(&node_paths.root_bashrc),
        lab = q(lab_binary),
        state = q(&topology.state_dir),
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.logs.join("init.log"))
        .map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new("nsenter");
    command
        .arg(format!("--net={}", node_paths.netns_handle.display()))
        .args([
            "--",
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", node.name))?;
    // The node's PID 1 is unshare's child: what `nsenter -t` enters.
    let unshare = child.id();
    std::mem::forget(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let init = loop {
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            break pid.to_string();
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{}'s PID 1 did not start; see {}",
                node.name,
                paths.logs.join("init.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::write(&paths.init_pid, format!("{init}\n")).map_err(|e| e.to_string())?;
    Ok(boot_id)
}

/// The node's PID 1, as this machine sees it.
pub fn init_pid(topology: &Topology, node: &NodeSpec) -> Option<i32> {
    std::fs::read_to_string(RealPaths::new(topology, node).init_pid)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A command that runs `argv` on a real node: in its PID, mount, UTS and network
/// namespaces, as `nsenter -t 1 -a` does on a machine.
pub fn enter_command(
    topology: &Topology,
    node: &NodeSpec,
    argv: &[String],
) -> std::process::Command {
    let pid = init_pid(topology, node).unwrap_or(0);
    let mut command = std::process::Command::new("nsenter");
    command
        .args(["-t", &pid.to_string(), "-m", "-u", "-n", "-p", "--"])
        .args(argv);
    command
}

/// Powers a real node off. `graceful`: what systemd's shutdown does once the kubelet's
/// graceful node shutdown cannot run (it needs systemd-logind's inhibitor lock over
/// D-Bus, and a lab node has no logind): PID 1 sends SIGTERM to every process and waits
/// for them, up to a grace period. Then — or at once, for a power cut — PID 1 dies, and
/// the kernel kills everything else of the node with it.
pub fn power_off(topology: &Topology, node: &NodeSpec, graceful: bool) {
    let node_paths = crate::node::NodePaths::new(topology, node);
    if let Some(init) = init_pid(topology, node) {
        let pid = nix::unistd::Pid::from_raw(init);
        if graceful {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(12);
            while std::time::Instant::now() < deadline && process_alive(init) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    // Containers in the node's cgroup are the node's even if something escaped its PID
    // namespace; none may outlive the power cut.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = cgroup_processes(topology, node);
        if left.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(RealPaths::new(topology, node).init_pid);
    remove_cgroups(topology, node);
    let netns = topology.node_netns(node);
    // Pod veths die with their pods' namespaces; what the kernel kept goes as on a
    // machine that lost power: routes, neighbours, addresses, the pods' firewall.
    let _ = system::netns_sh(
        &netns,
        "for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do \
         case $l in lo|eth0) ;; *) ip link del \"$l\" 2>/dev/null ;; esac; done; \
         ip -4 route flush table main; ip neigh flush all; ip addr flush dev eth0",
    );
    let _ = std::fs::write(&node_paths.powered_off_flag, b"");
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The services of a node, as its PID 1 runs them: each restarted a second after it
/// dies, as systemd's `Restart=always` does.
struct Service {
    name: &'static str,
    argv: Vec<String>,
    child: Option<std::process::Child>,
}

/// `postflight-lab node-init`: PID 1 of a real node. Starts sshd and containerd,
/// imports the lab's images (before the kubelet: a node has no route to a registry),
/// starts the kubelet, reaps every orphan, restarts what dies, and on SIGTERM shuts the
/// node down.
pub fn init(topology: &Topology, node: &NodeSpec) -> i32 {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_term(_: i32) {
        STOP.store(true, Ordering::SeqCst);
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_term),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action);
    }
    let parts: Parts = match std::fs::read_to_string(topology.state_dir.join("parts.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(parts) => parts,
        None => {
            eprintln!("node-init: no parts.json in the lab's state directory");
            return 1;
        }
    };
    let paths = RealPaths::new(topology, node);
    let node_paths = crate::node::NodePaths::new(topology, node);
    let s = |p: &Path| p.display().to_string();
    let path_env = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        s(parts.shim.parent().unwrap_or(Path::new("/")))
    );
    std::env::set_var("PATH", &path_env);
    let mut services = vec![
        Service {
            name: "sshd",
            argv: vec![
                "/usr/sbin/sshd".into(),
                "-D".into(),
                "-e".into(),
                "-f".into(),
                s(&node_paths.sshd_config),
            ],
            child: None,
        },
        Service {
            name: "containerd",
            argv: vec![
                s(&parts.containerd),
                "--config".into(),
                s(&paths.containerd_config),
            ],
            child: None,
        },
    ];
    let kubelet = Service {
        name: "kubelet",
        argv: vec![
            s(&parts.kubelet),
            "kubelet".into(),
            "--config".into(),
            in_etc_kubernetes("kubelet-config.yaml"),
            "--kubeconfig".into(),
            in_etc_kubernetes("kubelet.conf"),
            "--node-ip".into(),
            node.ip.to_string(),
            "--hostname-override".into(),
            node.name.clone(),
            "--v=1".into(),
        ],
        child: None,
    };
    let start = |service: &mut Service| {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.logs.join(format!("{}.log", service.name)));
        let Ok(log) = log else { return };
        let mut command = std::process::Command::new(&service.argv[0]);
        command
            .args(&service.argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log);
        match command.spawn() {
            Ok(child) => service.child = Some(child),
            Err(e) => eprintln!("node-init: starting {}: {e}", service.name),
        }
    };
    for service in services.iter_mut() {
        start(service);
    }
    // containerd's socket, then the images, then the kubelet.
    let socket = Path::new("/run/containerd/containerd.sock");
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let images = topology.state_dir.join("images");
    for archive in std::fs::read_dir(&images).into_iter().flatten().flatten() {
        let path = archive.path();
        if path.extension().is_some_and(|e| e == "tar") {
            let status = std::process::Command::new(&parts.ctr)
                .args(["-n", "k8s.io", "images", "import", "--no-unpack=false"])
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("node-init: importing {} failed", path.display());
            }
        }
    }
    // Services' virtual IPs, as on a cluster that runs kube-proxy on every node.
    let kube_proxy = Service {
        name: "kube-proxy",
        argv: vec![
            s(&parts.kubelet),
            "kube-proxy".into(),
            "--config".into(),
            in_etc_kubernetes("kube-proxy-config.yaml"),
            "--v=1".into(),
        ],
        child: None,
    };
    services.push(kubelet);
    services.push(kube_proxy);
    for service in services.iter_mut().skip(2) {
        start(service);
    }
    let mut died_at: Vec<Option<std::time::Instant>> = vec![None; services.len()];
    loop {
        if STOP.load(Ordering::SeqCst) {
            shutdown();
            return 0;
        }
        // Reap everything: orphans are ours, as PID 1.
        loop {
            match nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let pid = status.pid().map(|p| p.as_raw() as u32);
                    for (index, service) in services.iter_mut().enumerate() {
                        if service.child.as_ref().map(|c| c.id()) == pid {
                            eprintln!("node-init: {} exited ({status:?})", service.name);
                            service.child = None;
                            died_at[index] = Some(std::time::Instant::now());
                        }
                    }
                }
            }
        }
        for (index, service) in services.iter_mut().enumerate() {
            if service.child.is_none()
                && died_at[index].is_some_and(|t| t.elapsed() > Duration::from_secs(1))
            {
                died_at[index] = None;
                start(service);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// systemd's last stage of a shutdown: SIGTERM to every process, a grace period, then
/// the end of PID 1 (the kernel kills what is left of the namespace).
fn shutdown() {
    let me = std::process::id() as i32;
    let others = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&pid| pid != me && process_alive(pid))
            .collect()
    };
    for pid in others() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && !others().is_empty() {
        while let Ok(status) = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// calico-node's DaemonSet on real nodes: the stand-in image with Calico's probes, and
/// the peers it meshes with in a ConfigMap (real calico-node reads them from its
/// datastore).
pub fn calico_objects(topology: &Topology) -> Vec<serde_json::Value> {
    use serde_json::json;
    let profile = topology.calico;
    let peers: String = topology
        .nodes
        .iter()
        .map(|n| format!("{} {} {}\n", n.name, n.ip, n.pod_cidr()))
        .collect();
    let security = match profile {
        CalicoProfile::Hardened => json!({
            "runAsUser": CALICO_UID, "runAsGroup": CALICO_UID,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]},
        }),
        CalicoProfile::Stock | CalicoProfile::Operator => json!({"privileged": true}),
    };
    vec![
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "calico-lab-peers", "namespace": profile.namespace()},
            "data": {"peers": peers},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": profile.namespace(), "labels": {"k8s-app": "calico-node"}},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "calico-node"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "calico-node"}},
                    "spec": {
                        "hostNetwork": true,
                        "priorityClassName": "system-node-critical",
                        "terminationGracePeriodSeconds": 5,
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{
                            "name": "calico-node", "image": CALICO_NODE_IMAGE, "imagePullPolicy": "Never",
                            "env": [{"name": "NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                    {"name": "CALICO_NETWORKING_BACKEND", "value": "bird"}],
                            "securityContext": security,
                            "readinessProbe": {"exec": {"command": ["/bin/calico-node", "-bird-ready"]}, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2},
                            "livenessProbe": {"exec": {"command": ["/bin/calico-node", "-bird-live"]}, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3, "initialDelaySeconds": 5},
                            "volumeMounts": [
                                {"name": "var-run-calico", "mountPath": "/var/run/calico"},
                                {"name": "var-lib-calico", "mountPath": "/var/lib/calico"},
                                {"name": "peers", "mountPath": "/etc/calico/lab", "readOnly": true},
                            ],
                        }],
                        "volumes": [
                            {"name": "var-run-calico", "hostPath": {"path": "/var/run/calico", "type": "DirectoryOrCreate"}},
                            {"name": "var-lib-calico", "hostPath": {"path": "/var/lib/calico", "type": "DirectoryOrCreate"}},
                            {"name": "peers", "configMap": {"name": "calico-lab-peers"}},
                        ],
                    },
                },
            },
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_pods_get_addresses_from_its_own_block_kept_on_its_disk() {
        let topology = Topology::new("t", 2, Path::new("/x"), 3);
        let config: serde_json::Value =
            serde_json::from_str(&cni_config(&topology.nodes[1])).unwrap();
        let plugin = &config["plugins"][0];
        assert_eq!(
            plugin["type"], "ptp",
            "a veth and a /32 per pod, as Calico wires them"
        );
        assert_eq!(plugin["ipam"]["type"], "host-local");
        assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "198.19.16.32/27");
        assert!(
            plugin["ipam"].get("dataDir").is_none(),
            "the default, /var/lib/cni, is the node's disk"
        );
    }

    #[test]
    fn the_kubelet_leases_fit_the_labs_grace_period_on_cgroup_v1() {
        let topology = Topology::new("t", 0, Path::new("/x"), 2);
        let node = &topology.nodes[1];
        let text = kubelet_config(&topology, node, &RealPaths::new(&topology, node));
        for line in [
            "tlsCertFile: /etc/kubernetes/pki/kubelet-serving.crt",
            "staticPodPath: /etc/kubernetes/manifests",
            "failCgroupV1: false",
            "cgroupDriver: cgroupfs",
            "cgroupRoot: /postflight-lab-pf0-n1",
            "nodeLeaseDurationSeconds: 8",
            "nodeStatusUpdateFrequency: 4s",
            "address: 198.18.0.11",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn every_sandbox_is_allowed_to_start_without_cap_sys_resource() {
        let topology = Topology::new("t", 0, Path::new("/x"), 1);
        let paths = RealPaths::new(&topology, &topology.nodes[0]);
        let parts = Parts {
            kubelet: "/k".into(),
            containerd: "/c".into(),
            shim: "/s".into(),
            ctr: "/ctr".into(),
            agnhost: "/a".into(),
            runc: "/usr/sbin/runc".into(),
            cni_bin: "/usr/lib/cni".into(),
            busybox: "/bin/busybox".into(),
            curl: "/usr/bin/curl".into(),
            bird1: "/b".into(),
            cc: "/usr/bin/gcc".into(),
            postflight: None,
        };
        let text = containerd_config(&paths, &parts);
        assert!(text.contains("restrict_oom_score_adj = true"), "{text}");
        assert!(
            text.contains("sandbox = 'registry.k8s.io/pause:3.10.1'"),
            "{text}"
        );
        assert!(text.contains("BinaryName = \"/usr/sbin/runc\""), "{text}");
    }
}
