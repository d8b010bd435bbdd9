//! The builder image of §2 stage 3, built by the app from `docker/ember-builder` (embedded in the
//! binary, so an installed app needs no checkout of this repository) through the Docker API, with
//! progress: the base image's download, each Dockerfile step, and the steps' output.
//!
//! Invariants:
//! - An image that exists under the configured name is used as it is (a lab may configure its
//!   own builder that honours the same contract); only a missing one is built, or any one when
//!   asked to rebuild.
//! - One build of the image at a time per [`BuilderImage`]: a caller that waited for another's
//!   build finds the image there and does not build it again.

use std::collections::{HashMap, VecDeque};

use anyhow::Context as _;
use bollard::image::{BuildImageOptions, CreateImageOptions};
use bollard::Docker;
use futures::StreamExt;
use serde::Serialize;

/// The build context shipped in this repository: (path in the context, Unix mode, contents).
/// The context also holds [`HOST_CA_FILE`], read when the image is built.
const CONTEXT: &[(&str, u32, &str)] = &[
    (
        "Dockerfile",
        0o644,
        include_str!("../../../docker/ember-builder/Dockerfile"),
    ),
    (
        "build-study.sh",
        0o755,
        include_str!("../../../docker/ember-builder/build-study.sh"),
    ),
];

/// The host's CA bundle in the build context: the Dockerfile adds it to the image's, so a lab's
/// TLS-inspecting proxy is trusted inside as it is on the host.
const HOST_CA_FILE: &str = "host-ca-certificates.crt";

/// Where Linux distributions keep the bundle of trusted CAs (after `SSL_CERT_FILE`).
const HOST_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The Dockerfile's build argument that names the base image.
const BASE_IMAGE_ARG: &str = "NODE_IMAGE";

/// Output lines of the build quoted in a failure.
const TAIL_LINES: usize = 30;

/// Pull progress is reported in steps of this many percent (a layer reports every few KiB).
const PULL_REPORT_PERCENT: u64 = 5;

/// One piece of progress of an image build, for the CLI, the build log and the panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuilderImageProgress {
    /// Downloading the base image: a status line, and the fraction of the bytes of the layers
    /// seen so far when their sizes are known.
    Pull {
        image: String,
        status: String,
        fraction: Option<f64>,
    },
    /// A Dockerfile step began (`Step 3/5 : RUN npm install ...`).
    Step {
        number: u32,
        total: u32,
        instruction: String,
    },
    /// One line of output of the running step.
    Output { line: String },
    /// The image is built and tagged.
    Built { image: String, id: String },
}

impl BuilderImageProgress {
    /// How far the whole build is, when that can be told (0..=1).
    pub fn fraction(&self) -> Option<f64> {
        match self {
            BuilderImageProgress::Pull { fraction, .. } => *fraction,
            BuilderImageProgress::Step { number, total, .. } if *total > 0 => {
                Some(f64::from(number.saturating_sub(1)) / f64::from(*total))
            }
            BuilderImageProgress::Built { .. } => Some(1.0),
            _ => None,
        }
    }
}

impl std::fmt::Display for BuilderImageProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuilderImageProgress::Pull {
                image,
                status,
                fraction,
            } => match fraction {
                Some(fraction) => write!(
                    f,
                    "pulling {image}: {status} ({:.0}%)",
                    (fraction * 100.0).floor()
                ),
                None => write!(f, "pulling {image}: {status}"),
            },
            BuilderImageProgress::Step {
                number,
                total,
                instruction,
            } => write!(f, "step {number}/{total}: {instruction}"),
            BuilderImageProgress::Output { line } => write!(f, "  {line}"),
            BuilderImageProgress::Built { image, id } => write!(f, "built {image} ({id})"),
        }
    }
}

