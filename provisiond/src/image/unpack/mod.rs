//! Applies an image's layers, in order, onto a root filesystem directory,
//! safely: nothing a layer says can reach outside the root.
//!
//! Every path is cleaned first: absolute paths and `..` are refused. Every
//! parent on the way to an entry is checked with `lstat`: a layer that goes
//! through a symbolic link (its own or a lower layer's) is refused, so a
//! link to `/etc` can never be written through. Existing entries are
//! removed, never opened, before one is written in their place; files are
//! created with `O_EXCL | O_NOFOLLOW`. Hard links must point inside the
//! root. Device nodes and FIFOs are kept out (counted, not made). OCI
//! whiteouts (`.wh.NAME`) remove what lower layers made, and opaque
//! directories (`.wh..wh..opq`) hide a lower layer's contents. The bytes of
//! all files together are limited. Limits: gzip and uncompressed layers
//! only; file times are not kept.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why a layer could not be applied. Nothing outside the root was touched.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} leaves the image's root ({why})")]
    Escape { path: PathBuf, why: &'static str },
    #[error("the image unpacks to more than its limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("layer media type {0:?} is not supported (gzip or uncompressed tar layers only)")]
    MediaType(String),
    #[error("the layer is not a readable tar archive: {0}")]
    Archive(#[source] io::Error),
    #[error("unpack {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How a layer's bytes are compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

impl Compression {
    /// The compression of a layer of `media_type`.
    pub fn of(media_type: &str) -> Result<Compression, UnpackError> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            other => Err(UnpackError::MediaType(other.to_owned())),
        }
    }
}

/// What applying layers made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of regular files written.
    pub bytes: u64,
    pub entries: u64,
    /// Device nodes and FIFOs left out.
    pub devices_skipped: u64,
}

/// Applies layers onto `root`, keeping the total of file bytes within
/// `limit`.
#[derive(Debug)]
pub struct Unpacker<'a> {
    root: &'a Path,
    limit: u64,
    /// Added to every owner: an image for containers whose root is mapped
    /// to an unprivileged range of the node's ids.
    shift: u32,
    done: Unpacked,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

impl<'a> Unpacker<'a> {
    /// An unpacker onto `root`, which must exist.
    pub fn new(root: &'a Path, limit: u64) -> Self {
        Unpacker {
            root,
            limit,
            shift: 0,
            done: Unpacked::default(),
        }
    }

    /// Owners are written `shift` higher (uid 0 in the layer is `shift` on
    /// disk).
    pub fn with_shift(mut self, shift: u32) -> Self {
        self.shift = shift;
        self
    }

    /// What was made so far.
    pub fn unpacked(&self) -> Unpacked {
        self.done
    }

    /// Applies one layer.
    pub fn apply(&mut self, layer: impl Read, compression: Compression) -> Result<(), UnpackError> {
        match compression {
            Compression::Gzip => self.apply_tar(flate2::read::GzDecoder::new(layer)),
            Compression::None => self.apply_tar(layer),
        }
    }

