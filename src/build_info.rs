//! What this binary was built from, for `postflight version` and every report: a run's
//! JUnit or JSON found months later says which build produced it.

use serde::Serialize;

/// The Kubernetes API version the client was built against: k8s-openapi's feature in
/// Cargo.toml (a unit test holds the two together).
pub const KUBERNETES_API: &str = "v1.33";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    /// The git commit the binary was built from, `unknown` outside a git checkout.
    pub commit: &'static str,
    /// UTC, `SOURCE_DATE_EPOCH` when set, so that a reproducible build stays so.
    pub build_date: &'static str,
    pub rustc: &'static str,
    pub kubernetes_api: &'static str,
}

pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("POSTFLIGHT_GIT_COMMIT"),
    build_date: env!("POSTFLIGHT_BUILD_DATE"),
    rustc: env!("POSTFLIGHT_RUSTC"),
    kubernetes_api: KUBERNETES_API,
};

impl BuildInfo {
    /// The facts as report properties, in a fixed order.
    pub fn properties(&self) -> [(&'static str, &'static str); 5] {
        [
            ("postflight_version", self.version),
            ("postflight_commit", self.commit),
            ("postflight_build_date", self.build_date),
            ("rustc", self.rustc),
            ("kubernetes_api", self.kubernetes_api),
        ]
    }

    /// `postflight version`'s text.
    pub fn text(&self) -> String {
        format!(
            "postflight {}\ncommit: {}\nbuilt: {}\nrustc: {}\nKubernetes API: {}\n",
            self.version, self.commit, self.build_date, self.rustc, self.kubernetes_api
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_api_is_the_one_k8s_openapi_is_built_for() {
        let manifest = include_str!("../Cargo.toml");
        let feature = format!(
            "\"v{}\"",
            KUBERNETES_API.trim_start_matches('v').replace('.', "_")
        );
        let line = manifest
            .lines()
            .find(|l| l.starts_with("k8s-openapi"))
            .expect("k8s-openapi is a dependency");
        assert!(line.contains(&feature), "{line} vs {KUBERNETES_API}");
    }

    #[test]
    fn every_fact_is_known_at_build_time() {
        for (name, value) in BUILD.properties() {
            assert!(!value.is_empty(), "{name}");
        }
        assert!(BUILD.rustc.starts_with("rustc "), "{}", BUILD.rustc);
        assert!(BUILD.build_date.ends_with('Z'), "{}", BUILD.build_date);
        assert!(BUILD
            .text()
            .starts_with(&format!("postflight {}\n", BUILD.version)));
    }
}