/// Why the builder image is not there.
#[derive(Debug, thiserror::Error)]
pub enum BuilderImageError {
    #[error("the Docker engine cannot be reached or refused the request: {0}")]
    Engine(String),
    #[error(
        "the builder image's base image {base} is not on this machine and cannot be pulled: \
         no container registry is reachable ({reason}). Point the config key \
         `builds.builder_base_image` at a Node image that is on this machine (see `docker images`)"
    )]
    RegistryUnreachable { base: String, reason: String },
    #[error(
        "the builder image's base image {base} cannot be pulled: {reason}. Check the config key \
         `builds.builder_base_image`"
    )]
    BasePull { base: String, reason: String },
    #[error("building the builder image {image} failed at {step}: {message}\nlast lines of the build:\n{tail}")]
    StepFailed {
        image: String,
        /// `step 3/5 (RUN ...)`, or `the start` when no step began.
        step: String,
        message: String,
        tail: String,
    },
}

/// The builder image is on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReady {
    pub id: String,
    /// It was built just now (not found).
    pub built: bool,
}

/// The configured builder image and how to build it.
pub struct BuilderImage {
    docker: Docker,
    name: String,
    base_image: String,
    building: tokio::sync::Mutex<()>,
}

impl BuilderImage {
    /// `name` is `builds.builder_image`, `base_image` is `builds.builder_base_image`.
    pub fn new(docker: Docker, name: String, base_image: String) -> BuilderImage {
        BuilderImage {
            docker,
            name,
            base_image,
            building: tokio::sync::Mutex::new(()),
        }
    }

    /// Through the local Docker engine (`DOCKER_HOST` or the default socket).
    pub fn connect(name: String, base_image: String) -> Result<BuilderImage, BuilderImageError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| BuilderImageError::Engine(e.to_string()))?;
        Ok(BuilderImage::new(docker, name, base_image))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes sure the image exists: builds it when it is missing.
    pub async fn ensure(
        &self,
        progress: impl FnMut(BuilderImageProgress),
    ) -> Result<ImageReady, BuilderImageError> {
        let _building = self.building.lock().await;
        if let Some(id) = image_id(&self.docker, &self.name).await? {
            return Ok(ImageReady { id, built: false });
        }
        self.build_now(false, progress).await
    }

    /// Builds the image even when it exists, without the layer cache (a fresh base, fresh
    /// packages).
    pub async fn rebuild(
        &self,
        progress: impl FnMut(BuilderImageProgress),
    ) -> Result<ImageReady, BuilderImageError> {
        let _building = self.building.lock().await;
        self.build_now(true, progress).await
    }

    async fn build_now(
        &self,
        fresh: bool,
        mut progress: impl FnMut(BuilderImageProgress),
    ) -> Result<ImageReady, BuilderImageError> {
        self.pull_base(&mut progress).await?;
        let context = context_tar(&host_ca_bundle())
            .map_err(|e| BuilderImageError::Engine(format!("{e:#}")))?;
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".to_string(),
            t: self.name.clone(),
            buildargs: HashMap::from([(BASE_IMAGE_ARG.to_string(), self.base_image.clone())]),
            rm: true,
            forcerm: true,
            nocache: fresh,
            ..BuildImageOptions::default()
        };
        let mut stream = self.docker.build_image(options, None, Some(context.into()));
        let mut parser = BuildStream::default();
        while let Some(message) = stream.next().await {
            match message {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        parser.text(&text).into_iter().for_each(&mut progress);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(parser.failure(&self.name, error));
                }
                Err(error) => return Err(BuilderImageError::Engine(error.to_string())),
            }
        }
        parser.finish().into_iter().for_each(&mut progress);
        let id = image_id(&self.docker, &self.name).await?.ok_or_else(|| {
            BuilderImageError::Engine(format!(
                "the build ended without error but {} is not there",
                self.name
            ))
        })?;
        progress(BuilderImageProgress::Built {
            image: self.name.clone(),
            id: id.clone(),
        });
        Ok(ImageReady { id, built: true })
    }

    /// Pulls the base image unless it is on this machine, so a registry that cannot be reached
    /// is named as such (and the build's `FROM` finds the base locally).
    async fn pull_base(
        &self,
        progress: &mut impl FnMut(BuilderImageProgress),
    ) -> Result<(), BuilderImageError> {
        if image_id(&self.docker, &self.base_image).await?.is_some() {
            return Ok(());
        }
        let options = CreateImageOptions {
            from_image: self.base_image.clone(),
            ..CreateImageOptions::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        let mut layers = PullProgress::default();
        while let Some(message) = pull.next().await {
            let info = message.map_err(|error| {
                let reason = match error {
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                };
                if is_unreachable_registry(&reason) {
                    BuilderImageError::RegistryUnreachable {
                        base: self.base_image.clone(),
                        reason,
                    }
                } else {
                    BuilderImageError::BasePull {
                        base: self.base_image.clone(),
                        reason,
                    }
                }
            })?;
            let detail = info.progress_detail.unwrap_or_default();
            let status = info.status.unwrap_or_default();
            let update = layers.update(
                info.id.as_deref(),
                &status,
                detail.current.and_then(|c| u64::try_from(c).ok()),
                detail.total.and_then(|t| u64::try_from(t).ok()),
            );
            if let Some(fraction) = update {
                progress(BuilderImageProgress::Pull {
                    image: self.base_image.clone(),
                    status,
                    fraction,
                });
            }
        }
        Ok(())
    }
}

