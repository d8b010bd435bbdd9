//! From a storage setting to an opened [`Storage`].

use std::path::PathBuf;
use std::sync::Arc;

use lookit_config::{Home, Secrets, StorageConfig, StorageUrl};
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::s3_uploads::S3Bucket;
use crate::{Kind, Storage, StorageError};

/// A storage place with everything needed to open it.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    Folder(PathBuf),
    S3(S3Location),
    Gcs(GcsLocation),
}

/// An S3 bucket (or one of an S3-compatible server).
#[derive(Debug, Clone)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub region: String,
    /// An S3-compatible server instead of AWS (`http://` allowed).
    pub endpoint: Option<Url>,
    /// Both or neither; without them the AWS environment variables and instance credentials
    /// are used.
    pub access_key_id: Option<SecretString>,
    pub secret_access_key: Option<SecretString>,
}

/// A Google Cloud Storage bucket.
#[derive(Debug, Clone)]
pub struct GcsLocation {
    pub bucket: String,
    pub prefix: String,
    /// The service-account key file; without it `GOOGLE_APPLICATION_CREDENTIALS` is used.
    pub service_account_key: Option<PathBuf>,
}

/// The two configured places: Pipe's videos and the built studies.
#[derive(Debug, Clone)]
pub struct StoreLocations {
    pub videos: StoreLocation,
    pub builds: StoreLocation,
}

impl StoreLocations {
    /// `[storage]` of the config with the credentials of secrets.toml; `local` means
    /// `<data>/videos` and `<builds>/published` of `home`.
    pub fn from_config(config: &StorageConfig, secrets: &Secrets, home: &Home) -> StoreLocations {
        let place = |url: &StorageUrl, local: PathBuf| {
            StoreLocation::from_config(url, config, secrets, local)
        };
        StoreLocations {
            videos: place(&config.videos, home.data_dir().join("videos")),
            builds: place(&config.builds, home.builds_dir().join("published")),
        }
    }
}

impl StoreLocation {
    /// The place `url` names, with the S3 settings of `config` and the credentials of
    /// `secrets`; `local` is `local_folder`.
    pub fn from_config(
        url: &StorageUrl,
        config: &StorageConfig,
        secrets: &Secrets,
        local_folder: PathBuf,
    ) -> StoreLocation {
        match url {
            StorageUrl::Local => StoreLocation::Folder(local_folder),
            StorageUrl::S3 { bucket, prefix } => StoreLocation::S3(S3Location {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                region: config.region.clone(),
                endpoint: config.endpoint.clone(),
                access_key_id: secrets.s3_access_key_id.clone(),
                secret_access_key: secrets.s3_secret_access_key.clone(),
            }),
            StorageUrl::Gcs { bucket, prefix } => StoreLocation::Gcs(GcsLocation {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                service_account_key: secrets.gcs_service_account_key.clone(),
            }),
        }
    }

    /// Where this is, for people (no credentials).
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Folder(path) => path.display().to_string(),
            StoreLocation::S3(s3) => bucket_url("s3", &s3.bucket, &s3.prefix),
            StoreLocation::Gcs(gcs) => bucket_url("gs", &gcs.bucket, &gcs.prefix),
        }
    }

    /// Opens the place. Nothing is sent over the network yet: a wrong bucket or credential
    /// shows at the first operation.
    pub fn open(&self) -> Result<Storage, StorageError> {
        let root = self.describe();
        let open_error = |source| StorageError::Open {
            place: root.clone(),
            source,
        };
        let (store, kind): (Arc<dyn ObjectStore>, Kind) = match self {
            StoreLocation::Folder(path) => {
                std::fs::create_dir_all(path).map_err(|source| StorageError::Folder {
                    path: path.clone(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(path).map_err(open_error)?;
                (Arc::new(store), Kind::Folder(path.clone()))
            }
            StoreLocation::S3(s3) => {
                let mut builder = match (&s3.access_key_id, &s3.secret_access_key) {
                    (Some(id), Some(secret)) => AmazonS3Builder::new()
                        .with_access_key_id(id.expose_secret())
                        .with_secret_access_key(secret.expose_secret()),
                    _ => AmazonS3Builder::from_env(),
                }
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                        .with_allow_http(endpoint.scheme() == "http");
                }
                let s3_store = Arc::new(builder.build().map_err(open_error)?);
                let bucket = S3Bucket::new(s3_store.clone(), s3).map_err(open_error)?;
                (scoped(s3_store, &s3.prefix), Kind::S3(bucket))
            }
            StoreLocation::Gcs(gcs) => {
                let mut builder =
                    GoogleCloudStorageBuilder::from_env().with_bucket_name(&gcs.bucket);
                if let Some(key) = &gcs.service_account_key {
                    builder = builder.with_service_account_path(key.display().to_string());
                }
                let store = Arc::new(builder.build().map_err(open_error)?);
                (scoped(store, &gcs.prefix), Kind::Gcs)
            }
        };
        Ok(Storage { store, root, kind })
    }
}

fn scoped(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

fn bucket_url(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}
