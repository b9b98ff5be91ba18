//! The container images the lab can run. A lab "container" is a process in the pod's
//! network namespace and the node's mount view; the images below map to the real tools
//! on the host or to stand-ins in this binary. Any other image fails like an image the
//! registry does not have: `ErrImagePull`, never a silent success.

use std::path::Path;

#[derive(Debug)]
pub enum Image {
    /// calico/node: the stand-in in `calico.rs`, which runs the real BIRD.
    CalicoNode,
    /// registry.k8s.io/e2e-test-images/agnhost: `netexec` and `pause`, served by `agnhost.rs`.
    Agnhost,
    /// registry.k8s.io/pause
    Pause,
    /// busybox-like images: the host's own shell tools.
    Shell,
    /// postflight itself, for running it in the cluster (the nightly CronJob): the
    /// `postflight` binary built next to this one.
    Postflight,
}

pub fn identify(image: &str) -> Result<Image, String> {
    let repository = image.split('@').next().unwrap_or(image);
    let repository = repository
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(repository, |(r, _)| r);
    match repository.rsplit('/').next().unwrap_or(repository) {
        "node" if repository.contains("calico") => Ok(Image::CalicoNode),
        "agnhost" => Ok(Image::Agnhost),
        "pause" => Ok(Image::Pause),
        "busybox" | "debian" | "alpine" => Ok(Image::Shell),
        "postflight" => Ok(Image::Postflight),
        _ => Err(format!("failed to pull image \"{image}\": the lab has no such image (it runs calico/node, agnhost, pause, busybox, postflight)")),
    }
}

/// The argv a container starts with, from its image, `command` and `args`.
pub fn entrypoint(
    image: &Image,
    command: &[String],
    args: &[String],
    lab_binary: &Path,
) -> Vec<String> {
    // As a container runtime combines them: `command` replaces the image's ENTRYPOINT,
    // `args` its CMD. busybox-like images have no ENTRYPOINT and CMD ["sh"], so their
    // args run on their own (`kubectl run x --image=busybox -- sleep 60`).
    let (entry, default_args): (Vec<String>, Vec<String>) = match image {
        Image::CalicoNode => (vec!["calico-node".into()], vec![]),
        Image::Agnhost => (vec!["/agnhost".into()], vec![]),
        Image::Pause => (vec!["/pause".into()], vec![]),
        Image::Shell => (vec![], vec!["sh".into()]),
        Image::Postflight => (vec!["postflight".into()], vec![]),
    };
    let entry = if command.is_empty() {
        entry
    } else {
        command.to_vec()
    };
    let args = if args.is_empty() && command.is_empty() {
        default_args
    } else {
        args.to_vec()
    };
    let mut argv: Vec<String> = entry.into_iter().chain(args).collect();
    if argv.first().is_some_and(|a| a == "/pause") {
        argv = vec!["sleep".into(), "infinity".into()];
    }
    map_binary(image, argv, lab_binary)
}

/// Maps an image's own binaries (`/agnhost`, `calico-node`) to this binary's stand-ins, so
/// that `kubectl exec` and readiness probes use the same names as on a real cluster.
pub fn map_binary(image: &Image, mut argv: Vec<String>, lab_binary: &Path) -> Vec<String> {
    let lab = lab_binary.to_string_lossy().to_string();
    let first = argv.first().cloned().unwrap_or_default();
    let base = first.rsplit('/').next().unwrap_or(&first).to_string();
    match (image, base.as_str()) {
        (Image::CalicoNode, "calico-node") => {
            argv[0] = "calico-node".into();
            argv.insert(0, lab);
        }
        (Image::Agnhost, "agnhost") => {
            argv[0] = "agnhost".into();
            argv.insert(0, lab);
        }
        (Image::Postflight, "postflight") => {
            argv[0] = postflight_binary(lab_binary).to_string_lossy().into_owned();
        }
        _ => {}
    }
    argv
}

/// The `postflight` binary: `POSTFLIGHT_BIN`, or the one built next to this lab binary.
pub fn postflight_binary(lab_binary: &Path) -> std::path::PathBuf {
    std::env::var_os("POSTFLIGHT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| lab_binary.with_file_name("postflight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_images_map_to_stand_ins_and_unknown_ones_fail_to_pull() {
        let lab = Path::new("/lab");
        let agnhost = identify("registry.k8s.io/e2e-test-images/agnhost:2.53").unwrap();
        assert_eq!(
            entrypoint(
                &agnhost,
                &[],
                &["netexec".into(), "--http-port=8080".into()],
                lab
            ),
            ["/lab", "agnhost", "netexec", "--http-port=8080"]
        );
        assert!(matches!(
            identify("docker.io/calico/node:v3.28.0"),
            Ok(Image::CalicoNode)
        ));
        assert!(matches!(
            identify("localhost:5000/calico/node"),
            Ok(Image::CalicoNode)
        ));
        assert!(identify("nginx:1.27")
            .unwrap_err()
            .contains("failed to pull"));
    }
}
