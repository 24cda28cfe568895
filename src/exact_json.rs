//! JSON whose f64 values read back bit for bit: state that a resume restores (metric rows, step sizes,
//! AutoAttack progress) must equal what an uninterrupted run holds.
//!
//! serde_json prints floats exactly (shortest round-trip form) but, without its `float_roundtrip` feature
//! (which polars' own use of serde_json would make us rebuild polars for), parses long decimals only to
//! within an ulp. Here every float is written as its IEEE bit pattern (an integer, which parses exactly),
//! wrapped as `{"__f64_bits": N}`; plain JSON without wrappers reads as before.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::error::Result;

const MARK: &str = "__f64_bits";

fn encode(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) => {
                let mut m = Map::new();
                m.insert(MARK.into(), Value::from(f.to_bits()));
                Value::Object(m)
            }
            None => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(encode).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, encode(v))).collect()),
        other => other,
    }
}

fn decode(v: Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.get(MARK).is_some_and(Value::is_u64) => {
            let bits = m.get(MARK).and_then(Value::as_u64).unwrap_or(0);
            // Non-finite values have no JSON number; serde_json writes them as null too.
            Number::from_f64(f64::from_bits(bits)).map_or(Value::Null, Value::Number)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(decode).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, decode(v))).collect()),
        other => other,
    }
}

pub fn to_string<T: Serialize>(t: &T) -> Result<String> {
    Ok(serde_json::to_string(&encode(serde_json::to_value(t)?))?)
}

pub fn from_str<T: DeserializeOwned>(s: &str) -> Result<T> {
    Ok(serde_json::from_value(decode(serde_json::from_str(s)?))?)
}

/// For `#[serde(deserialize_with)]` on an f64 field that may be NaN: JSON has no NaN, serde_json writes it
/// as null, and null reads back as NaN here.
pub fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_bit_for_bit_and_plain_json_still_reads() {
        // Values whose 17-digit decimal forms are where a best-effort parser can miss by an ulp.
        let v: Vec<f64> = (1..2000)
            .map(|i| (i as f64).sqrt() * 1.000_000_000_000_1e-4 / 3.0)
            .collect();
        let back: Vec<f64> = from_str(&to_string(&v).unwrap()).unwrap();
        assert!(v.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()));
        let nested: (String, Vec<(u32, f64)>) =
            from_str(&to_string(&("a".to_string(), vec![(3u32, 0.1f64)])).unwrap()).unwrap();
        assert_eq!(nested, ("a".to_string(), vec![(3, 0.1)]));
        let plain: Vec<f64> = from_str("[0.5, 2]").unwrap();
        assert_eq!(plain, vec![0.5, 2.0]);
        let nan: Option<f64> = from_str(&to_string(&f64::NAN).unwrap()).unwrap();
        assert_eq!(nan, None);
    }
}
