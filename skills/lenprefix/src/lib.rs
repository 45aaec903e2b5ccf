//! Length-prefixed byte fields: each field is a u32 little-endian length
//! followed by that many bytes. The kv skills encode their state with it.

/// Appends one field to `out`. Fields longer than `u32::MAX` bytes cannot be
/// encoded; callers bound their sizes far below that.
pub fn put(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&field[..len as usize]);
}

/// Reads fields back in order.
pub struct Reader<'a> {
    rest: &'a [u8],
}

/// The bytes end inside a field or its length.
#[derive(Debug, PartialEq, Eq)]
pub struct Truncated;

impl<'a> Reader<'a> {
    /// Reads fields from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Whether every field has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next field.
    pub fn field(&mut self) -> Result<&'a [u8], Truncated> {
        let (len, rest) = self.rest.split_first_chunk::<4>().ok_or(Truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(Truncated);
        }
        let (field, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_truncation_is_detected() {
        let mut out = Vec::new();
        put(&mut out, b"key");
        put(&mut out, b"");
        let mut reader = Reader::new(&out);
        assert_eq!(reader.field(), Ok(&b"key"[..]));
        assert_eq!(reader.field(), Ok(&b""[..]));
        assert!(reader.is_empty());
        assert_eq!(Reader::new(&out[..5]).field(), Err(Truncated));
    }
}
