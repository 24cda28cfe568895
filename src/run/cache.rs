//! Content-addressed cache of analysis results: a unit's key hashes the checkpoint files it reads and
//! its parameters, so a rerun is near-free and a changed checkpoint or parameter recomputes. Entries are
//! small JSON files written atomically; an unreadable entry counts as missing.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::atomic_write;
use crate::error::{CovfError, Result};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits: not cryptographic, only a fingerprint of files we wrote ourselves.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_OFFSET)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Fingerprint of a file's bytes.
pub fn file_hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| CovfError::io(path, e))?;
    let mut h = Fnv::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| CovfError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.hex())
}

/// The key of a unit of work: its parts (content hashes, parameters) in order.
pub fn key(parts: &[&str]) -> String {
    let mut h = Fnv::default();
    for p in parts {
        h.update(p.as_bytes());
        // A separator so that ("ab", "c") and ("a", "bc") differ.
        h.update(&[0xff]);
    }
    h.hex()
}

/// One analysis's cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    force: bool,
}

impl Cache {
    pub fn new(dir: &Path, force: bool) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
            force,
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The stored value, unless `--force` or the entry is missing or unreadable.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        if self.force {
            return None;
        }
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Stores `value` and returns the stored text.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| CovfError::io(&self.dir, e))?;
        let text = serde_json::to_string(value)?;
        atomic_write(&self.path(key), text.as_bytes())?;
        Ok(text)
    }

    /// The cached value for `key`, or `compute()`'s, stored for next time. A fresh value is returned as read
    /// back from what was stored: serde_json's float parsing may differ from the computed f64 in the last
    /// bit, and a first run must write exactly the tables a cached rerun writes.
    pub fn get_or<T: Serialize + DeserializeOwned>(&self, key: &str, compute: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let v = compute()?;
        let text = self.put(key, &v)?;
        Ok(serde_json::from_str(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        // FNV-1a 64 of "" and "a" (Fowler, Noll, Vo reference values).
        assert_eq!(Fnv::default().hex(), "cbf29ce484222325");
        let mut h = Fnv::default();
        h.update(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
    }

    #[test]
    fn stores_reads_back_and_force_recomputes() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::new(&dir.path().join("c"), false);
        let mut calls = 0;
        let v: Vec<f64> = c
            .get_or("k", || {
                calls += 1;
                Ok(vec![1.5, 2.5])
            })
            .unwrap();
        let again: Vec<f64> = c
            .get_or("k", || {
                calls += 1;
                Ok(vec![0.0])
            })
            .unwrap();
        assert_eq!((v, again, calls), (vec![1.5, 2.5], vec![1.5, 2.5], 1));
        let forced = Cache::new(&dir.path().join("c"), true);
        let f: Vec<f64> = forced.get_or("k", || Ok(vec![9.0])).unwrap();
        assert_eq!(f, vec![9.0]);
        // A corrupt entry is recomputed, not trusted.
        std::fs::write(dir.path().join("c/k2.json"), b"{not json").unwrap();
        let r: Vec<f64> = c.get_or("k2", || Ok(vec![3.0])).unwrap();
        assert_eq!(r, vec![3.0]);
        // What a first call returns is what every later call reads back, bit for bit.
        let x = vec![2.4051778502762318f64, 0.1 + 0.2, 1.0 / 3.0];
        let first: Vec<f64> = c.get_or("k3", || Ok(x.clone())).unwrap();
        let later: Vec<f64> = c.get_or("k3", || Ok(vec![])).unwrap();
        assert_eq!(
            first.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            later.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