/// The image's id, `None` when there is no such image.
async fn image_id(docker: &Docker, name: &str) -> Result<Option<String>, BuilderImageError> {
    match docker.inspect_image(name).await {
        Ok(image) => Ok(Some(image.id.unwrap_or_default())),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(error) => Err(BuilderImageError::Engine(error.to_string())),
    }
}

/// The CAs this machine trusts (PEM), empty when no bundle is found: then the image trusts its
/// own bundle only.
fn host_ca_bundle() -> Vec<u8> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    from_env
        .into_iter()
        .chain(HOST_CA_BUNDLES.iter().map(std::path::PathBuf::from))
        .find_map(|path| std::fs::read(path).ok())
        .unwrap_or_default()
}

/// The embedded build context plus the host's CA bundle, as a tar archive (fixed times and
/// owners, so the layer cache recognises an unchanged context).
fn context_tar(host_ca: &[u8]) -> anyhow::Result<Vec<u8>> {
    let files = CONTEXT
        .iter()
        .map(|(path, mode, contents)| (*path, *mode, contents.as_bytes()))
        .chain([(HOST_CA_FILE, 0o644, host_ca)]);
    let mut archive = tar::Builder::new(Vec::new());
    for (path, mode, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        archive
            .append_data(&mut header, path, contents)
            .with_context(|| format!("add {path} to the build context"))?;
    }
    archive.into_inner().context("finish the build context")
}

/// Docker's pull errors when no registry answers (DNS, TCP or TLS), as opposed to a registry
/// that answered "no such image".
fn is_unreachable_registry(reason: &str) -> bool {
    const SIGNS: &[&str] = &[
        "dial tcp",
        "no such host",
        "lookup ",
        "i/o timeout",
        "connection refused",
        "network is unreachable",
        "TLS handshake timeout",
        "Client.Timeout exceeded",
    ];
    SIGNS.iter().any(|sign| reason.contains(sign))
}

/// The classic builder's `stream` text turned into steps and output lines; remembers the step
/// that runs and the last lines, for a failure.
#[derive(Default)]
struct BuildStream {
    pending: String,
    step: Option<(u32, u32, String)>,
    tail: VecDeque<String>,
}

