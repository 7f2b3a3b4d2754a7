//! Images: OCI images pulled by digest from a registry, every byte checked
//! against its digest, unpacked safely, and cached on the node by content.
//!
//! [`ImageStore::ensure`] answers an image's root filesystem and config,
//! pulling it only when the cache lacks it; concurrent calls for one image
//! wait for the one pull. The manifest must hash to the pinned digest; an
//! index is resolved to its linux/amd64 manifest (which must hash to the
//! index's entry); every blob is checked by the OCI client as it streams
//! (`oci-client`), and a blob larger than its descriptor says is refused.
//! An image is built under `tmp/` and renamed into `images/<digest>` when
//! whole, so the cache only ever holds whole images and survives restarts;
//! `tmp/` leftovers of a crash are removed when the store opens.
//! [`ImageStore::collect`] removes the images no workload uses.
//!
//! Limits: anonymous pulls only (no registry credentials); layers are not
//! shared between images on disk (each image is unpacked whole); zstd
//! layers are refused; a manifest is read into memory whole.

pub mod reference;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

pub use reference::{Digest, ImageRef, ReferenceError};
use unpack::{Compression, UnpackError, Unpacker};

/// Why an image is not available. The cache is as it was.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {image}: the registry did not answer: {source}")]
    Registry {
        image: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("image {image}: the registry took longer than {after:?} for {what}")]
    Timeout {
        image: String,
        what: String,
        after: Duration,
    },
    #[error("image {image}: {what} does not match its digest: the registry served other bytes")]
    Mismatch { image: String, what: String },
    #[error("image {image}: {problem}")]
    Invalid { image: String, problem: String },
    #[error("image {image}: {source}")]
    Unpack {
        image: String,
        #[source]
        source: UnpackError,
    },
    #[error("image cache {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image}: the unpacking task failed: {message}")]
    Task { image: String, message: String },
    #[error("image {image}: this node cannot open connections to registries: {reason}")]
    NoClient { image: String, reason: String },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where and how images are kept and fetched.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The cache's directory, on an SSD pool.
    pub root: PathBuf,
    /// Registries (`host:port`) spoken to over plain HTTP (a farm's own
    /// registry on its LAN); every other one over HTTPS.
    pub http_registries: Vec<String>,
    /// The most an image may unpack to, and the most its layers together
    /// may weigh.
    pub max_image_bytes: u64,
    /// Added to every file's owner when unpacking: containers map their
    /// root to this id of the node (0: owners as in the image).
    pub owner_shift: u32,
    /// A registry that sends nothing for this long is given up on.
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
}

impl StoreConfig {
    /// A cache in `root` with the default limits: 4 GiB per image, 30 s
    /// without a byte, 10 s to connect.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root: root.into(),
            http_registries: Vec::new(),
            max_image_bytes: 4 << 30,
            owner_shift: 0,
            read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What a container needs from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The pinned reference it was pulled as.
    pub reference: String,
    /// The digest of the image's manifest (the platform's, under an index).
    pub manifest: String,
    pub config: ImageConfig,
    /// Bytes of its files.
    pub bytes: u64,
    /// Its root filesystem (read only for workloads: they snapshot it).
    #[serde(skip)]
    pub rootfs: PathBuf,
}

const META: &str = "image.json";
const ROOTFS: &str = "rootfs";
const MAX_MANIFEST: usize = 4 << 20;
const MAX_CONFIG: u64 = 4 << 20;

