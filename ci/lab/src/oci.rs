//! Container images for a real node, made on this machine: a root filesystem described
//! as data, written as a docker-archive tarball (`docker save`'s format, which
//! `ctr images import` reads) with one layer. Nothing is ever pulled: a lab node has no
//! route out, and its images carry the names clusters use, so inventories need no change.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image}: {context}: {source}")]
    Io {
        image: String,
        context: String,
        source: std::io::Error,
    },
}

/// One entry of an image's root filesystem.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    /// A file copied from this machine.
    Copy {
        source: PathBuf,
        mode: u32,
        /// File capabilities (`security.capability`), as `setcap` writes them: what lets
        /// a non-root user's BIRD bind port 179 and program routes.
        capabilities: Option<Vec<u8>>,
    },
    Text {
        contents: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

/// An image: its reference, its root filesystem and its config.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    /// More names for the same image, as a registry serves one digest under many tags
    /// (Kubernetes' e2e tests ask for their own pinned tags of agnhost and busybox).
    pub also: Vec<String>,
    pub entries: BTreeMap<String, Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: String,
    pub env: Vec<String>,
}

impl Image {
    pub fn new(reference: &str) -> Self {
        Image {
            reference: reference.into(),
            also: Vec::new(),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            user: String::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        }
    }

    /// Adds `path` and every directory above it.
    pub fn add(&mut self, path: &str, entry: Entry) -> &mut Self {
        let path = path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(dir.to_string_lossy().into_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
            parent = dir.parent();
        }
        self.entries.insert(path.to_string(), entry);
        self
    }

    pub fn copy(&mut self, path: &str, source: &Path, mode: u32) -> &mut Self {
        self.add(
            path,
            Entry::Copy {
                source: source.into(),
                mode,
                capabilities: None,
            },
        )
    }

    pub fn text(&mut self, path: &str, contents: &str, mode: u32) -> &mut Self {
        self.add(
            path,
            Entry::Text {
                contents: contents.as_bytes().to_vec(),
                mode,
            },
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.add(
            path,
            Entry::Symlink {
                target: target.into(),
            },
        )
    }

    /// Copies an ELF executable and the shared libraries `ldd` says it loads.
    pub fn copy_with_libraries(&mut self, path: &str, source: &Path) -> Result<(), ImageError> {
        self.copy(path, source, 0o755);
        let output = std::process::Command::new("ldd")
            .arg(source)
            .output()
            .map_err(|e| self.io(&format!("ldd {}", source.display()), e))?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
            let library = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(library) = library {
                let real = std::fs::canonicalize(library).unwrap_or_else(|_| library.into());
                self.copy(library, &real, 0o755);
            }
        }
        Ok(())
    }

    fn io(&self, context: &str, source: std::io::Error) -> ImageError {
        ImageError::Io {
            image: self.reference.clone(),
            context: context.into(),
            source,
        }
    }

    /// The layer: a tar of the root filesystem, owned by root, with fixed times so the
    /// same inputs give the same digest.
    fn layer(&self) -> Result<Vec<u8>, ImageError> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            let written = match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())
                }
                Entry::Copy {
                    source,
                    mode,
                    capabilities,
                } => {
                    let data = std::fs::read(source)
                        .map_err(|e| self.io(&format!("reading {}", source.display()), e))?;
                    if let Some(capabilities) = capabilities {
                        builder
                            .append_pax_extensions([(
                                "SCHILY.xattr.security.capability",
                                capabilities.as_slice(),
                            )])
                            .map_err(|e| self.io("writing a PAX header", e))?;
                    }
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())
                }
                Entry::Text { contents, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(contents.len() as u64);
                    builder.append_data(&mut header, path, contents.as_slice())
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)
                }
            };
            written.map_err(|e| self.io(&format!("adding {path}"), e))?;
        }
        builder
            .into_inner()
            .map_err(|e| self.io("finishing the layer", e))
    }

    /// Writes the image as a docker-archive tarball at `out`.
    pub fn write_archive(&self, out: &Path) -> Result<(), ImageError> {
        let layer = self.layer()?;
        let diff_id = hex(&Sha256::digest(&layer));
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
            "config": {
                "Env": self.env, "Entrypoint": self.entrypoint, "Cmd": self.cmd,
                "User": self.user, "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "postflight-lab"}],
        });
        let config = serde_json::to_vec(&config).expect("a config serialises");
        let config_id = hex(&Sha256::digest(&config));
        let manifest = serde_json::json!([{
            "Config": format!("{config_id}.json"),
            "RepoTags": std::iter::once(&self.reference).chain(&self.also).collect::<Vec<_>>(),
            "Layers": [format!("{diff_id}/layer.tar")],
        }]);
        let mut archive = tar::Builder::new(Vec::new());
        let files = [
            (format!("{config_id}.json"), config),
            (format!("{diff_id}/layer.tar"), layer),
            (
                "manifest.json".to_string(),
                serde_json::to_vec(&manifest).expect("a manifest serialises"),
            ),
        ];
        for (name, data) in files {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(data.len() as u64);
            archive
                .append_data(&mut header, &name, data.as_slice())
                .map_err(|e| self.io(&format!("adding {name}"), e))?;
        }
        let bytes = archive
            .into_inner()
            .map_err(|e| self.io("finishing the archive", e))?;
        let partial = out.with_extension("partial");
        std::fs::write(&partial, bytes)
            .and_then(|()| std::fs::rename(&partial, out))
            .map_err(|e| self.io(&format!("writing {}", out.display()), e))
    }
}

/// `security.capability` (VFS_CAP_REVISION_2) granting `capabilities` as permitted and
/// effective: the value `setcap CAPS+ep` stores.
pub fn file_capabilities(capabilities: &[u32]) -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x0000_0001;
    let mut permitted = [0u32; 2];
    for &capability in capabilities {
        permitted[(capability / 32) as usize] |= 1 << (capability % 32);
    }
    let words = [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        permitted[0],
        0,
        permitted[1],
        0,
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_capabilities_are_what_setcap_writes() {
        // `setcap cap_net_bind_service,cap_net_admin+ep` (10 and 12): getfattr shows
        // 0x0100000200140000000000000000000000000000.
        let value = file_capabilities(&[10, 12]);
        assert_eq!(hex(&value), "0100000200140000000000000000000000000000");
    }

    #[test]
    fn an_archive_names_its_layer_by_digest_and_carries_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = Image::new("registry.k8s.io/pause:3.10.1");
        image.text("etc/passwd", "root:x:0:0::/:/bin/sh\n", 0o644);
        image.symlink("bin/sh", "busybox");
        image.entrypoint = vec!["/pause".into()];
        let out = dir.path().join("pause.tar");
        image.write_archive(&out).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().any(|n| n == "manifest.json"));
        let layer = names.iter().find(|n| n.ends_with("/layer.tar")).unwrap();
        let digest = hex(&Sha256::digest(image.layer().unwrap()));
        assert_eq!(
            layer,
            &format!("{digest}/layer.tar"),
            "same inputs, same digest"
        );
        let layer = image.layer().unwrap();
        let mut layer = tar::Archive::new(layer.as_slice());
        let paths: Vec<String> = layer
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["bin/", "bin/sh", "etc/", "etc/passwd"]);
    }
}
