//! The lab kubelet's volume manager: the files it writes for a pod's `configMap`,
//! `secret`, `projected` (service-account token, CA bundle, namespace) and `emptyDir`
//! volumes, read from the API server as the node's own identity, and the bind mounts
//! through which a container sees them at its `volumeMounts`.
//!
//! A lab container already sees its node's filesystem, so `hostPath` volumes need no
//! mount. A mount point outside the node's own `/run` is an empty directory on the host,
//! made when missing, as a kubelet makes it on the node's filesystem.

use crate::topology::Topology;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What the API server defaults a volume's `defaultMode` to.
const DEFAULT_MODE: u32 = 0o644;

/// One file of a volume: its path inside the volume, its content and its mode.
struct VolumeFile {
    path: String,
    content: Vec<u8>,
    mode: u32,
}

/// A bind mount into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Where a pod's volumes are written, one directory per volume.
pub fn pod_volumes_dir(topology: &Topology, pod_uid: &str) -> PathBuf {
    topology.state_dir.join("volumes").join(pod_uid)
}

/// The bind mounts a container sees: each of its volumeMounts whose volume the kubelet
/// writes. Volumes of kinds the lab does not write (hostPath) are not mounted.
pub fn container_mounts(topology: &Topology, pod: &Value, container: &Value) -> Vec<Mount> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|mount| {
            let name = mount["name"].as_str()?;
            let volume = volumes.iter().find(|v| v["name"] == name)?;
            let written = ["configMap", "secret", "projected", "emptyDir"]
                .iter()
                .any(|kind| !volume[*kind].is_null());
            let target = mount["mountPath"].as_str()?;
            (written && !target.split('/').any(|part| part == "..")).then(|| Mount {
                source: pod_volumes_dir(topology, uid).join(name),
                target: target.to_string(),
                read_only: mount["readOnly"] == Value::Bool(true) || volume["emptyDir"].is_null(),
            })
        })
        .collect()
}

/// Writes every volume of `pod` that the lab supports, as the node `client` is allowed
/// to read them (the Node authorizer lets a node read only what its own pods reference).
/// With a pod `fsGroup`, files belong to that group and are group-readable, as the
/// kubelet sets volume ownership.
///
/// # Errors
/// A referenced ConfigMap or Secret (not optional) is missing or unreadable, or a token
/// could not be requested: the kubelet reports FailedMount and does not start the pod.
pub async fn prepare(topology: &Topology, client: &Client, pod: &Value) -> Result<(), String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let fs_group = pod["spec"]["securityContext"]["fsGroup"]
        .as_u64()
        .and_then(|g| u32::try_from(g).ok());
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default();
        let files = if !volume["configMap"].is_null() {
            config_map_files(
                client,
                pod,
                &volume["configMap"],
                mode_of(&volume["configMap"]),
            )
            .await?
        } else if !volume["secret"].is_null() {
            secret_files(client, pod, &volume["secret"], mode_of(&volume["secret"])).await?
        } else if !volume["projected"].is_null() {
            projected_files(client, pod, &volume["projected"]).await?
        } else if !volume["emptyDir"].is_null() {
            Vec::new()
        } else {
            continue;
        };
        let dir = pod_volumes_dir(topology, uid).join(name);
        let scratch = !volume["emptyDir"].is_null();
        write_volume(&dir, &files, fs_group, scratch)
            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{name}\": {e}"))?;
    }
    Ok(())
}

/// Removes what `prepare` wrote for a pod that is gone.
pub fn remove(topology: &Topology, pod_uid: &str) {
    if !pod_uid.is_empty() {
        let _ = std::fs::remove_dir_all(pod_volumes_dir(topology, pod_uid));
    }
}

fn mode_of(source: &Value) -> u32 {
    source["defaultMode"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(DEFAULT_MODE)
}

/// Writes a volume's files. A scratch volume (emptyDir) is writable by any user, as the
/// kubelet makes it (0777); with an fsGroup, every volume belongs to that group.
fn write_volume(
    dir: &Path,
    files: &[VolumeFile],
    fs_group: Option<u32>,
    scratch: bool,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Some(group) = fs_group {
        std::os::unix::fs::chown(dir, None, Some(group))?;
    }
    let mode = if scratch { 0o777 } else { 0o755 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    for file in files {
        if file
            .path
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            return Err(std::io::Error::other(format!(
                "invalid path {:?}",
                file.path
            )));
        }
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &file.content)?;
        let mode = match fs_group {
            Some(group) => {
                std::os::unix::fs::chown(&path, None, Some(group))?;
                file.mode | 0o440
            }
            None => file.mode,
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    Ok(())
}

/// The files of a configMap or secret source: its `items` (key → path, mode), or every
/// key as a file of its own name.
fn select(
    data: Vec<(String, Vec<u8>)>,
    source: &Value,
    default_mode: u32,
    what: &str,
) -> Result<Vec<VolumeFile>, String> {
    let Some(items) = source["items"].as_array() else {
        return Ok(data
            .into_iter()
            .map(|(key, content)| VolumeFile {
                path: key,
                content,
                mode: default_mode,
            })
            .collect());
    };
    items
        .iter()
        .map(|item| {
            let key = item["key"].as_str().unwrap_or_default();
            let content = data
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("{what} has no key {key:?}"))?;
            Ok(VolumeFile {
                path: item["path"].as_str().unwrap_or(key).to_string(),
                content,
                mode: item["mode"]
                    .as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .unwrap_or(default_mode),
            })
        })
        .collect()
}

/// The ConfigMap or Secret a volume source names, read as the node. `None`: it does not
/// exist and the source says it is optional, so the volume is empty.
async fn referenced<K>(
    client: &Client,
    pod: &Value,
    source: &Value,
    what: &str,
    name: &str,
) -> Result<Option<K>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading {what}: {e}"))?
    {
        Some(object) => Ok(Some(object)),
        None if source["optional"] == Value::Bool(true) => Ok(None),
        None => Err(format!("{what} not found")),
    }
}

