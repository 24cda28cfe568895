//! `--device cpu|cuda[:N]` to a candle device; a CPU-only build says so plainly.

use candle_core::Device;

use crate::error::{CovfError, Result};

pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.as_str() {
        "cuda" => 0,
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| CovfError::Device(format!("'{s}': expected cpu, cuda or cuda:N")))?,
            None => return Err(CovfError::Device(format!("'{s}': expected cpu, cuda or cuda:N"))),
        },
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| CovfError::Device(format!("cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Err(CovfError::Device(format!(
        "cuda:{ordinal} requested, but this covf build has no CUDA support; rebuild with `cargo build --release --features cuda` (see docs/gpu.md) or use --device cpu"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:0")
            .unwrap_err()
            .to_string()
            .contains("no CUDA support"));
    }
}
