//! CIFAR-10 and CIFAR-100 binary formats: fixed-size records of label byte(s) then 3x32x32 CHW pixels.

use std::path::Path;

use crate::error::{CovfError, Result};

pub const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// Parses one CIFAR binary file. `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine; covf uses fine).
pub fn parse_cifar(bytes: &[u8], label_bytes: usize, num_classes: usize, path: &Path) -> Result<(Vec<u8>, Vec<u32>)> {
    if !(1..=2).contains(&label_bytes) {
        return Err(CovfError::data(
            path,
            format!("{label_bytes} label bytes per record: CIFAR-10 has 1, CIFAR-100 2"),
        ));
    }
    let rec = label_bytes + CIFAR_PIXELS;
    if bytes.is_empty() {
        return Err(CovfError::data(path, "empty file: expected CIFAR records"));
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(CovfError::data(
            path,
            format!(
                "truncated or wrong format: {} bytes is not a multiple of the {rec}-byte record ({label_bytes} label byte(s) + {CIFAR_PIXELS} pixels); {} whole records and {} bytes left over",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() % rec
            ),
        ));
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * CIFAR_PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[label_bytes - 1] as usize;
        if label >= num_classes {
            return Err(CovfError::data(
                path,
                format!("record {i}: label {label} out of range for {num_classes} classes"),
            ));
        }
        labels.push(label as u32);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok((images, labels))
}

pub fn read_cifar(path: &Path, label_bytes: usize, num_classes: usize) -> Result<(Vec<u8>, Vec<u32>)> {
    let bytes = std::fs::read(path).map_err(|e| CovfError::io(path, e))?;
    parse_cifar(&bytes, label_bytes, num_classes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_faults() {
        let p = Path::new("data_batch_1.bin");
        let mut bytes = vec![];
        for label in [3u8, 9] {
            bytes.push(label);
            bytes.extend((0..CIFAR_PIXELS).map(|i| (i % 251) as u8));
        }
        let (img, lab) = parse_cifar(&bytes, 1, 10, p).unwrap();
        assert_eq!(lab, vec![3, 9]);
        assert_eq!(img.len(), 2 * CIFAR_PIXELS);
        assert_eq!(img[CIFAR_PIXELS + 5], 5);
        let e = parse_cifar(&bytes[..100], 1, 10, p).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin") && e.contains("truncated"), "{e}");
        bytes[0] = 10;
        assert!(parse_cifar(&bytes, 1, 10, p)
            .unwrap_err()
            .to_string()
            .contains("label 10"));
    }
}