/// The node's image cache.
pub struct ImageStore {
    config: StoreConfig,
    /// The registry client, or why none could be made (a node without CA
    /// certificates, say): that fails pulls, not the whole daemon.
    client: Result<oci_client::Client, String>,
    /// One lock per image being fetched: a second caller waits for the
    /// first pull and finds the image cached.
    pulls: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    fetched: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Opens the cache in `config.root`, made if missing; removes what a
    /// pull cut short left behind.
    pub fn open(config: StoreConfig) -> Result<ImageStore, ImageError> {
        for dir in ["images", "tmp"] {
            let path = config.root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_at(&path))?;
        }
        let tmp = config.root.join("tmp");
        for leftover in std::fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let leftover = leftover.map_err(io_at(&tmp))?.path();
            remove(&leftover)?;
        }
        // rustls needs one process-wide crypto provider; another part of the
        // process may have installed it already, which is as good.
        let _already = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::try_from(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                config.http_registries.clone(),
            ),
            read_timeout: Some(config.read_timeout),
            connect_timeout: Some(config.connect_timeout),
            ..Default::default()
        })
        .map_err(|e| {
            let reason = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            tracing::warn!("no registry client: {reason}");
            reason
        });
        Ok(ImageStore {
            config,
            client,
            pulls: Mutex::new(HashMap::new()),
            fetched: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many images this store fetched from registries since it opened.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The image `reference` names, from the cache or pulled.
    pub async fn ensure(&self, reference: &ImageRef) -> Result<Image, ImageError> {
        let lock = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            pulls.entry(reference.digest.clone()).or_default().clone()
        };
        let _pulling = lock.lock().await;
        if let Some(image) = self.cached(&reference.digest)? {
            return Ok(image);
        }
        let image = self.pull(reference).await;
        self.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reference.digest);
        image
    }

    /// The cached image pulled as `digest`, if whole.
    pub fn cached(&self, digest: &Digest) -> Result<Option<Image>, ImageError> {
        let dir = self.image_dir(digest);
        let meta = dir.join(META);
        match std::fs::read(&meta) {
            Ok(bytes) => {
                let mut image: Image =
                    serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
                        path: meta.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    })?;
                image.rootfs = dir.join(ROOTFS);
                Ok(Some(image))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&meta)(e)),
        }
    }

    /// The digests of the cached images.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.config.root.join("images");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            if let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every cached image not in `keep`; answers what it removed.
    pub fn collect(&self, keep: &HashSet<Digest>) -> Result<Vec<Digest>, ImageError> {
        let mut removed = Vec::new();
        for digest in self.list()? {
            if keep.contains(&digest) {
                continue;
            }
            // Moved out first, so a crash never leaves half an image
            // where a whole one is expected.
            let doomed = self
                .config
                .root
                .join("tmp")
                .join(format!("gc-{}", digest.hex()));
            let dir = self.image_dir(&digest);
            std::fs::rename(&dir, &doomed).map_err(io_at(&dir))?;
            remove(&doomed)?;
            removed.push(digest);
        }
        Ok(removed)
    }

    fn image_dir(&self, digest: &Digest) -> PathBuf {
        self.config.root.join("images").join(digest.hex())
    }

    async fn pull(&self, reference: &ImageRef) -> Result<Image, ImageError> {
        let image = reference.to_string();
        let (manifest_digest, manifest) = self.manifest(reference).await?;
        let config_desc = manifest.config.ok_or_else(|| ImageError::Invalid {
            image: image.clone(),
            problem: "the manifest has no config".into(),
        })?;
        let layers = manifest.layers.unwrap_or_default();
        let weight: u64 = layers.iter().map(|l| l.size).sum();
        if weight > self.config.max_image_bytes {
            return Err(ImageError::Invalid {
                image,
                problem: format!(
                    "its layers weigh {weight} bytes, over the limit of {}",
                    self.config.max_image_bytes
                ),
            });
        }
        for layer in &layers {
            Compression::of(&layer.media_type).map_err(|source| ImageError::Unpack {
                image: image.clone(),
                source,
            })?;
        }
        let config = self.config_blob(reference, &config_desc).await?;

        let tmp = self.config.root.join("tmp").join(format!(
            "{}-{}",
            reference.digest.hex(),
            std::process::id()
        ));
        remove(&tmp)?;
        let rootfs = tmp.join(ROOTFS);
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        make_rootfs(&rootfs, self.config.owner_shift)?;
        let built = self
            .build(reference, &layers, &tmp, &rootfs, config, manifest_digest)
            .await;
        if built.is_err() {
            remove(&tmp)?;
        }
        let image = built?;
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(image)
    }

    async fn build(
        &self,
        reference: &ImageRef,
        layers: &[Descriptor],
        tmp: &Path,
        rootfs: &Path,
        config: ImageConfig,
        manifest_digest: Digest,
    ) -> Result<Image, ImageError> {
        let image = reference.to_string();
        let mut bytes = 0;
        for (i, layer) in layers.iter().enumerate() {
            let blob = tmp.join(format!("layer-{i}"));
            self.blob_to_file(reference, layer, &blob).await?;
            let (root, file, limit, shift) = (
                rootfs.to_owned(),
                blob.clone(),
                self.config.max_image_bytes.saturating_sub(bytes),
                self.config.owner_shift,
            );
            let compression =
                Compression::of(&layer.media_type).map_err(|source| ImageError::Unpack {
                    image: image.clone(),
                    source,
                })?;
            let unpacked = tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&file).map_err(|source| UnpackError::Io {
                    path: file.clone(),
                    source,
                })?;
                let mut u = Unpacker::new(&root, limit).with_shift(shift);
                u.apply(std::io::BufReader::new(f), compression)?;
                Ok::<_, UnpackError>(u.unpacked())
            })
            .await
            .map_err(|e| ImageError::Task {
                image: image.clone(),
                message: e.to_string(),
            })?
            .map_err(|source| ImageError::Unpack {
                image: image.clone(),
                source,
            })?;
            bytes += unpacked.bytes;
            remove(&blob)?;
        }
        let whole = Image {
            reference: image.clone(),
            manifest: manifest_digest.to_string(),
            config,
            bytes,
            rootfs: PathBuf::new(),
        };
        let meta = serde_json::to_vec_pretty(&whole).map_err(|e| ImageError::Task {
            image: image.clone(),
            message: e.to_string(),
        })?;
        let (tmp, dst) = (tmp.to_owned(), self.image_dir(&reference.digest));
        let images = self.config.root.join("images");
        tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
            let meta_path = tmp.join(META);
            grove_daemon::fsutil::write_atomic(&meta_path, &meta, 0o644).map_err(|e| {
                ImageError::Io {
                    path: meta_path.clone(),
                    source: std::io::Error::other(e),
                }
            })?;
            std::fs::rename(&tmp, &dst).map_err(io_at(&dst))?;
            std::fs::File::open(&images)
                .and_then(|d| d.sync_all())
                .map_err(io_at(&images))
        })
        .await
        .map_err(|e| ImageError::Task {
            image: image.clone(),
            message: e.to_string(),
        })??;
        Ok(Image {
            rootfs: self.image_dir(&reference.digest).join(ROOTFS),
            ..whole
        })
    }

    fn client(&self, image: &str) -> Result<&oci_client::Client, ImageError> {
        self.client.as_ref().map_err(|reason| ImageError::NoClient {
            image: image.to_owned(),
            reason: reason.clone(),
        })
    }

    /// The image manifest `reference` pins, through an index if it is one.
    async fn manifest(&self, reference: &ImageRef) -> Result<(Digest, Manifest), ImageError> {
        let manifest = self.manifest_at(reference).await?;
        let Some(entries) = manifest.manifests else {
            return Ok((reference.digest.clone(), manifest));
        };
        let entry = entries
            .iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| ImageError::Invalid {
                image: reference.to_string(),
                problem: "the index has no linux/amd64 image".into(),
            })?;
        let digest = Digest::parse(&entry.digest).ok_or_else(|| ImageError::Invalid {
            image: reference.to_string(),
            problem: format!("the index names a bad digest {:?}", entry.digest),
        })?;
        let inner = reference.at(digest.clone());
        let manifest = self.manifest_at(&inner).await?;
        if manifest.manifests.is_some() {
            return Err(ImageError::Invalid {
                image: reference.to_string(),
                problem: "an index inside an index".into(),
            });
        }
        Ok((digest, manifest))
    }

    async fn manifest_at(&self, reference: &ImageRef) -> Result<Manifest, ImageError> {
        let image = reference.to_string();
        let (bytes, _) = self
            .client(&image)?
            .pull_manifest_raw(&oci_reference(reference), &RegistryAuth::Anonymous, ACCEPT)
            .await
            .map_err(|source| {
                registry_error(&image, "the manifest", self.config.read_timeout, source)
            })?;
        if bytes.len() > MAX_MANIFEST || Digest::of(&bytes) != reference.digest {
            return Err(ImageError::Mismatch {
                image,
                what: "the manifest".into(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid {
            image,
            problem: format!("the manifest does not parse: {e}"),
        })
    }

    async fn config_blob(
        &self,
        reference: &ImageRef,
        desc: &Descriptor,
    ) -> Result<ImageConfig, ImageError> {
        let image = reference.to_string();
        if desc.size > MAX_CONFIG {
            return Err(ImageError::Invalid {
                image,
                problem: format!("its config weighs {} bytes", desc.size),
            });
        }
        let mut bytes = Vec::new();
        self.client(&image)?
            .pull_blob(&oci_reference(reference), &desc.oci(), &mut bytes)
            .await
            .map_err(|source| {
                registry_error(&image, "the config", self.config.read_timeout, source)
            })?;
        if bytes.len() as u64 != desc.size {
            return Err(ImageError::Mismatch {
                image,
                what: "the config's size".into(),
            });
        }
        let file: ConfigFile = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid {
            image: image.clone(),
            problem: format!("its config does not parse: {e}"),
        })?;
        if file.os.as_deref().is_some_and(|os| os != "linux")
            || file.architecture.as_deref().is_some_and(|a| a != "amd64")
        {
            return Err(ImageError::Invalid {
                image,
                problem: format!(
                    "it is built for {}/{}, not linux/amd64",
                    file.os.unwrap_or_default(),
                    file.architecture.unwrap_or_default()
                ),
            });
        }
        let c = file.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
        })
    }

    /// Streams a layer blob into `path`; oci-client checks its digest as it
    /// streams, and this its size.
    async fn blob_to_file(
        &self,
        reference: &ImageRef,
        desc: &Descriptor,
        path: &Path,
    ) -> Result<(), ImageError> {
        let image = reference.to_string();
        let client = self.client(&image)?;
        let file = tokio::fs::File::create(path).await.map_err(io_at(path))?;
        let mut limited = LimitedWriter {
            inner: tokio::io::BufWriter::new(file),
            left: desc.size,
            over: false,
        };
        let pulled = client
            .pull_blob(&oci_reference(reference), &desc.oci(), &mut limited)
            .await;
        if limited.over {
            return Err(ImageError::Mismatch {
                image,
                what: format!("layer {} (longer than its size)", desc.digest),
            });
        }
        pulled.map_err(|source| {
            registry_error(
                &image,
                &format!("layer {}", desc.digest),
                self.config.read_timeout,
                source,
            )
        })?;
        if limited.left != 0 {
            return Err(ImageError::Mismatch {
                image,
                what: format!("layer {} (shorter than its size)", desc.digest),
            });
        }
        Ok(())
    }
}

