//! The files `replay`, `capture` and `gen` read and write (`../shared/ARCHITECTURE.md`, "Command line"):
//! JSON Lines, optionally gzip (`.gz`) or zstd (`.zst`) by file extension, `-` for the standard streams.
//! A line is a bare request (its exact bytes) or a capture record:
//!
//! ```text
//! {"ts":1767225600000,"topic":"bid-requests","partition":3,"offset":42,"key":"k",
//!  "headers":[["h","text"],["n",null],["bin",{"b64":"AAE="}]],"value":"<request text>"}
//! ```
//!
//! `value_b64` replaces `value` when the payload is not UTF-8 (protobuf), `key_b64` replaces `key` likewise.
//! Depends on serde, base64, flate2, zstd and the filesystem; no Kafka.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How a file is compressed, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn of(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Compression::Gzip,
            Some("zst") => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// `-` is the standard stream.
pub fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Opens an input file (or standard input), decompressing by extension.
///
/// # Errors
/// The file cannot be opened; the message names it.
pub fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    const BUF: usize = 1 << 20;
    let raw: Box<dyn Read + Send> = if is_stdio(path) {
        Box::new(io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("opening input file {}", path.display()))?,
        )
    };
    Ok(match Compression::of(path) {
        Compression::None => Box::new(BufReader::with_capacity(BUF, raw)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUF,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUF, raw)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BUF,
            zstd::stream::read::Decoder::new(raw)
                .with_context(|| format!("reading zstd input {}", path.display()))?,
        )),
    })
}

/// An output file that is complete once [`Output::finish`] returns: compressed streams get their trailer,
/// buffers are flushed. Dropping it without `finish` still flushes what it can (best effort), so lines
/// already written survive an error elsewhere.
pub struct Output {
    path: PathBuf,
    sink: Option<Sink>,
    pub lines: u64,
}

enum Sink {
    Plain(BufWriter<Box<dyn Write + Send>>),
    Gzip(flate2::write::GzEncoder<BufWriter<Box<dyn Write + Send>>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<Box<dyn Write + Send>>>),
}

impl Output {
    /// Creates (truncates) `path`, or standard output for `-`, compressing by extension.
    ///
    /// # Errors
    /// The file cannot be created; the message names it.
    pub fn create(path: &Path) -> anyhow::Result<Output> {
        let raw: Box<dyn Write + Send> = if is_stdio(path) {
            Box::new(io::stdout())
        } else {
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating output file {}", path.display()))?,
            )
        };
        let buffered = BufWriter::with_capacity(1 << 20, raw);
        let sink = match Compression::of(path) {
            Compression::None => Sink::Plain(buffered),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                buffered,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Sink::Zstd(
                zstd::stream::write::Encoder::new(buffered, 3)
                    .with_context(|| format!("starting zstd output {}", path.display()))?,
            ),
        };
        Ok(Output {
            path: path.to_path_buf(),
            sink: Some(sink),
            lines: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes bytes that end with a newline (one or more whole lines).
    ///
    /// # Errors
    /// The write fails (disk full, closed pipe); the message names the file.
    pub fn write_lines(&mut self, bytes: &[u8], lines: u64) -> anyhow::Result<()> {
        let writer: &mut dyn Write = match self.sink.as_mut() {
            Some(Sink::Plain(w)) => w,
            Some(Sink::Gzip(w)) => w,
            Some(Sink::Zstd(w)) => w,
            None => anyhow::bail!("{} was already finished", self.path.display()),
        };
        writer
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.lines += lines;
        Ok(())
    }

    /// Flushes everything and writes the compression trailer.
    ///
    /// # Errors
    /// The final writes fail; the message names the file.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        let path = self.path.clone();
        self.close()
            .with_context(|| format!("finishing {}", path.display()))?;
        Ok(self.lines)
    }

    fn close(&mut self) -> io::Result<()> {
        match self.sink.take() {
            None => Ok(()),
            Some(Sink::Plain(mut w)) => w.flush(),
            Some(Sink::Gzip(w)) => w.finish()?.flush(),
            Some(Sink::Zstd(w)) => w.finish()?.flush(),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // On an error path: keep every line written so far readable (trailer included).
        let _ = self.close();
    }
}

/// A record header value: text, null, or bytes that are not UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Text(String),
    Binary { b64: String },
}

impl HeaderValue {
    pub fn from_bytes(bytes: &[u8]) -> HeaderValue {
        match std::str::from_utf8(bytes) {
            Ok(text) => HeaderValue::Text(text.to_string()),
            Err(_) => HeaderValue::Binary {
                b64: B64.encode(bytes),
            },
        }
    }

