//! The image-pull part of `bench compute`: a ~50 MB image from a local
//! registry into an empty cache, through provisiond's own image store
//! (`ImageStore::ensure`: fetch, check every digest, unpack), against
//! `skopeo copy` of the same reference to a directory (fetch and check,
//! no unpack), in the same run.
//!
//! The image is five layers of 10 MiB of pseudo-random bytes each (it
//! does not compress, as most of a real image's bytes do not). The
//! registry is Debian's `docker-registry` on loopback; both sides pull
//! over plain HTTP. The two alternate which goes first, each into a new
//! directory. The first round warms the registry's files and is not
//! counted. Limit: the store runs in this process, not behind provisiond's
//! API; the API's share is what the container part measures.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use provisiond::image::{ImageRef, ImageStore, StoreConfig};

use super::foundation::BenchError;
use super::stats::{ms, ratio, summary, verdict};
use crate::oci;

pub const PULL_RATIO_TARGET: f64 = 1.2;
const LAYERS: usize = 5;
const LAYER_BYTES: usize = 10 << 20;

fn failed(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Api {
        what: what.to_owned(),
        status: 0,
        body: e.to_string(),
    }
}

/// `len` bytes of a xorshift stream seeded by `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn pull_ours(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    host: &str,
    reference: &ImageRef,
) -> Result<Duration, BenchError> {
    let mut config = StoreConfig::new(dir);
    config.http_registries = vec![host.to_owned()];
    let store = ImageStore::open(config).map_err(|e| failed("the image store", e))?;
    let started = Instant::now();
    rt.block_on(store.ensure(reference))
        .map_err(|e| failed("ImageStore::ensure", e))?;
    Ok(started.elapsed())
}

fn pull_skopeo(reference: &str, dir: &Path) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            "--quiet",
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed("skopeo (ci/setup installs it)", e))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(failed(
            "skopeo copy",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(took)
}

/// A directory for the pulls, removed with everything in it when dropped.
struct WorkDir(std::path::PathBuf);

impl WorkDir {
    fn make() -> Result<WorkDir, BenchError> {
        let path = Path::new("/var/tmp").join(format!("grove-bench-pull-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(BenchError::Spawn)?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _gone = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the pulls and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Spawn)?;
    let registry = oci::OciRegistry::start(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .map_err(|e| failed("the registry", e))?;
    let layers: Vec<Vec<u8>> = (0..LAYERS)
        .map(|i| {
            let data = noise(LAYER_BYTES, i as u64 + 1);
            oci::layer(&[(&format!("data/{i}.bin"), &data)])
        })
        .collect();
    let bytes: usize = layers.iter().map(Vec::len).sum();
    let pushed = rt
        .block_on(oci::push(
            &registry.host(),
            "bench/big",
            &layers,
            "amd64",
            serde_json::json!({}),
        ))
        .map_err(|e| failed("push", e))?;
    let reference = ImageRef::parse(&pushed.reference).map_err(|e| failed("the reference", e))?;
    let work = WorkDir::make()?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let ours_dir = work.path().join(format!("store-{run}"));
        let skopeo_dir = work.path().join(format!("skopeo-{run}"));
        let (a, b) = if run % 2 == 0 {
            let a = pull_ours(&rt, &ours_dir, &registry.host(), &reference)?;
            (a, pull_skopeo(&pushed.reference, &skopeo_dir)?)
        } else {
            let b = pull_skopeo(&pushed.reference, &skopeo_dir)?;
            (pull_ours(&rt, &ours_dir, &registry.host(), &reference)?, b)
        };
        for dir in [&ours_dir, &skopeo_dir] {
            std::fs::remove_dir_all(dir).map_err(BenchError::Spawn)?;
        }
        if run > 0 {
            ours.push(a);
            floor.push(b);
        }
    }
    let (ours_median, ours_p90) = summary(&mut ours);
    let (floor_median, floor_p90) = summary(&mut floor);
    let r = ratio(ours_median, floor_median);
    eprintln!(
        "compute: image pull, {:.1} MB in {LAYERS} layers, empty cache ({} runs)",
        bytes as f64 / 1e6,
        ours.len()
    );
    eprintln!(
        "  store median {:.1} ms  p90 {:.1} ms  (fetch, check, unpack)",
        ms(ours_median),
        ms(ours_p90)
    );
    eprintln!(
        "  floor median {:.1} ms  p90 {:.1} ms  (skopeo copy to a directory)",
        ms(floor_median),
        ms(floor_p90)
    );
    eprintln!(
        "  ratio {r:.2} (target <= {PULL_RATIO_TARGET}: {})",
        verdict(r <= PULL_RATIO_TARGET)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_the_length_asked_and_differs_by_seed() {
        let (a, b) = (noise(1001, 1), noise(1001, 2));
        assert_eq!(a.len(), 1001);
        assert_ne!(a, b);
        assert_eq!(a, noise(1001, 1));
    }
}