async fn config_map_files(
    client: &Client,
    pod: &Value,
    source: &Value,
    default_mode: u32,
) -> Result<Vec<VolumeFile>, String> {
    let name = source["name"].as_str().unwrap_or_default();
    let what = format!("configmap \"{name}\"");
    let Some(config_map) = referenced::<ConfigMap>(client, pod, source, &what, name).await? else {
        return Ok(Vec::new());
    };
    let mut data: Vec<(String, Vec<u8>)> = config_map
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        config_map
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    select(data, source, default_mode, &what)
}

async fn secret_files(
    client: &Client,
    pod: &Value,
    source: &Value,
    default_mode: u32,
) -> Result<Vec<VolumeFile>, String> {
    // A secret volume names it `secretName`; a projected source, `name`.
    let name = source["secretName"]
        .as_str()
        .or(source["name"].as_str())
        .unwrap_or_default();
    let what = format!("secret \"{name}\"");
    let Some(secret) = referenced::<Secret>(client, pod, source, &what, name).await? else {
        return Ok(Vec::new());
    };
    let data: Vec<(String, Vec<u8>)> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    select(data, source, default_mode, &what)
}

/// A projected volume: the sources the ServiceAccount admission plugin puts into every
/// pod (a bound token, the cluster's CA bundle, the namespace), and any others of the
/// same kinds a manifest names.
async fn projected_files(
    client: &Client,
    pod: &Value,
    projected: &Value,
) -> Result<Vec<VolumeFile>, String> {
    let default_mode = mode_of(projected);
    let mut files = Vec::new();
    for source in projected["sources"].as_array().into_iter().flatten() {
        if !source["serviceAccountToken"].is_null() {
            let token_source = &source["serviceAccountToken"];
            files.push(VolumeFile {
                path: token_source["path"].as_str().unwrap_or("token").to_string(),
                content: bound_token(client, pod, token_source).await?.into_bytes(),
                mode: default_mode,
            });
        } else if !source["configMap"].is_null() {
            files.extend(config_map_files(client, pod, &source["configMap"], default_mode).await?);
        } else if !source["secret"].is_null() {
            files.extend(secret_files(client, pod, &source["secret"], default_mode).await?);
        } else if !source["downwardAPI"].is_null() {
            for item in source["downwardAPI"]["items"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                let value = match field {
                    "metadata.namespace" => pod["metadata"]["namespace"].as_str(),
                    "metadata.name" => pod["metadata"]["name"].as_str(),
                    "spec.nodeName" => pod["spec"]["nodeName"].as_str(),
                    "spec.serviceAccountName" => pod["spec"]["serviceAccountName"].as_str(),
                    _ => None,
                }
                .ok_or_else(|| format!("the lab kubelet does not project {field:?}"))?;
                files.push(VolumeFile {
                    path: item["path"].as_str().unwrap_or_default().to_string(),
                    content: value.as_bytes().to_vec(),
                    mode: default_mode,
                });
            }
        }
    }
    Ok(files)
}

/// A service-account token bound to the pod, from the TokenRequest API, as the kubelet
/// requests it: it stops being valid when the pod is deleted.
async fn bound_token(client: &Client, pod: &Value, source: &Value) -> Result<String, String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: source["audience"]
                .as_str()
                .map(|a| vec![a.to_string()])
                .unwrap_or_default(),
            expiration_seconds: source["expirationSeconds"].as_i64(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod["metadata"]["name"].as_str().map(String::from),
                uid: pod["metadata"]["uid"].as_str().map(String::from),
            }),
        },
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let answer = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token of serviceaccount {namespace}/{account}: {e}"))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("the token request of {namespace}/{account} came back empty"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_container_mounts_the_volumes_the_kubelet_writes_and_not_host_paths() {
        let topology = Topology::new("t", 0, Path::new("/state"), 2);
        let pod = json!({
            "metadata": {"uid": "u1"},
            "spec": {"volumes": [
                {"name": "inventory", "configMap": {"name": "postflight-inventory"}},
                {"name": "run", "hostPath": {"path": "/var/run/calico"}},
                {"name": "scratch", "emptyDir": {}},
            ]},
        });
        let container = json!({"volumeMounts": [
            {"name": "inventory", "mountPath": "/etc/postflight"},
            {"name": "run", "mountPath": "/var/run/calico"},
            {"name": "scratch", "mountPath": "/reports"},
            {"name": "inventory", "mountPath": "/etc/../escape"},
        ]});
        assert_eq!(
            container_mounts(&topology, &pod, &container),
            [
                Mount {
                    source: "/state/volumes/u1/inventory".into(),
                    target: "/etc/postflight".into(),
                    read_only: true,
                },
                Mount {
                    source: "/state/volumes/u1/scratch".into(),
                    target: "/reports".into(),
                    read_only: false,
                },
            ]
        );
    }

    #[test]
    fn items_pick_keys_paths_and_modes() {
        let data = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ];
        let files = select(
            data.clone(),
            &json!({"items": [{"key": "b", "path": "dir/b.txt", "mode": 0o400}]}),
            0o644,
            "secret \"s\"",
        )
        .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].path.as_str(), files[0].mode),
            ("dir/b.txt", 0o400)
        );
        assert_eq!(
            select(data.clone(), &json!({}), 0o644, "x").unwrap().len(),
            2
        );
        assert!(select(
            data,
            &json!({"items": [{"key": "c", "path": "c"}]}),
            0o644,
            "x"
        )
        .is_err());
    }
}