    fn apply_tar(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(layer);
        // Paths this layer made: an opaque directory hides only what lower
        // layers made.
        let mut made: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let mut entry = entry.map_err(UnpackError::Archive)?;
            let raw = entry.path().map_err(UnpackError::Archive)?.into_owned();
            let Some(rel) = clean(&raw)? else {
                continue;
            };
            self.done.entries += 1;
            let name = rel
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let parent = rel.parent().unwrap_or(Path::new("")).to_owned();
            if name == OPAQUE {
                let dir = self.ensure_dir_path(&parent)?;
                self.hide_lower(&dir, &parent, &made)?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                let dir = self.ensure_dir_path(&parent)?;
                remove_any(&dir.join(hidden))?;
                continue;
            }
            let dir = self.ensure_dir_path(&parent)?;
            let dst = dir.join(&name);
            let header = entry.header().clone();
            let mode = header.mode().map_err(UnpackError::Archive)? & 0o7777;
            let shift = u64::from(self.shift);
            let owner = (
                header.uid().map_err(UnpackError::Archive)? + shift,
                header.gid().map_err(UnpackError::Archive)? + shift,
            );
            use tar::EntryType as T;
            match header.entry_type() {
                T::Directory => {
                    let is_dir = fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir());
                    if !is_dir {
                        remove_any(&dst)?;
                        fs::create_dir(&dst).map_err(io_at(&dst))?;
                    }
                    set_owner_mode(&dst, owner, Some(mode))?;
                }
                T::Regular | T::Continuous => {
                    let size = header.size().map_err(UnpackError::Archive)?;
                    let left = self.limit.saturating_sub(self.done.bytes);
                    if size > left {
                        return Err(UnpackError::TooLarge { limit: self.limit });
                    }
                    remove_any(&dst)?;
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(nix::libc::O_NOFOLLOW)
                        .open(&dst)
                        .map_err(io_at(&dst))?;
                    let written =
                        io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut file)
                            .map_err(io_at(&dst))?;
                    if written > left {
                        return Err(UnpackError::TooLarge { limit: self.limit });
                    }
                    self.done.bytes += written;
                    set_owner_mode(&dst, owner, Some(mode))?;
                }
                T::Symlink => {
                    let target = link_target(&entry, &raw)?;
                    remove_any(&dst)?;
                    std::os::unix::fs::symlink(&target, &dst).map_err(io_at(&dst))?;
                    set_owner_mode(&dst, owner, None)?;
                }
                T::Link => {
                    let target = link_target(&entry, &raw)?;
                    let Some(target_rel) = clean(&target)? else {
                        return Err(UnpackError::Escape {
                            path: raw,
                            why: "a hard link to the root",
                        });
                    };
                    let source = self.existing_path(&target_rel)?;
                    remove_any(&dst)?;
                    fs::hard_link(&source, &dst).map_err(io_at(&dst))?;
                }
                T::Char | T::Block | T::Fifo => {
                    self.done.devices_skipped += 1;
                    continue;
                }
                // Extension headers are read by the tar crate itself; any
                // other kind of entry makes nothing.
                _ => continue,
            }
            made.insert(rel);
        }
        Ok(())
    }

    /// `root/rel` as a directory, made where missing, every component a
    /// real directory (never a symbolic link).
    fn ensure_dir_path(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        let mut at = self.root.to_path_buf();
        for part in rel.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::Escape {
                        path: rel.to_owned(),
                        why: "it goes through a symbolic link",
                    });
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // A lower layer's file where this layer wants a
                    // directory: the directory wins, as in overlayfs.
                    fs::remove_file(&at).map_err(io_at(&at))?;
                    fs::create_dir(&at).map_err(io_at(&at))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&at).map_err(io_at(&at))?;
                    let root = u64::from(self.shift);
                    set_owner_mode(&at, (root, root), Some(0o755))?;
                }
                Err(e) => return Err(io_at(&at)(e)),
            }
        }
        Ok(at)
    }

    /// `root/rel`, which must exist and not be reached through a symbolic
    /// link, and not be a directory.
    fn existing_path(&self, rel: &Path) -> Result<PathBuf, UnpackError> {
        let escape = |why| UnpackError::Escape {
            path: rel.to_owned(),
            why,
        };
        let mut at = self.root.to_path_buf();
        let parts: Vec<_> = rel.components().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let meta = fs::symlink_metadata(&at)
                .map_err(|_missing| escape("a hard link to something the layers did not make"))?;
            let last = i + 1 == parts.len();
            if !last && !meta.is_dir() {
                return Err(escape(
                    "a hard link through something that is not a directory",
                ));
            }
            if last && meta.is_dir() {
                return Err(escape("a hard link to a directory"));
            }
        }
        Ok(at)
    }

    /// Removes what lower layers made in `dir` (`rel` in the image).
    fn hide_lower(
        &self,
        dir: &Path,
        rel: &Path,
        made: &HashSet<PathBuf>,
    ) -> Result<(), UnpackError> {
        for child in fs::read_dir(dir).map_err(io_at(dir))? {
            let child = child.map_err(io_at(dir))?;
            let child_rel = rel.join(child.file_name());
            if !made.iter().any(|m| m.starts_with(&child_rel)) {
                remove_any(&child.path())?;
            }
        }
        Ok(())
    }
}

/// The target of link entry `raw`.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf, UnpackError> {
    Ok(entry
        .link_name()
        .map_err(UnpackError::Archive)?
        .ok_or(UnpackError::Escape {
            path: raw.to_owned(),
            why: "a link without a target",
        })?
        .into_owned())
}

/// `path` without `.`, refused when absolute or with `..`; `None` for the
/// root itself.
fn clean(path: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(UnpackError::Escape {
                    path: path.to_owned(),
                    why: "a path with ..",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape {
                    path: path.to_owned(),
                    why: "an absolute path",
                });
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Removes `path` whatever it is, without following a symbolic link;
/// nothing there is fine.
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_at(path)),
        Ok(_) => fs::remove_file(path).map_err(io_at(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Sets the owner (never following a link) and, for what is not a link,
/// the mode.
fn set_owner_mode(
    path: &Path,
    (uid, gid): (u64, u64),
    mode: Option<u32>,
) -> Result<(), UnpackError> {
    let id = |n: u64| u32::try_from(n).ok();
    std::os::unix::fs::lchown(path, id(uid), id(gid)).map_err(io_at(path))?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
