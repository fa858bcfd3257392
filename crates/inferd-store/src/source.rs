//! Opening a repository URL (`s3://`, `gs://`, `az://`) as an object store, with credentials
//! from the standard environment, and the two reads a sync needs: a listing and a download.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::StoreError;
use crate::plan::{Listing, Sig};

/// URL schemes served from object storage.
const SCHEMES: &[&str] = &["s3", "gs", "az", "azure", "abfs", "abfss"];

/// Whether a `--model-repository` value names object storage rather than a folder.
pub fn is_remote(repository: &str) -> bool {
    repository
        .split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// A repository on object storage.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url: String,
}

/// Bounded retries: a startup against an unreachable store must fail in seconds, not the
/// library's default three minutes; poll mode retries on its own schedule.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..BackoffConfig::default()
        },
    }
}

fn client() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(300))
}

impl Remote {
    /// Opens `url`. Credentials, region and endpoint come from the environment each cloud's
    /// tools read (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, ...; `GOOGLE_SERVICE_ACCOUNT`...; `AZURE_STORAGE_ACCOUNT_NAME`...).
    /// An `http://` S3 endpoint (a local MinIO or SeaweedFS) is allowed because it was named.
    pub fn open(url: &str) -> Result<Remote, StoreError> {
        // rustls needs a process-wide provider for the store's HTTPS client: ring, as the
        // server's TLS uses (deprecated in rustls 0.23.48 only for lacking post-quantum key
        // exchange). Installing twice is harmless (the second call reports the first).
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no bucket or container".into()));
        }
        let store_err = |cause| StoreError::Store {
            url: url.to_string(),
            cause,
        };
        let store: Arc<dyn ObjectStore> = match scheme.as_str() {
            "s3" => {
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_client_options(client());
                let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
                    .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_default();
                if endpoint.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
                Arc::new(b.build().map_err(store_err)?)
            }
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_client_options(client())
                    .build()
                    .map_err(store_err)?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_client_options(client())
                    .build()
                    .map_err(store_err)?,
            ),
            other => {
                return Err(bad(format!(
                    "unsupported scheme '{other}' (use s3://, gs:// or az://)"
                )));
            }
        };
        // For s3/gs the host is the bucket and the path the prefix; for az:// the host is the
        // container and the path the prefix too (account from the environment).
        let prefix = ObjPath::parse(parsed.path().trim_matches('/'))
            .map_err(|e| bad(format!("bad prefix: {e}")))?;
        Ok(Remote {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, cause: object_store::Error) -> StoreError {
        StoreError::Store {
            url: self.url.clone(),
            cause,
        }
    }

    fn location(&self, key: &str) -> ObjPath {
        let mut loc = self.prefix.clone();
        for part in key.split('/') {
            loc = loc.clone().join(part);
        }
        loc
    }

    /// Every object under the prefix, by key relative to it.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut stream = self.store.list(prefix);
        let mut out = Listing::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err(e))?;
            let Some(rel) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let key = rel.map(|p| p.as_ref().to_string()).collect::<Vec<_>>();
            if key.is_empty() {
                continue;
            }
            out.insert(
                key.join("/"),
                Sig {
                    size: meta.size,
                    etag: meta.e_tag,
                    modified_ms: meta.last_modified.timestamp_millis(),
                },
            );
        }
        Ok(out)
    }

    /// An object's whole content (configs: small).
    pub async fn read(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let got = self
            .store
            .get(&self.location(key))
            .await
            .map_err(|e| self.err(e))?;
        Ok(got.bytes().await.map_err(|e| self.err(e))?.to_vec())
    }

    /// Streams an object into `dest` (created), calling `advance` with each chunk's length;
    /// fails unless exactly `size` bytes arrive. The file is flushed to disk before returning.
    pub async fn download(
        &self,
        key: &str,
        size: u64,
        dest: &Path,
        advance: &(dyn Fn(u64) + Sync),
    ) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let got = self
            .store
            .get(&self.location(key))
            .await
            .map_err(|e| self.err(e))?;
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut stream = got.into_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(e))?;
            n += chunk.len() as u64;
            if n > size {
                break;
            }
            file.write_all(&chunk).await.map_err(io)?;
            advance(chunk.len() as u64);
        }
        if n != size {
            return Err(StoreError::Check {
                key: key.to_string(),
                reason: format!("the store listed {size} bytes but sent {n}"),
            });
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(())
    }
}
