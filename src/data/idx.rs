//! IDX files (MNIST, Fashion-MNIST), gzipped or raw: parsing with errors that name the file and the fault.

use std::io::Read;
use std::path::Path;

use crate::error::{CovfError, Result};

/// A parsed IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a file whole, transparently un-gzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| CovfError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| CovfError::data(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes: magic `00 00 08 NDIM`, NDIM big-endian u32 sizes, then the payload.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(CovfError::data(
            path,
            format!("truncated IDX header: {} bytes, need at least 4", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(CovfError::data(
            path,
            format!(
                "not an IDX file: magic starts {:02x} {:02x}, expected 00 00",
                bytes[0], bytes[1]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(CovfError::data(
            path,
            format!(
                "unsupported IDX element type 0x{:02x}: only unsigned bytes (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(CovfError::data(path, format!("IDX rank {ndim} is not 1..=4")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(CovfError::data(
            path,
            format!("truncated IDX header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let mut dims = Vec::with_capacity(ndim);
    let mut total: usize = 1;
    for d in 0..ndim {
        let o = 4 + 4 * d;
        let v = u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize;
        total = total
            .checked_mul(v)
            .ok_or_else(|| CovfError::data(path, format!("IDX dimensions {dims:?}x{v} overflow")))?;
        dims.push(v);
    }
    let payload = bytes.len() - header;
    if payload < total {
        return Err(CovfError::data(
            path,
            format!("truncated: header declares dims {dims:?} = {total} bytes of data, file has {payload}"),
        ));
    }
    if payload > total {
        return Err(CovfError::data(
            path,
            format!(
                "{} trailing bytes after the {total} declared by dims {dims:?}",
                payload - total
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, path)
}

/// Serialises an IDX array (used by tests and tools that write small real-format files).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_faults() {
        let p = Path::new("x.idx");
        let bytes = encode_idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let a = parse_idx(&bytes, p).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data[11], 12);
        let short = &bytes[..bytes.len() - 1];
        let e = parse_idx(short, p).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("x.idx"), "{e}");
        let mut bad = bytes.clone();
        bad[2] = 0x0d;
        assert!(parse_idx(&bad, p).unwrap_err().to_string().contains("element type"));
        assert!(parse_idx(&bytes[..6], p).unwrap_err().to_string().contains("header"));
        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_idx(&huge, p).is_err());
    }
}
