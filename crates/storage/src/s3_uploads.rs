//! Abandoned S3 multipart uploads (issue 5 cleanup). An upload that is never completed or
//! aborted keeps its parts, and the bucket's bill, forever. `object_store` has no way to list
//! them, so this speaks the two S3 calls itself (ListMultipartUploads, AbortMultipartUpload),
//! signed by `object_store`'s SigV4 signer with the store's own credentials and sent through its
//! HTTP client: no AWS SDK.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::ClientOptions;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::location::S3Location;
use crate::{Kind, Storage, StorageError};

/// What SigV4 leaves unencoded: letters, digits and `-_.~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The bucket behind an S3 [`Storage`], for the calls `object_store` does not make.
#[derive(Debug, Clone)]
pub(crate) struct S3Bucket {
    s3: Arc<AmazonS3>,
    client: HttpClient,
    /// Path-style bucket URL (`https://s3.<region>.amazonaws.com/<bucket>` or
    /// `<endpoint>/<bucket>`), as `object_store` addresses it by default.
    bucket_url: String,
    region: String,
    /// The storage's key prefix with a trailing `/`, or empty.
    prefix: String,
}

impl S3Bucket {
    pub(crate) fn new(
        s3: Arc<AmazonS3>,
        location: &S3Location,
    ) -> Result<S3Bucket, object_store::Error> {
        let allow_http = location
            .endpoint
            .as_ref()
            .is_some_and(|e| e.scheme() == "http");
        let client = ReqwestConnector::default()
            .connect(&ClientOptions::new().with_allow_http(allow_http))?;
        let endpoint = match &location.endpoint {
            Some(endpoint) => endpoint.as_str().trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", location.region),
        };
        Ok(S3Bucket {
            s3,
            client,
            bucket_url: format!("{endpoint}/{}", location.bucket),
            region: location.region.clone(),
            prefix: if location.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", location.prefix)
            },
        })
    }

    /// Sends a signed request with an empty body; the body of a 2xx answer.
    async fn call(
        &self,
        operation: &'static str,
        method: http::Method,
        url: String,
    ) -> Result<bytes::Bytes, StorageError> {
        let failed = |source: anyhow::Error| StorageError::S3Request { operation, source };
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .context("get the S3 credentials")
            .map_err(failed)?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(&url)
            .body(HttpRequestBody::empty())
            .context("build the request")
            .map_err(failed)?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .context("sign the request")
            .map_err(failed)?;
        let response = self
            .client
            .execute(request)
            .await
            .context("send the request")
            .map_err(failed)?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .context("read the answer")
            .map_err(failed)?;
        if !status.is_success() {
            return Err(StorageError::S3Api {
                operation,
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&body).chars().take(500).collect(),
            });
        }
        Ok(body)
    }

    /// Every unfinished multipart upload under the prefix.
    async fn list(&self) -> Result<Vec<MultipartUpload>, StorageError> {
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![("prefix", self.prefix.as_str()), ("uploads", "")];
            if let Some((key, upload_id)) = &markers {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", upload_id));
            }
            let query: Vec<String> = query
                .into_iter()
                .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, UNRESERVED)))
                .collect();
            let url = format!("{}?{}", self.bucket_url, query.join("&"));
            let body = self
                .call("ListMultipartUploads", http::Method::GET, url)
                .await?;
            let page: ListMultipartUploadsResult = quick_xml::de::from_reader(body.as_ref())
                .map_err(|e| StorageError::S3Request {
                    operation: "ListMultipartUploads",
                    source: anyhow::Error::new(e).context("parse the answer"),
                })?;
            uploads.extend(page.uploads);
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(upload_id)) => markers = Some((key, upload_id)),
                _ => return Ok(uploads),
            }
        }
    }

    async fn abort(&self, upload: &MultipartUpload) -> Result<(), StorageError> {
        let key: Vec<String> = upload
            .key
            .split('/')
            .map(|part| utf8_percent_encode(part, UNRESERVED).to_string())
            .collect();
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            key.join("/"),
            utf8_percent_encode(&upload.upload_id, UNRESERVED)
        );
        match self
            .call("AbortMultipartUpload", http::Method::DELETE, url)
            .await
        {
            // Completed or aborted by someone else meanwhile: gone either way.
            Err(StorageError::S3Api { status: 404, .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<MultipartUpload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MultipartUpload {
    key: String,
    upload_id: String,
    initiated: DateTime<Utc>,
}

/// The uploads started more than `older_than` before `now`.
fn started_before(
    uploads: Vec<MultipartUpload>,
    now: DateTime<Utc>,
    older_than: Duration,
) -> Vec<MultipartUpload> {
    let cutoff = now - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    uploads
        .into_iter()
        .filter(|upload| upload.initiated <= cutoff)
        .collect()
}

impl Storage {
    /// Aborts the multipart uploads under this place's prefix that were started more than
    /// `older_than` ago (a running upload is younger). `None`: the place has no multipart uploads
    /// to clean (a folder; Google Cloud Storage, whose resumable uploads expire by themselves
    /// after a week).
    pub async fn abort_abandoned_uploads(
        &self,
        older_than: Duration,
    ) -> Result<Option<usize>, StorageError> {
        let Kind::S3(bucket) = &self.kind else {
            return Ok(None);
        };
        let abandoned = started_before(bucket.list().await?, Utc::now(), older_than);
        for upload in &abandoned {
            bucket.abort(upload).await?;
            tracing::info!(key = %upload.key, initiated = %upload.initiated, "aborted an abandoned multipart upload");
        }
        Ok(Some(abandoned.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_listing_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>lab</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>b.mp4</NextKeyMarker><NextUploadIdMarker>id-2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>a.mp4</Key><UploadId>id-1</UploadId><Initiated>2026-01-02T03:04:05.000Z</Initiated></Upload>
  <Upload><Key>b.mp4</Key><UploadId>id-2</UploadId><Initiated>2026-01-02T03:04:06.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListMultipartUploadsResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id-2"));
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[1].key, "b.mp4");
        // At 03:04:35.5 with a 30 s limit, only the upload started at 03:04:05 is abandoned.
        let now = "2026-01-02T03:04:35.500Z".parse().unwrap();
        let abandoned = started_before(page.uploads, now, Duration::from_secs(30));
        assert_eq!(abandoned.len(), 1);
        assert_eq!(abandoned[0].upload_id, "id-1");
        let empty: ListMultipartUploadsResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty());
    }
}