    /// The bytes; `None` when a `b64` value is not base64.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match self {
            HeaderValue::Text(t) => Some(t.as_bytes().to_vec()),
            HeaderValue::Binary { b64 } => B64.decode(b64).ok(),
        }
    }
}

/// One header: `[name, value]`, value `null` when the record had a header without a value.
pub type HeaderPair = (String, Option<HeaderValue>);

/// A Kafka record as `capture` writes it and `replay` reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRecord {
    /// The record's timestamp, milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderPair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
}

/// Why a capture record cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not a capture record: {0}")]
    Json(String),
    #[error("the capture record has neither `value` nor `value_b64`")]
    NoValue,
    #[error("the capture record has both `value` and `value_b64`; keep one")]
    TwoValues,
    #[error("`{0}` is not standard base64")]
    BadBase64(&'static str),
}

impl CaptureRecord {
    /// Parses one line known to be a capture record.
    ///
    /// # Errors
    /// [`RecordError`] naming what is missing or wrong.
    pub fn parse(line: &[u8]) -> Result<CaptureRecord, RecordError> {
        let record: CaptureRecord =
            serde_json::from_slice(line).map_err(|e| RecordError::Json(e.to_string()))?;
        match (&record.value, &record.value_b64) {
            (None, None) => Err(RecordError::NoValue),
            (Some(_), Some(_)) => Err(RecordError::TwoValues),
            _ => Ok(record),
        }
    }

    /// The payload bytes.
    ///
    /// # Errors
    /// `value_b64` is not base64.
    pub fn value_bytes(&self) -> Result<Vec<u8>, RecordError> {
        match (&self.value, &self.value_b64) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(b64)) => B64
                .decode(b64)
                .map_err(|_| RecordError::BadBase64("value_b64")),
            (None, None) => Err(RecordError::NoValue),
        }
    }

    /// The key bytes, if the record had a key.
    ///
    /// # Errors
    /// `key_b64` is not base64.
    pub fn key_bytes(&self) -> Result<Option<Vec<u8>>, RecordError> {
        match (&self.key, &self.key_b64) {
            (Some(text), _) => Ok(Some(text.as_bytes().to_vec())),
            (None, Some(b64)) => B64
                .decode(b64)
                .map(Some)
                .map_err(|_| RecordError::BadBase64("key_b64")),
            (None, None) => Ok(None),
        }
    }

    pub fn set_value(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                self.value = Some(text.to_string());
                self.value_b64 = None;
            }
            Err(_) => {
                self.value = None;
                self.value_b64 = Some(B64.encode(bytes));
            }
        }
    }

    pub fn set_key(&mut self, key: Option<&[u8]>) {
        (self.key, self.key_b64) = match key {
            None => (None, None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_string()), None),
                Err(_) => (None, Some(B64.encode(bytes))),
            },
        };
    }

    pub fn push_header(&mut self, name: &str, value: Option<&[u8]>) {
        self.headers
            .push((name.to_string(), value.map(HeaderValue::from_bytes)));
    }

    /// Appends the record as one line (with its newline) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Serialising strings, numbers and vectors cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }
}

/// What a line of a replay input is.
#[derive(Debug)]
pub enum Line {
    /// A bare request: the line's bytes are the payload.
    Bare,
    /// A capture record, or what is wrong with one.
    Capture(Result<CaptureRecord, RecordError>),
}

