//! `lookit-local builder build` against the real Docker engine: the shipped builder image built on
//! the local Node stand-in `lookit-test/node` (scripts/build-test-images), step by step.

mod common;

use std::path::Path;
use std::process::Command;

use common::{lookit, output};

fn builder_build(home: &Path, image: &str, base: &str) -> (bool, String, String) {
    output(
        lookit(home)
            .env("LOOKIT_LOCAL__BUILDS__BUILDER_IMAGE", image)
            .env("LOOKIT_LOCAL__BUILDS__BUILDER_BASE_IMAGE", base)
            .args(["builder", "build"]),
    )
}

#[test]
fn builder_build_prints_each_step_then_leaves_a_present_image_alone() {
    let home = tempfile::tempdir().unwrap();
    let image = "lookit-test/ember-builder:cli";
    // Untagged but its layers kept: a real build, every step shown, without reinstalling.
    let _ = Command::new("docker")
        .args(["image", "rm", "--force", "--no-prune", image])
        .output();

    let (ok, stdout, stderr) = builder_build(home.path(), image, "lookit-test/node:latest");
    assert!(ok, "{stdout}\n{stderr}");
    let steps: Vec<&str> = stdout.lines().filter(|l| l.starts_with("step ")).collect();
    assert!(
        steps.first().is_some_and(|s| s.starts_with("step 1/")),
        "{stdout}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.contains("npm install --global bower")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("built {image} (sha256:"))),
        "{stdout}"
    );

    let (ok, stdout, stderr) = builder_build(home.path(), image, "lookit-test/node:latest");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("is already on this machine") && !stdout.contains("step 1/"),
        "{stdout}"
    );
}

#[test]
fn builder_build_names_the_config_key_when_no_registry_can_provide_the_base() {
    let home = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = builder_build(
        home.path(),
        "lookit-test/ember-builder:cli-no-base",
        "lookit-local-test/no-such-node:14",
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("no container registry is reachable")
            && stderr.contains("`builds.builder_base_image`"),
        "{stderr}"
    );
}
