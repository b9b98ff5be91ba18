//! The release as an SRE receives it (`ci/release.sh`, into POSTFLIGHT_DIST): checksums
//! that verify, a tarball with the static binary, completions, man pages and licence, an
//! SBOM of the crates inside, and an OCI image that skopeo reads and whose binary runs
//! against a lab from an empty root: no libc, no libssl, nothing but itself and the CA
//! certificates.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn dist() -> PathBuf {
    let dir = std::env::var("POSTFLIGHT_DIST").expect(
        "POSTFLIGHT_DIST names the folder ci/release.sh wrote the release into (ci/test.sh builds it)",
    );
    PathBuf::from(dir)
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(output.status.success(), "{command:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The tarball, unpacked into a fresh folder.
fn unpacked() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dist().join(format!("postflight-{VERSION}-x86_64-linux.tar.gz"));
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path()));
    let root = dir
        .path()
        .join(format!("postflight-{VERSION}-x86_64-linux"));
    (dir, root)
}

#[test]
fn the_release_verifies_and_holds_a_static_binary_with_its_pages() {
    run(Command::new("sha256sum")
        .arg("--check")
        .arg("--strict")
        .arg("SHA256SUMS")
        .current_dir(dist()));
    let sums = std::fs::read_to_string(dist().join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 3, "{sums}");
    let (_dir, root) = unpacked();
    for file in [
        "postflight",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "completions/postflight.bash",
        "completions/_postflight",
        "completions/postflight.fish",
        "man/postflight.1",
        "man/postflight-verify.1",
        "man/postflight-mesh.1",
    ] {
        assert!(root.join(file).is_file(), "{file} in the tarball");
    }
    let binary = root.join("postflight");
    let dynamic = run(Command::new("readelf").arg("-d").arg(&binary));
    assert!(
        !dynamic.contains("(NEEDED)"),
        "no shared library needed:\n{dynamic}"
    );
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "{said}"
    );
    let version = run(Command::new(&binary).arg("version"));
    assert!(
        version.starts_with(&format!("postflight {VERSION}\n")),
        "{version}"
    );
    let license = std::fs::read_to_string(root.join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
}

#[test]
fn the_sbom_lists_the_crates_inside() {
    let sbom: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dist().join(format!("postflight-{VERSION}.cdx.json"))).unwrap(),
    )
    .expect("the SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["metadata"]["component"]["name"], "postflight");
    let components: Vec<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // What the binary is built from, down to the OpenSSL it carries; nothing only the
    // tests use.
    for crate_name in [
        "kube-client",
        "k8s-openapi",
        "ssh2",
        "openssl-src",
        "tokio",
        "clap",
    ] {
        assert!(
            components.contains(&crate_name),
            "{crate_name} in {components:?}"
        );
    }
    for dev_only in ["rstest", "jsonschema", "postflight-lab"] {
        assert!(
            !components.contains(&dev_only),
            "{dev_only} is not in the binary"
        );
    }
}

/// The image's root filesystem, unpacked as a runtime would.
fn image_rootfs(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir(&layout).unwrap();
    let archive = dist().join(format!("postflight-{VERSION}.oci.tar"));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{VERSION}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

#[test]
fn the_image_is_read_by_skopeo_and_runs_against_a_lab_from_an_empty_root() {
    let archive = dist().join(format!("postflight-{VERSION}.oci.tar"));
    let reference = format!("oci-archive:{}", archive.display());
    let config: serde_json::Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", "--config", &reference])
    ))
    .expect("skopeo reads the image's config");
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/local/bin/postflight"
    );
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let manifest: serde_json::Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", "--raw", &reference])
    ))
    .unwrap();
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        1,
        "{manifest:#}"
    );

    let dir = tempfile::tempdir().unwrap();
    let rootfs = image_rootfs(dir.path());
    let mut files: Vec<String> = walk(&rootfs)
        .into_iter()
        .map(|p| p.strip_prefix(&rootfs).unwrap().display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/local/bin/postflight"
        ],
        "nothing but the binary, the CA certificates and the user"
    );

    // The lab's state folder is bound into the empty root at its own path, so the
    // inventory, kubeconfig and SSH keys are where the inventory says; nothing else of
    // this machine is visible. The binary talks TLS to the API server and SSH to the
    // node with what it carries.
    let lab = lab("pf-static", 3);
    let state = lab.paths().state_dir.clone();
    let inventory = lab.paths().inventory();
    let script = format!(
        "set -e; mkdir -p {root}{state}; mount --bind {state} {root}{state}; \
         exec chroot {root} /usr/local/bin/postflight --inventory {inventory} verify --node k8s-worker-01 --json {state}/static.json",
        root = rootfs.display(),
        state = state.display(),
        inventory = inventory.display(),
    );
    let output = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .expect("unshare runs");
    assert!(
        output.status.success(),
        "the static binary verifies a node from an empty root: {output:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("static.json")).unwrap()).unwrap();
    assert_follows_schema(&json);
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["build"]["version"], VERSION);
    assert_no_probe_left(&lab);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn tool(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} names a tool built from the lab's Go module (ci/test.sh builds it with ci/lab/k8s/build.sh)")
    })
}

/// The release's krew manifest passes krew's own validator, and krew installs the
/// release's tarball with it (checking its sha256), after which `kubectl postflight`
/// runs the binary it unpacked.
#[test]
fn krew_validates_the_manifest_and_installs_the_release_with_it() {
    let manifest = dist().join("postflight.krew.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&format!("version: v{VERSION}")), "{text}");
    assert!(
        !text.contains("SHA256") && !text.contains("VERSION"),
        "filled in: {text}"
    );
    // krew's validator wants the manifest named after the plugin.
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("postflight.yaml");
    std::fs::copy(&manifest, &named).unwrap();
    let validated = Command::new(tool("POSTFLIGHT_KREW_VALIDATE"))
        .arg("-manifest")
        .arg(&named)
        .arg("-skip-install")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&validated.stderr);
    assert!(
        validated.status.success() && said.contains("structural validation OK"),
        "{said}"
    );

    // kubectl is the lab's, found on PATH as plugins expect it; krew is its plugin.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\nexec {} kubectl \"$@\"\n",
            tool("POSTFLIGHT_LAB_K8S_BIN")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(tool("POSTFLIGHT_KREW"), bin.join("kubectl-krew")).unwrap();
    let root = dir.path().join("krew");
    let path = format!(
        "{}:{}:{}",
        root.join("bin").display(),
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("PATH", &path)
            .env("KREW_ROOT", &root)
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // A tarball that is not the one the manifest names is refused, and nothing is installed.
    let forged = dir.path().join("forged.tar.gz");
    std::fs::write(&forged, b"not the release").unwrap();
    let refused = kubectl(&[
        "krew",
        "install",
        &format!("--manifest={}", named.display()),
        &format!("--archive={}", forged.display()),
    ]);
    assert!(!refused.status.success(), "{refused:?}");
    let tarball = dist().join(format!("postflight-{VERSION}-x86_64-linux.tar.gz"));
    let installed = kubectl(&[
        "krew",
        "install",
        &format!("--manifest={}", named.display()),
        &format!("--archive={}", tarball.display()),
    ]);
    assert!(installed.status.success(), "{installed:?}");
    let version = kubectl(&["postflight", "version"]);
    assert!(version.status.success(), "{version:?}");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with(&format!("postflight {VERSION}\n"))
    );
}