impl BuildStream {
    /// Chunks do not follow line boundaries: whole lines are parsed, the rest waits.
    fn text(&mut self, chunk: &str) -> Vec<BuilderImageProgress> {
        self.pending.push_str(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=end).collect();
            events.extend(self.line(line.trim_end_matches(['\n', '\r'])));
        }
        events
    }

    fn finish(&mut self) -> Vec<BuilderImageProgress> {
        let rest = std::mem::take(&mut self.pending);
        self.line(rest.trim_end()).into_iter().collect()
    }

    fn line(&mut self, line: &str) -> Option<BuilderImageProgress> {
        // The classic builder colours a step's stderr; the colour codes are noise in a log.
        let plain = strip_colours(line);
        let line = plain.as_str();
        if let Some((number, total, instruction)) = parse_step(line) {
            self.step = Some((number, total, instruction.clone()));
            return Some(BuilderImageProgress::Step {
                number,
                total,
                instruction,
            });
        }
        // Docker's bookkeeping (` ---> 3f2a…`, intermediate containers, the final tags) says
        // nothing the steps and the end do not.
        let bookkeeping = ["---> ", "Removing intermediate container", "Successfully "];
        let trimmed = line.trim();
        if trimmed.is_empty() || bookkeeping.iter().any(|b| trimmed.starts_with(b)) {
            return None;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        Some(BuilderImageProgress::Output {
            line: line.to_string(),
        })
    }

    /// The error Docker ended the build with, with the step it failed at and the last lines.
    fn failure(&mut self, image: &str, message: String) -> BuilderImageError {
        self.finish();
        BuilderImageError::StepFailed {
            image: image.to_string(),
            step: match &self.step {
                Some((number, total, instruction)) => {
                    format!("step {number}/{total} ({instruction})")
                }
                None => "the start".to_string(),
            },
            message: message.trim().to_string(),
            tail: Vec::from(self.tail.clone()).join("\n"),
        }
    }
}

/// The text without ANSI colour sequences (`ESC [ ... m`).
fn strip_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the sequence: its final byte is a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// `Step 3/5 : RUN npm install` → (3, 5, `RUN npm install`).
fn parse_step(line: &str) -> Option<(u32, u32, String)> {
    let rest = line.strip_prefix("Step ")?;
    let (counts, instruction) = rest.split_once(" : ")?;
    let (number, total) = counts.split_once('/')?;
    Some((
        number.trim().parse().ok()?,
        total.trim().parse().ok()?,
        instruction.trim().to_string(),
    ))
}

/// Bytes per layer of a pull, reported when a status changes or the total moves by
/// [`PULL_REPORT_PERCENT`].
#[derive(Default)]
struct PullProgress {
    layers: HashMap<String, (u64, Option<u64>)>,
    last_status: String,
    last_percent: Option<u64>,
}

