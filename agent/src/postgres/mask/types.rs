//! What a result column's type lets masking do. Detectors read only values whose type is
//! text-like (text, varchar, bpchar, name, json, jsonb, xml, and arrays of them; the
//! server reports a domain as its base type). Every other type, and every value inside
//! one, passes through untouched. Column rules replace a value of any type with one that
//! is valid for it, or with NULL.
/// How the detectors read one column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextShape {
    /// The value is text (any text-like type in text format; text, varchar, bpchar,
    /// name, json and xml in binary format too).
    Text,
    /// jsonb in binary format: a version byte, then the text.
    JsonbBinary,
    /// A binary-format array of a text-like element type.
    ArrayBinary,
}

/// text, varchar, bpchar, name, json, xml.
const TEXT_OIDS: [u32; 6] = [25, 1043, 1042, 19, 114, 142];
const JSONB: u32 = 3802;
/// _text, _varchar, _bpchar, _name, _json, _xml, _jsonb.
const TEXT_ARRAY_OIDS: [u32; 7] = [1009, 1015, 1014, 1003, 199, 143, 3807];

/// Whether a value of `type_oid` is text-like, and how to read it in `format`.
pub fn text_shape(type_oid: u32, format: i16) -> Option<TextShape> {
    let binary = format == 1;
    if TEXT_OIDS.contains(&type_oid) {
        Some(TextShape::Text)
    } else if type_oid == JSONB {
        Some(if binary {
            TextShape::JsonbBinary
        } else {
            TextShape::Text
        })
    } else if TEXT_ARRAY_OIDS.contains(&type_oid) {
        Some(if binary {
            TextShape::ArrayBinary
        } else {
            TextShape::Text
        })
    } else {
        None
    }
}

/// What a rule-masked column's value becomes: for text types a fixed string (valid in
/// text and binary format alike; jsonb's binary format is a version byte and text), for
/// every other type NULL (valid for any type; a placeholder such as 0 would pass for
/// data).
pub fn column_replacement(type_oid: u32, format: i16) -> Option<Vec<u8>> {
    match type_oid {
        JSONB if format == 1 => Some(b"\x01\"****\"".to_vec()),
        114 | JSONB => Some(b"\"****\"".to_vec()),
        oid if TEXT_OIDS.contains(&oid) => Some(b"****".to_vec()),
        _ => None,
    }
}

/// A binary array's elements masked by `mask_text`, re-encoded; None when nothing
/// changed or the value is not a well-formed array of a text-like type (then it passes
/// as it is: never guess inside bytes that do not parse).
pub fn mask_binary_array(
    value: &[u8],
    mask_text: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let word = |at: usize| -> Option<i32> {
        let b = value.get(at..at + 4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ndim = usize::try_from(word(0)?).ok()?;
    let element = u32::from_be_bytes(word(8)?.to_be_bytes());
    let shape = text_shape(element, 1)?;
    if shape == TextShape::ArrayBinary || ndim > 6 {
        return None;
    }
    let mut at = 12 + 8 * ndim;
    let header = value.get(..at)?;
    let mut out = header.to_vec();
    let mut changed = false;
    while at < value.len() {
        let len = word(at)?;
        at += 4;
        if len == -1 {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let item = value.get(at..at + len)?;
        at += len;
        let masked = match shape {
            TextShape::JsonbBinary => item.split_first().and_then(|(version, text)| {
                mask_text(text).map(|m| [&[*version][..], &m].concat())
            }),
            _ => mask_text(item),
        };
        let item = match &masked {
            Some(m) => {
                changed = true;
                m.as_slice()
            }
            None => item,
        };
        out.extend_from_slice(&(item.len() as i32).to_be_bytes());
        out.extend_from_slice(item);
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in type that is not text-like, by OID (pg_type, PostgreSQL 15-18),
    /// is left alone in both formats.
    #[test]
    fn only_text_like_types_are_read() {
        let not_text = [
            16, 17, 18, 20, 21, 23, 24, 26, 27, 28, 29, 600, 601, 602, 603, 604, 628, 650, 700,
            701, 718, 774, 790, 829, 869, 1005, 1007, 1016, 1021, 1022, 1082, 1083, 1114, 1184,
            1186, 1266, 1560, 1562, 1700, 1790, 2202, 2203, 2204, 2205, 2206, 2249, 2950, 3220,
            3614, 3615, 3642, 3734, 3769, 3904, 3906, 3908, 3910, 3912, 3926, 4072, 4089, 4096,
            4451, 4532, 4533, 4534, 4535, 4536, 5038, 5069, 2950, 1000, 1001, 1028, 1231, 2951,
            3643, 3645,
        ];
        for oid in not_text {
            for format in [0, 1] {
                assert_eq!(text_shape(oid, format), None, "oid {oid} format {format}");
                assert_eq!(column_replacement(oid, format), None, "oid {oid}");
            }
        }
        for oid in [25, 1043, 1042, 19, 114, 142, 3802, 1009, 3807] {
            assert!(text_shape(oid, 0).is_some(), "{oid}");
        }
        assert_eq!(text_shape(3802, 1), Some(TextShape::JsonbBinary));
        assert_eq!(text_shape(1009, 1), Some(TextShape::ArrayBinary));
    }

    #[test]
    fn replacements_are_valid_for_their_types() {
        assert_eq!(column_replacement(25, 0).as_deref(), Some(&b"****"[..]));
        assert_eq!(column_replacement(23, 0), None, "int4 becomes NULL");
        assert_eq!(column_replacement(1009, 0), None, "text[] becomes NULL");
        assert_eq!(
            column_replacement(3802, 1).as_deref(),
            Some(&b"\x01\"****\""[..])
        );
    }

    fn text_array(items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [1i32, i32::from(items.iter().any(Option::is_none)), 25] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(&(items.len() as i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for item in items {
            match item {
                Some(b) => {
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn binary_arrays_are_masked_element_by_element() {
        let array = text_array(&[Some(b"keep"), None, Some(b"secret")]);
        let mut mask = |t: &[u8]| (t == b"secret").then(|| b"******".to_vec());
        let masked = mask_binary_array(&array, &mut mask).expect("changed");
        assert_eq!(masked, text_array(&[Some(b"keep"), None, Some(b"******")]));
        assert_eq!(
            mask_binary_array(&array[..10], &mut mask),
            None,
            "truncated"
        );
        let mut int_array = array.clone();
        int_array[8..12].copy_from_slice(&23i32.to_be_bytes());
        assert_eq!(mask_binary_array(&int_array, &mut mask), None, "int4[]");
    }
}
