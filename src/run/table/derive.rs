//! A row type's table schema and cells derived from its serde derives, so that no row type keeps a hand
//! list of its columns: the cells come from `Serialize` (each field in declaration order), the column types
//! from `Deserialize` traced once without data (which also gives an empty table its typed columns).

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::ser::{self, Impossible, Serialize, SerializeStruct};

use super::{Cell, Kind};

#[derive(Debug)]
pub struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

impl de::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(format!(
        "a table row field must be a string, number, bool or an option of one; got {what}"
    )))
}

/// The columns of row type `R`: its fields in order, with their kinds.
pub fn schema<R: DeserializeOwned>() -> Result<Vec<(&'static str, Kind)>, Unsupported> {
    let mut cols = Vec::new();
    R::deserialize(RowTracer { cols: &mut cols })?;
    Ok(cols)
}

/// One row's cells, in column order.
pub fn cells<R: Serialize>(row: &R) -> Result<Vec<Cell>, Unsupported> {
    row.serialize(RowSer)
}

struct RowTracer<'a> {
    cols: &'a mut Vec<(&'static str, Kind)>,
}

impl<'de> de::Deserializer<'de> for RowTracer<'_> {
    type Error = Unsupported;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        visitor.visit_map(Fields {
            fields,
            at: 0,
            cols: self.cols,
        })
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        unsupported("a row that is not a struct")
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

struct Fields<'a> {
    fields: &'static [&'static str],
    at: usize,
    cols: &'a mut Vec<(&'static str, Kind)>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Unsupported;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Unsupported> {
        match self.fields.get(self.at) {
            Some(name) => seed
                .deserialize(de::value::BorrowedStrDeserializer::new(name))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unsupported> {
        let Some(&name) = self.fields.get(self.at) else {
            return unsupported("a value without a field name");
        };
        self.at += 1;
        let mut kind = None;
        let v = seed.deserialize(FieldTracer { kind: &mut kind })?;
        match kind {
            Some(k) => {
                self.cols.push((name, k));
                Ok(v)
            }
            None => unsupported(&format!("field {name}")),
        }
    }
}

struct FieldTracer<'a> {
    kind: &'a mut Option<Kind>,
}

impl<'de> de::Deserializer<'de> for FieldTracer<'_> {
    type Error = Unsupported;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Unsupported> {
        unsupported("a value whose type serde does not name")
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        *self.kind = Some(Kind::Str);
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_str(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        *self.kind = Some(Kind::F64);
        v.visit_f64(0.0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_f64(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        *self.kind = Some(Kind::U64);
        v.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        self.deserialize_u64(v)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        *self.kind = Some(Kind::Bool);
        v.visit_bool(false)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unsupported> {
        v.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u128 char bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct RowSer;

impl ser::Serializer for RowSer {
    type Ok = Vec<Cell>;
    type Error = Unsupported;
    type SerializeSeq = Impossible<Vec<Cell>, Unsupported>;
    type SerializeTuple = Impossible<Vec<Cell>, Unsupported>;
    type SerializeTupleStruct = Impossible<Vec<Cell>, Unsupported>;
    type SerializeTupleVariant = Impossible<Vec<Cell>, Unsupported>;
    type SerializeMap = Impossible<Vec<Cell>, Unsupported>;
    type SerializeStruct = RowFields;
    type SerializeStructVariant = Impossible<Vec<Cell>, Unsupported>;

    fn serialize_struct(self, _: &'static str, len: usize) -> Result<RowFields, Unsupported> {
        Ok(RowFields(Vec::with_capacity(len)))
    }

    fn serialize_bool(self, _: bool) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a bool row")
    }
    fn serialize_i8(self, _: i8) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_i16(self, _: i16) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_i32(self, _: i32) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_i64(self, _: i64) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_u8(self, _: u8) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_u16(self, _: u16) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_u32(self, _: u32) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_u64(self, _: u64) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_f32(self, _: f32) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_f64(self, _: f64) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a number row")
    }
    fn serialize_char(self, _: char) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a char row")
    }
    fn serialize_str(self, _: &str) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a string row")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a bytes row")
    }
    fn serialize_none(self) -> Result<Vec<Cell>, Unsupported> {
        unsupported("an empty row")
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Vec<Cell>, Unsupported> {
        unsupported("an optional row")
    }
    fn serialize_unit(self) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a unit row")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a unit row")
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<Vec<Cell>, Unsupported> {
        unsupported("an enum row")
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, _: &T) -> Result<Vec<Cell>, Unsupported> {
        unsupported("a newtype row")
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Vec<Cell>, Unsupported> {
        unsupported("an enum row")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("a list row")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a tuple row")
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a tuple row")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("an enum row")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("a map row")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("an enum row")
    }
}

struct RowFields(Vec<Cell>);

impl SerializeStruct for RowFields {
    type Ok = Vec<Cell>;
    type Error = Unsupported;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<(), Unsupported> {
        let cell = value
            .serialize(CellSer)
            .map_err(|e| Unsupported(format!("field {key}: {e}")))?;
        self.0.push(cell);
        Ok(())
    }

    fn end(self) -> Result<Vec<Cell>, Unsupported> {
        Ok(self.0)
    }
}

/// One field's value → its cell. `None` is a null of the column's kind, which `Cell::Null` leaves to the
/// schema.
struct CellSer;

impl ser::Serializer for CellSer {
    type Ok = Cell;
    type Error = Unsupported;
    type SerializeSeq = Impossible<Cell, Unsupported>;
    type SerializeTuple = Impossible<Cell, Unsupported>;
    type SerializeTupleStruct = Impossible<Cell, Unsupported>;
    type SerializeTupleVariant = Impossible<Cell, Unsupported>;
    type SerializeMap = Impossible<Cell, Unsupported>;
    type SerializeStruct = Impossible<Cell, Unsupported>;
    type SerializeStructVariant = Impossible<Cell, Unsupported>;

    fn serialize_bool(self, v: bool) -> Result<Cell, Unsupported> {
        Ok(Cell::Bool(Some(v)))
    }
    fn serialize_i8(self, v: i8) -> Result<Cell, Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Cell, Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Cell, Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Cell, Unsupported> {
        u64::try_from(v)
            .map(|u| Cell::U64(Some(u)))
            .map_err(|_| Unsupported(format!("negative count {v}")))
    }
    fn serialize_u8(self, v: u8) -> Result<Cell, Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Cell, Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Cell, Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Cell, Unsupported> {
        Ok(Cell::U64(Some(v)))
    }
    fn serialize_f32(self, v: f32) -> Result<Cell, Unsupported> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Cell, Unsupported> {
        Ok(Cell::F64(v))
    }
    fn serialize_char(self, v: char) -> Result<Cell, Unsupported> {
        Ok(Cell::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Cell, Unsupported> {
        Ok(Cell::Str(v.to_string()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Cell, Unsupported> {
        unsupported("bytes")
    }
    fn serialize_none(self) -> Result<Cell, Unsupported> {
        Ok(Cell::Null)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Cell, Unsupported> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Cell, Unsupported> {
        unsupported("a unit")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Cell, Unsupported> {
        unsupported("a unit")
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result<Cell, Unsupported> {
        Ok(Cell::Str(v.to_string()))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> Result<Cell, Unsupported> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Cell, Unsupported> {
        unsupported("an enum with data")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("a list")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a tuple")
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a tuple")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("an enum with data")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("a map")
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Unsupported> {
        unsupported("a nested struct")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("an enum with data")
    }
}
