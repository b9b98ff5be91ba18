//! The lab's public-key infrastructure: one CA per lab and every certificate the control
//! plane, the kubelets and the lab's own admin need, laid out as kubeadm lays out
//! `/etc/kubernetes/pki`. Identities follow Kubernetes' conventions, because the real API
//! server authorises by them: `system:node:<name>` in `system:nodes` for a kubelet (the
//! Node authorizer and NodeRestriction key on it), `system:kube-controller-manager`,
//! `system:kube-scheduler`, and `system:masters` for the lab's admin only.

use crate::system::{io_context, Result, SystemError};
use crate::topology::Topology;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Where one certificate and its key live.
#[derive(Debug, Clone)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a lab's PKI, under `<state>/pki`.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(state_dir: &Path) -> Self {
        PkiPaths {
            dir: state_dir.join("pki"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn pair(&self, name: &str) -> CertificatePaths {
        CertificatePaths {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
    /// The service-account signing key (private) and its public half.
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    pub fn node_client(&self, node: &str) -> CertificatePaths {
        self.pair(&format!("kubelet-client-{node}"))
    }
}

/// Who a client certificate says it is.
struct Identity<'a> {
    common_name: &'a str,
    organization: Option<&'a str>,
}

fn rcgen_error(context: &str) -> impl FnOnce(rcgen::Error) -> SystemError + '_ {
    move |e| SystemError::Io {
        context: format!("making {context}"),
        source: std::io::Error::other(e),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()));
    io_context(written, || format!("writing {}", path.display()))
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    io_context(std::fs::write(path, contents), || {
        format!("writing {}", path.display())
    })
}

struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn sign(
        &self,
        paths: &CertificatePaths,
        identity: Identity,
        names: &[String],
        addresses: &[IpAddr],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<()> {
        let context = identity.common_name.to_string();
        let key = KeyPair::generate().map_err(rcgen_error(&context))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen_error(&context))?;
        params
            .subject_alt_names
            .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        params
            .distinguished_name
            .push(DnType::CommonName, identity.common_name);
        if let Some(organization) = identity.organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, organization);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error(&context))?;
        write_public(&paths.cert, &certificate.pem())?;
        write_private(&paths.key, &key.serialize_pem())
    }

    fn client(&self, paths: &CertificatePaths, identity: Identity) -> Result<()> {
        self.sign(
            paths,
            identity,
            &[],
            &[],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }
}

/// The first address of the lab's service range: the `kubernetes` Service's ClusterIP,
/// which the API server's certificate must name.
pub fn kubernetes_service_ip(topology: &Topology) -> Ipv4Addr {
    let range = topology.service_range_base();
    Ipv4Addr::from(u32::from(range) + 1)
}

/// Makes every key and certificate of the lab.
pub fn create(topology: &Topology) -> Result<PkiPaths> {
    let paths = PkiPaths::new(&topology.state_dir);
    io_context(std::fs::create_dir_all(&paths.dir), || {
        format!("creating {}", paths.dir.display())
    })?;
    let ca_key = KeyPair::generate().map_err(rcgen_error("the lab CA"))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("the lab CA"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("postflight-lab-{} CA", topology.name),
    );
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(rcgen_error("the lab CA"))?;
    write_public(&paths.ca_cert(), &ca_cert.pem())?;
    write_private(&paths.dir.join("ca.key"), &ca_key.serialize_pem())?;
    let authority = Authority {
        issuer: Issuer::new(ca_params, ca_key),
    };

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let host = IpAddr::V4(topology.host_ip());
    let service = IpAddr::V4(kubernetes_service_ip(topology));
    let api_names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(String::from)
    .to_vec();
    authority.sign(
        &paths.pair("apiserver"),
        Identity {
            common_name: "kube-apiserver",
            organization: None,
        },
        &api_names,
        &[loopback, host, service],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    authority.sign(
        &paths.pair("etcd-server"),
        Identity {
            common_name: "etcd-server",
            organization: None,
        },
        &["localhost".to_string()],
        &[loopback],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    // One serving certificate for every node's kubelet API: the API server checks it
    // against the node address it dials.
    let node_names: Vec<String> = topology.nodes.iter().map(|n| n.name.clone()).collect();
    let node_addresses: Vec<IpAddr> = topology.nodes.iter().map(|n| IpAddr::V4(n.ip)).collect();
    authority.sign(
        &paths.pair("kubelet-serving"),
        Identity {
            common_name: "lab-kubelet-serving",
            organization: None,
        },
        &node_names,
        &node_addresses,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let clients = [
        ("apiserver-etcd-client", "kube-apiserver-etcd-client", None),
        (
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            None,
        ),
        ("admin", "postflight-lab-admin", Some("system:masters")),
        ("controller-manager", "system:kube-controller-manager", None),
        ("scheduler", "system:kube-scheduler", None),
        ("kube-proxy", "system:kube-proxy", None),
    ];
    for (file, common_name, organization) in clients {
        authority.client(
            &paths.pair(file),
            Identity {
                common_name,
                organization,
            },
        )?;
    }
    for node in &topology.nodes {
        authority.client(
            &paths.node_client(&node.name),
            Identity {
                common_name: &format!("system:node:{}", node.name),
                organization: Some("system:nodes"),
            },
        )?;
    }
    let service_account = KeyPair::generate().map_err(rcgen_error("the service-account key"))?;
    write_private(
        &paths.service_account_key(),
        &service_account.serialize_pem(),
    )?;
    write_public(
        &paths.service_account_public_key(),
        &service_account.public_key_pem(),
    )?;
    Ok(paths)
}