impl PullProgress {
    /// Records one pull message; `Some(fraction)` when it is worth reporting.
    fn update(
        &mut self,
        layer: Option<&str>,
        status: &str,
        current: Option<u64>,
        total: Option<u64>,
    ) -> Option<Option<f64>> {
        if let Some(layer) = layer {
            let entry = self.layers.entry(layer.to_string()).or_insert((0, None));
            if total.is_some() {
                *entry = (current.unwrap_or(0), total);
            } else if status.starts_with("Download complete") || status.starts_with("Pull complete")
            {
                // The layer's bytes are all there even though this message carries no sizes.
                if let Some(size) = entry.1 {
                    entry.0 = size;
                }
            }
        }
        let total: u64 = self.layers.values().filter_map(|(_, t)| *t).sum();
        let current: u64 = self.layers.values().map(|(c, _)| *c).sum();
        let fraction = (total > 0).then(|| (current.min(total)) as f64 / total as f64);
        let percent = fraction.map(|f| (f * 100.0) as u64 / PULL_REPORT_PERCENT);
        // Per-layer statuses repeat for every layer; only the overall ones are news.
        let overall_status = layer.is_none() && status != self.last_status;
        if overall_status || percent != self.last_percent {
            if layer.is_none() {
                self.last_status = status.to_string();
            }
            self.last_percent = percent;
            return Some(fraction);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_output_lines_come_out_of_the_stream_in_order() {
        let mut stream = BuildStream::default();
        let mut events = stream.text("Step 1/4 : ARG NODE_IMAGE=node:14-bullseye\n");
        events.extend(stream.text("Step 3/4 : RUN npm install --global bow"));
        events.extend(stream.text("er@1.8.14\n ---> Running in 5f1c2a\nadded 1 pack"));
        events.extend(stream.text("age in 2s\n\u{1b}[0mRemoving intermediate container 5f1c2a\n"));
        events.extend(stream.text("\u{1b}[91mnpm WARN deprecated bower@1.8.14\n\u{1b}[0m"));
        events.extend(stream.finish());
        assert_eq!(
            events,
            vec![
                BuilderImageProgress::Step {
                    number: 1,
                    total: 4,
                    instruction: "ARG NODE_IMAGE=node:14-bullseye".into()
                },
                BuilderImageProgress::Step {
                    number: 3,
                    total: 4,
                    instruction: "RUN npm install --global bower@1.8.14".into()
                },
                BuilderImageProgress::Output {
                    line: "added 1 package in 2s".into()
                },
                BuilderImageProgress::Output {
                    line: "npm WARN deprecated bower@1.8.14".into()
                },
            ]
        );
        assert_eq!(events[1].fraction(), Some(0.5));
    }

    #[test]
    fn a_failure_names_the_step_and_quotes_the_last_lines() {
        let mut stream = BuildStream::default();
        stream.text("Step 2/3 : RUN apt-get update\n");
        for n in 0..40 {
            stream.text(&format!("line {n}\n"));
        }
        stream.text("E: Unable to fetch some archives");
        let error = stream
            .failure(
                "lookit/ember-builder:latest",
                "The command '/bin/sh -c apt-get update' returned a non-zero code: 100".into(),
            )
            .to_string();
        assert!(
            error.contains("failed at step 2/3 (RUN apt-get update)"),
            "{error}"
        );
        assert!(error.contains("returned a non-zero code: 100"), "{error}");
        assert!(
            error.contains("E: Unable to fetch some archives"),
            "{error}"
        );
        assert!(
            error.contains("line 39") && !error.contains("line 10\n"),
            "{error}"
        );
    }

    #[test]
    fn pull_progress_is_reported_in_steps_and_on_new_statuses() {
        let mut pull = PullProgress::default();
        assert_eq!(
            pull.update(None, "Pulling from library/node", None, None),
            Some(None)
        );
        assert_eq!(pull.update(Some("a"), "Pulling fs layer", None, None), None);
        assert_eq!(
            pull.update(Some("a"), "Downloading", Some(10), Some(1000)),
            Some(Some(0.01))
        );
        // 2%: same 5% step.
        assert_eq!(
            pull.update(Some("a"), "Downloading", Some(20), Some(1000)),
            None
        );
        assert_eq!(
            pull.update(Some("a"), "Download complete", None, None),
            Some(Some(1.0))
        );
        assert_eq!(
            pull.update(None, "Status: Downloaded newer image", None, None),
            Some(Some(1.0))
        );
    }

    #[test]
    fn an_unreachable_registry_is_told_from_a_missing_image() {
        assert!(is_unreachable_registry(
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host"
        ));
        assert!(!is_unreachable_registry(
            "pull access denied for lab/node, repository does not exist or may require 'docker login'"
        ));
    }

    #[test]
    fn the_build_context_holds_the_dockerfile_an_executable_build_script_and_the_host_cas() {
        let tar = context_tar(b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("Dockerfile".to_string(), 0o644),
                ("build-study.sh".to_string(), 0o755),
                (HOST_CA_FILE.to_string(), 0o644),
            ]
        );
    }
}
