//! Raw UID2s, opt-out times and opt-out records, and the parsers of the forms they arrive in: the
//! webhook's parameters and JSON batches, and the lines of CSV and JSON Lines files. Depends on std,
//! base64-simd, serde, serde_json and thiserror.

use std::fmt;

/// A raw UID2 in binary: 32 bytes (v2) or 33 bytes (v3/v4). `Debug` never shows the bytes (raw UID2s
/// are not logged).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawUid2 {
    pub(super) bytes: [u8; 33],
    pub(super) len: u8,
}

impl fmt::Debug for RawUid2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawUid2(<{} bytes>)", self.len)
    }
}

/// Characters of a raw UID2 in standard base64 (32 bytes with one `=`, or 33 bytes without padding).
pub const RAW_UID2_TEXT_LEN: usize = 44;

impl RawUid2 {
    /// 32 or 33 bytes; anything else is not a raw UID2.
    pub fn from_bytes(bytes: &[u8]) -> Option<RawUid2> {
        if !(32..=33).contains(&bytes.len()) {
            return None;
        }
        let mut out = [0u8; 33];
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(RawUid2 {
            bytes: out,
            len: bytes.len() as u8,
        })
    }

    /// Standard base64 with padding, exactly 44 characters, of 32 or 33 bytes — the form the UID2
    /// service sends and the SDKs return. Allocation-free (it runs once per decrypted token).
    pub fn parse(text: &str) -> Option<RawUid2> {
        Self::parse_detailed(text).ok()
    }

    /// As [`RawUid2::parse`], saying what is wrong.
    pub fn parse_detailed(text: &str) -> Result<RawUid2, RawUid2Error> {
        if text.len() != RAW_UID2_TEXT_LEN {
            return Err(RawUid2Error::Length(text.len()));
        }
        let mut buf = [0u8; 33];
        let decoded = base64_simd::STANDARD
            .decode(text.as_bytes(), base64_simd::Out::from_slice(&mut buf))
            .map_err(|_| RawUid2Error::NotBase64)?;
        let len = decoded.len();
        if !(32..=33).contains(&len) {
            return Err(RawUid2Error::Length(text.len()));
        }
        Ok(RawUid2 {
            bytes: buf,
            len: len as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The canonical text: standard base64 with padding.
    pub fn to_base64(&self) -> String {
        base64_simd::STANDARD.encode_to_string(self.as_bytes())
    }
}

/// Why a text is not a raw UID2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RawUid2Error {
    #[error(
        "is {0} characters long; a raw UID2 is 44 characters of standard base64 (32 or 33 bytes)"
    )]
    Length(usize),
    #[error("is not standard base64 (A–Z a–z 0–9 + / with = padding) of 32 or 33 bytes")]
    NotBase64,
}

/// Earliest opt-out time accepted: 2020-01-01T00:00:00Z (UID2 launched in 2021).
pub const MIN_OPTOUT_SECS: i64 = 1_577_836_800;
/// Opt-out times must be before 2100-01-01T00:00:00Z.
pub const MAX_OPTOUT_SECS: i64 = 4_102_444_800;

/// Why an opt-out time is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptOutTimeError {
    #[error("is not a whole number of Unix seconds")]
    NotANumber,
    #[error("{0} looks like milliseconds; opt-out times are Unix seconds")]
    Milliseconds(i64),
    #[error("{0} is before 2020-01-01 ({MIN_OPTOUT_SECS}); opt-out times are Unix seconds")]
    TooEarly(i64),
    #[error("{0} is after 2100-01-01 ({MAX_OPTOUT_SECS})")]
    TooLate(i64),
    #[error("{secs} is more than a day after the receiver's clock ({now_secs})")]
    InTheFuture { secs: i64, now_secs: i64 },
}

/// Checks an opt-out time in Unix seconds and narrows it to what the set stores.
pub fn check_optout_secs(secs: i64) -> Result<u32, OptOutTimeError> {
    if secs >= 100_000_000_000 {
        return Err(OptOutTimeError::Milliseconds(secs));
    }
    if secs < MIN_OPTOUT_SECS {
        return Err(OptOutTimeError::TooEarly(secs));
    }
    if secs >= MAX_OPTOUT_SECS {
        return Err(OptOutTimeError::TooLate(secs));
    }
    u32::try_from(secs).map_err(|_| OptOutTimeError::TooLate(secs))
}

/// Parses decimal Unix seconds (ASCII digits only) and checks them.
pub fn parse_optout_secs(text: &str) -> Result<u32, OptOutTimeError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OptOutTimeError::NotANumber);
    }
    let secs: i64 = text.parse().map_err(|_| OptOutTimeError::NotANumber)?;
    check_optout_secs(secs)
}

/// One opt-out: this raw UID2 opted out at `secs` (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptOutRecord {
    pub raw_uid2: RawUid2,
    pub secs: u32,
}