/// The magic number of btrfs in `statfs`.
const BTRFS_MAGIC: i64 = 0x9123_683e;

/// A root filesystem's directory, owned by `owner` (the image's root): a
/// btrfs subvolume where the cache is on btrfs (so each container's root
/// is a snapshot of it), else a directory.
fn make_rootfs(path: &Path, owner: u32) -> Result<(), ImageError> {
    make_rootfs_dir(path)?;
    std::os::unix::fs::chown(path, Some(owner), Some(owner)).map_err(io_at(path))
}

fn make_rootfs_dir(path: &Path) -> Result<(), ImageError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let on_btrfs = nix::sys::statfs::statfs(parent)
        .map_err(|e| ImageError::Io {
            path: parent.to_owned(),
            source: std::io::Error::from(e),
        })?
        .filesystem_type()
        .0 as i64
        == BTRFS_MAGIC;
    if !on_btrfs {
        return std::fs::create_dir(path).map_err(io_at(path));
    }
    subvolume("create", path)
}

/// `btrfs subvolume <op> <path>`.
fn subvolume(op: &str, path: &Path) -> Result<(), ImageError> {
    let out = std::process::Command::new("btrfs")
        .args(["subvolume", op])
        .arg(path)
        .output()
        .map_err(io_at(path))?;
    if !out.status.success() {
        return Err(ImageError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "btrfs subvolume {op}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    Ok(())
}

/// Deletes the subvolumes at or below `path` (a root filesystem made by
/// [`make_rootfs`]), so the tree can then be removed as files.
fn delete_subvolumes(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::MetadataExt;
    const SUBVOLUME_ROOT_INO: u64 = 256;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.ino() != SUBVOLUME_ROOT_INO {
        for entry in std::fs::read_dir(path).map_err(io_at(path))? {
            delete_subvolumes(&entry.map_err(io_at(path))?.path())?;
        }
        return Ok(());
    }
    subvolume("delete", path)
}

/// Removes `path`, a file or a directory tree (subvolumes included);
/// nothing there is fine.
fn remove(path: &Path) -> Result<(), ImageError> {
    delete_subvolumes(path)?;
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_at(path))
}

const ACCEPT: &[&str] = &[
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

fn oci_reference(r: &ImageRef) -> oci_client::Reference {
    oci_client::Reference::with_digest(
        r.registry.clone(),
        r.repository.clone(),
        r.digest.to_string(),
    )
}

/// A registry's failure in Grove's words: a digest that does not match is
/// a lie, a transfer stalled for `after` a time-out, anything else the
/// registry's.
fn registry_error(
    image: &str,
    what: &str,
    after: Duration,
    source: OciDistributionError,
) -> ImageError {
    match &source {
        OciDistributionError::DigestError(_) => ImageError::Mismatch {
            image: image.to_owned(),
            what: what.to_owned(),
        },
        OciDistributionError::RequestError(e) if e.is_timeout() => ImageError::Timeout {
            image: image.to_owned(),
            what: what.to_owned(),
            after,
        },
        _ => ImageError::Registry {
            image: image.to_owned(),
            source,
        },
    }
}

/// A manifest or an index, as much of it as Grove reads.
#[derive(Debug, Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

impl Descriptor {
    fn oci(&self) -> OciDescriptor {
        OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            ..Default::default()
        }
    }
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<PlatformEntry>,
}

#[derive(Debug, Deserialize)]
struct PlatformEntry {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    architecture: Option<String>,
    os: Option<String>,
    config: Option<RunConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

/// Passes bytes on until `left` runs out; then marks `over` and fails.
struct LimitedWriter<W> {
    inner: W,
    left: u64,
    over: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LimitedWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the blob is longer than its descriptor says",
            )));
        }
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.left -= *n as u64;
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
