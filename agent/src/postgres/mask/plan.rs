//! The masking plan of one result: what happens to each of its columns, made once from
//! its RowDescription (or a Describe) and applied to each of its rows.
use std::sync::Arc;

use tollgate_pgwire::backend;

use super::{MaskingConfig, Scope, types::TextShape};
use crate::postgres::encoding::ClientEncoding;

/// A result column: name and type.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    pub type_oid: u32,
    pub format: i16,
}

/// What happens to each column of the rows of one result.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    columns: Vec<ColumnMask>,
    /// The configuration the plan was made from (a reload does not change it midway).
    masking: Arc<MaskingConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ColumnMask {
    Keep,
    /// A masking rule matched: the value is replaced (None: NULL).
    Replace(Option<Vec<u8>>),
    /// A value of a text-like type, in a session whose results the detectors read.
    Detect(TextShape),
}

impl Plan {
    /// How to mask a result's rows, or None when nothing in it is masked. `detect`:
    /// the detectors read the session's results too.
    pub fn new(
        masking: &Arc<MaskingConfig>,
        detect: bool,
        scope: &Scope<'_>,
        tables: &[String],
        columns: &[ColumnInfo],
        formats: &[i16],
    ) -> Option<Self> {
        if !masking.enabled || (masking.rules.is_empty() && !detect) {
            return None;
        }
        let format_of = |i: usize| match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        let columns: Vec<ColumnMask> = columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let format = format_of(i);
                if masking.masks_column(scope, tables, &column.name) {
                    ColumnMask::Replace(super::types::column_replacement(column.type_oid, format))
                } else if let Some(shape) = super::types::text_shape(column.type_oid, format)
                    && detect
                    && !masking.detectors.is_empty()
                {
                    ColumnMask::Detect(shape)
                } else {
                    ColumnMask::Keep
                }
            })
            .collect();
        columns
            .iter()
            .any(|c| *c != ColumnMask::Keep)
            .then(|| Self {
                columns,
                masking: masking.clone(),
            })
    }

    /// The row masked, or None when nothing changed.
    pub fn apply(&self, values: &[Option<&[u8]>], encoding: &ClientEncoding) -> Option<Vec<u8>> {
        let mut changed = false;
        let mut masked: Vec<Option<Vec<u8>>> = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let out = match (self.columns.get(i), value) {
                (Some(ColumnMask::Replace(replacement)), Some(_)) => {
                    changed = true;
                    replacement.clone()
                }
                (Some(ColumnMask::Detect(shape)), Some(bytes)) => {
                    match self.masking.redact_value(bytes, *shape, encoding) {
                        Some(redacted) => {
                            changed = true;
                            Some(redacted)
                        }
                        None => Some(bytes.to_vec()),
                    }
                }
                (_, value) => value.map(<[u8]>::to_vec),
            };
            masked.push(out);
        }
        changed.then(|| {
            let refs: Vec<Option<&[u8]>> = masked.iter().map(|v| v.as_deref()).collect();
            backend::data_row(&refs)
        })
    }
}