/// Tells a capture record from a bare request, parsing a capture record once. A capture record is a JSON
/// object whose first member has one of the capture record's names, and which has a string `value`, a
/// `value_b64`, or all of `topic`, `partition` and `offset` (so a record that lost its value is reported
/// as such). Bid requests start with other names (`id`, `imp`, …); an event's numeric `value` does not
/// count.
pub fn classify(line: &[u8]) -> Line {
    // Most lines are bare requests, whose first member is `id` or another OpenRTB name: only a line whose
    // first member is a capture record's name is parsed, so telling them apart costs a few bytes.
    const NAMES: [&[u8]; 9] = [
        b"ts",
        b"topic",
        b"partition",
        b"offset",
        b"key",
        b"key_b64",
        b"headers",
        b"value",
        b"value_b64",
    ];
    let first_name = line
        .trim_ascii_start()
        .strip_prefix(b"{")
        .map(<[u8]>::trim_ascii_start)
        .and_then(|rest| rest.strip_prefix(b"\""))
        .and_then(|rest| rest.get(..memchr::memchr(b'"', rest)?));
    if !first_name.is_some_and(|name| NAMES.contains(&name)) {
        return Line::Bare;
    }
    let error = match CaptureRecord::parse(line) {
        Ok(record) => return Line::Capture(Ok(record)),
        Err(e) => e,
    };
    // Not a valid capture record: one if it looks like one (then the error says what is wrong), else an
    // event that happens to start with such a name.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        value: Option<serde_json::Value>,
        #[serde(default)]
        value_b64: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        topic: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        partition: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        offset: Option<serde::de::IgnoredAny>,
    }
    let looks_like_capture = serde_json::from_slice::<Probe>(line).is_ok_and(|p| {
        p.value.as_ref().is_some_and(serde_json::Value::is_string)
            || p.value_b64.is_some()
            || (p.topic.is_some() && p.partition.is_some() && p.offset.is_some())
    });
    if looks_like_capture {
        Line::Capture(Err(error))
    } else {
        Line::Bare
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether [`classify`] takes the line for a capture record (valid or not).
    fn is_capture_record(line: &[u8]) -> bool {
        matches!(classify(line), Line::Capture(_))
    }

    #[test]
    fn capture_records_round_trip_exact_bytes_keys_and_headers() {
        let mut r = CaptureRecord {
            ts: Some(1_767_225_600_000),
            topic: Some("t".into()),
            partition: Some(3),
            offset: Some(42),
            ..CaptureRecord::default()
        };
        let value = b"{\"id\":\"a\\u00e9\",\n \"x\":\"\xc3\xa9\"}";
        r.set_value(value);
        r.set_key(Some(b"\xff\x00k"));
        r.push_header("text", Some(b"v"));
        r.push_header("null", None);
        r.push_header("bin", Some(b"\x80\x81"));
        let mut line = Vec::new();
        r.write_line(&mut line);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(is_capture_record(&line));
        let back = CaptureRecord::parse(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.value_bytes().unwrap(), value);
        assert_eq!(back.key_bytes().unwrap().unwrap(), b"\xff\x00k");
        assert_eq!(back.headers[1].1, None);
        assert_eq!(
            back.headers[2].1.as_ref().unwrap().to_bytes().unwrap(),
            b"\x80\x81"
        );

        let mut binary = CaptureRecord::default();
        binary.set_value(b"\x0a\x03\xff\xfe");
        assert!(binary.value.is_none());
        assert_eq!(binary.value_bytes().unwrap(), b"\x0a\x03\xff\xfe");
    }

    #[test]
    fn bare_requests_are_not_capture_records_and_lost_values_are_reported() {
        assert!(!is_capture_record(br#"{"id":"1","imp":[]}"#));
        assert!(!is_capture_record(
            br#"{"id":"1","user":{"data":[{"segment":[{"id":"s","value":"v"}]}]}}"#
        ));
        assert!(!is_capture_record(b"https://x/px?value=1"));
        assert!(!is_capture_record(
            br#"{"ev":"purchase","value":19.99,"uid2_token":"A4"}"#
        ));
        let lost = br#"{"ts":1,"topic":"t","partition":0,"offset":7,"headers":[]}"#;
        assert!(is_capture_record(lost));
        assert_eq!(CaptureRecord::parse(lost), Err(RecordError::NoValue));
        assert!(matches!(
            CaptureRecord::parse(br#"{"value":"a","valeu_b64":"b"}"#),
            Err(RecordError::Json(_))
        ));
    }

    #[test]
    fn compressed_outputs_are_complete_even_when_dropped_on_an_error_path() {
        let dir = std::env::temp_dir().join(format!("uid2-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst"] {
            let path = dir.join(name);
            {
                let mut out = Output::create(&path).unwrap();
                out.write_lines(b"one\ntwo\n", 2).unwrap();
                // dropped without finish, as on an error
            }
            let mut text = String::new();
            open_input(&path)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, "one\ntwo\n", "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