/// Why one opt-out record (a webhook call, a batch item, a file line, a topic record) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptOutRecordError {
    #[error("the raw UID2 {0}")]
    RawUid2(#[from] RawUid2Error),
    #[error("the opt-out time {0}")]
    Time(#[from] OptOutTimeError),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("{0}")]
    Shape(String),
}

/// Builds a record from the webhook's text fields (`user`, `optouttime`).
pub fn parse_record(raw_uid2: &str, secs: &str) -> Result<OptOutRecord, OptOutRecordError> {
    let raw_uid2 = RawUid2::parse_detailed(raw_uid2.trim())?;
    let secs = parse_optout_secs(secs)?;
    Ok(OptOutRecord { raw_uid2, secs })
}

/// A JSON opt-out object: `{"user":…,"optouttime":…}` (the webhook's names) or
/// `{"raw_uid2":…,"unix_seconds":…}`; the time as a number or a string of digits.
#[derive(serde::Deserialize)]
struct JsonRecord {
    #[serde(alias = "raw_uid2")]
    user: Option<String>,
    #[serde(alias = "unix_seconds")]
    optouttime: Option<serde_json::Value>,
}

impl JsonRecord {
    fn into_record(self) -> Result<OptOutRecord, OptOutRecordError> {
        let user = self.user.ok_or(OptOutRecordError::Missing("user"))?;
        let raw_uid2 = RawUid2::parse_detailed(&user)?;
        let secs = match self.optouttime {
            None => return Err(OptOutRecordError::Missing("optouttime")),
            Some(serde_json::Value::Number(n)) => {
                check_optout_secs(n.as_i64().ok_or(OptOutTimeError::NotANumber)?)?
            }
            Some(serde_json::Value::String(s)) => parse_optout_secs(&s)?,
            Some(_) => return Err(OptOutTimeError::NotANumber.into()),
        };
        Ok(OptOutRecord { raw_uid2, secs })
    }
}

/// Parses a webhook batch: a JSON array of opt-out objects. Every item is checked before any is used,
/// so a batch is taken whole or not at all; the error names the item (0-based).
pub fn parse_json_batch(body: &[u8]) -> Result<Vec<OptOutRecord>, BatchError> {
    let items: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| BatchError::NotAnArray(e.to_string()))?;
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    if items.len() > MAX_BATCH {
        return Err(BatchError::TooLarge(items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            serde_json::from_value::<JsonRecord>(item)
                .map_err(|e| OptOutRecordError::Shape(format!("is not an opt-out object: {e}")))
                .and_then(JsonRecord::into_record)
                .map_err(|error| BatchError::Item { index, error })
        })
        .collect()
}

/// Most records one webhook batch may carry.
pub const MAX_BATCH: usize = 10_000;

/// Why a webhook batch is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the body is not a JSON array of {{\"user\":…,\"optouttime\":…}} objects ({0})")]
    NotAnArray(String),
    #[error("the batch is empty")]
    Empty,
    #[error("the batch has {0} items; at most {MAX_BATCH} are taken per call")]
    TooLarge(usize),
    #[error("item {index}: {error}")]
    Item {
        index: usize,
        error: OptOutRecordError,
    },
}

/// An opt-out file's line format, decided by its first non-blank line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// `raw_uid2,unix_seconds`, an optional header line first.
    Csv,
    /// One JSON object a line.
    JsonLines,
}

impl LineFormat {
    /// JSON Lines when the line starts with `{`, else CSV.
    pub fn detect(first_line: &str) -> LineFormat {
        if first_line.trim_start().starts_with('{') {
            LineFormat::JsonLines
        } else {
            LineFormat::Csv
        }
    }
}

/// Parses one line of an opt-out file. `Ok(None)` for a blank line, and for a CSV header when
/// `first` (the first non-blank line) holds column names rather than a record.
pub fn parse_line(
    format: LineFormat,
    line: &str,
    first: bool,
) -> Result<Option<OptOutRecord>, OptOutRecordError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    match format {
        LineFormat::JsonLines => serde_json::from_str::<JsonRecord>(line)
            .map_err(|e| {
                OptOutRecordError::Shape(format!(
                    "is not a JSON object with `user` and `optouttime`: {e}"
                ))
            })?
            .into_record()
            .map(Some),
        LineFormat::Csv => {
            let mut fields = line.split(',');
            let (Some(uid), Some(secs), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(OptOutRecordError::Shape(
                    "is not two comma-separated fields `raw_uid2,unix_seconds`".to_string(),
                ));
            };
            let is_name = |f: &str| {
                let f = f.trim().trim_matches('"');
                // Column names: a word that is neither a raw UID2 (44 characters) nor a number.
                !f.is_empty()
                    && f.len() < RAW_UID2_TEXT_LEN
                    && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !f.bytes().all(|b| b.is_ascii_digit())
            };
            if first && is_name(uid) && is_name(secs) {
                return Ok(None);
            }
            parse_record(uid.trim().trim_matches('"'), secs.trim().trim_matches('"')).map(Some)
        }
    }
}
