//! A `replay` worker's work on one batch of whole lines: each line enriched (or tokenized) as the stage
//! would, in the line's own shape, the malformed ones counted and kept as dead letters.

use std::borrow::Cow;

use super::job::{Job, enrich_context, transform};
use super::{Now, Summary, classify};
use crate::engine::enrich::{self, Malformed, NO_TOKEN};
use crate::engine::tokenize::Direction;
use crate::stage::headers;
use crate::stage::pipeline::STATUS_NAMES;
use crate::tools::capture_file::{CaptureRecord, Line};

/// A batch of whole lines: `ends` are the offsets of each line's end (its newline, or the end of the data
/// for a last line without one).
pub(super) struct Batch {
    pub(super) seq: u64,
    pub(super) first_line: u64,
    pub(super) data: Vec<u8>,
    pub(super) ends: Vec<usize>,
}

/// A processed batch, or the input's failure in the place of batch `seq`.
pub(super) struct Done {
    pub(super) seq: u64,
    pub(super) output: Vec<u8>,
    pub(super) output_lines: u64,
    pub(super) dlq: Vec<u8>,
    pub(super) summary: Summary,
    pub(super) input_bytes: u64,
    pub(super) failed: Option<anyhow::Error>,
}

impl Done {
    /// The input failed where batch `seq` would have been; the writer stops there.
    pub(super) fn failed(seq: u64, error: anyhow::Error) -> Done {
        Done {
            seq,
            output: Vec::new(),
            output_lines: 0,
            dlq: Vec::new(),
            summary: Summary::default(),
            input_bytes: 0,
            failed: Some(error),
        }
    }
}

pub(super) fn process_batch(job: &Job, batch: &Batch) -> Done {
    let mut done = Done {
        seq: batch.seq,
        output: Vec::with_capacity(batch.data.len() + batch.ends.len() * 300),
        output_lines: 0,
        dlq: Vec::new(),
        summary: Summary::default(),
        input_bytes: batch.data.len() as u64,
        failed: None,
    };
    // By status, in STATUS_NAMES order, then `no_token`.
    let mut counts = [0u64; STATUS_NAMES.len() + 1];
    let mut start = 0;
    for (i, &end) in batch.ends.iter().enumerate() {
        let line = batch.data.get(start..end).unwrap_or_default();
        // Past the newline (the last line of a file may have none).
        start = end + 1;
        let line_no = batch.first_line + i as u64;
        done.summary.lines += 1;
        done.output_lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            done.summary.blank_lines += 1;
            done.output.extend_from_slice(line);
            done.output.push(b'\n');
            continue;
        }
        done.summary.records += 1;
        let (result, record) = match classify(line, job.shape) {
            Line::Bare => (replay_bare_line(job, line, &mut done.output), None),
            Line::Capture(Ok(record)) => (
                replay_capture_line(job, &record, &mut done.output),
                Some(record),
            ),
            Line::Capture(Err(e)) => (
                Err(Malformed {
                    reason: "bad_capture_record",
                    detail: e.to_string(),
                }),
                None,
            ),
        };
        match result {
            Ok(status) => {
                let slot = STATUS_NAMES
                    .iter()
                    .position(|s| *s == status)
                    .unwrap_or(STATUS_NAMES.len());
                if let Some(c) = counts.get_mut(slot) {
                    *c += 1;
                }
            }
            Err(bad) => {
                done.output_lines -= 1;
                done.summary.malformed(bad.reason, || {
                    format!("line {line_no}: {}: {}", bad.reason, bad.detail)
                });
                if job.write_dlq {
                    dead_letter(line, record, &bad, line_no, &mut done.dlq);
                }
            }
        }
    }
    for (name, count) in STATUS_NAMES.iter().chain([NO_TOKEN].iter()).zip(counts) {
        if count > 0 {
            done.summary.statuses.insert((*name).to_string(), count);
        }
    }
    done
}

/// The status `uid2-status` would carry.
fn replay_bare_line(job: &Job, line: &[u8], out: &mut Vec<u8>) -> Result<&'static str, Malformed> {
    let Now::At(now_ms) = job.now else {
        return Err(Malformed {
            reason: "no_capture_time",
            detail:
                "a bare request has no captured time; --now capture needs capture records with `ts`"
                    .into(),
        });
    };
    let status = match job.direction {
        // Straight into the batch's buffer: no buffer of its own per request, no second copy.
        Direction::Enrich => {
            let (status, appended) = {
                let ctx = enrich_context(job, now_ms);
                let enriched = enrich::enrich_into(line, job.format, &ctx, &job.policy, out)?;
                (enriched.status_header(), enriched.body_enriched)
            };
            if !appended {
                out.extend_from_slice(line);
            }
            status
        }
        Direction::Tokenize => {
            let transformed = transform(job, line, now_ms)?;
            out.extend_from_slice(&transformed.output);
            transformed.status
        }
    };
    out.push(b'\n');
    Ok(status)
}

fn replay_capture_line(
    job: &Job,
    record: &CaptureRecord,
    out: &mut Vec<u8>,
) -> Result<&'static str, Malformed> {
    let value = record.value_bytes().map_err(|e| Malformed {
        reason: "bad_capture_record",
        detail: e.to_string(),
    })?;
    let now_ms = match job.now {
        Now::At(ms) => ms,
        Now::Captured => record.ts.ok_or_else(|| Malformed {
            reason: "no_capture_time",
            detail: "the capture record has no `ts`, which --now capture needs".into(),
        })?,
    };
    let transformed = transform(job, &value, now_ms)?;
    let status = transformed.status;
    let mut record = record.clone();
    // The headers the stage adds to an output record (pipeline::process).
    record.push_header(headers::STATUS, Some(status.as_bytes()));
    if let Some(member) = &transformed.member {
        record.push_header(headers::ENRICHMENT, Some(member.as_bytes()));
    }
    if let Cow::Owned(bytes) = &transformed.output {
        record.set_value(bytes);
    }
    record.write_line(out);
    Ok(status)
}

/// A dead letter as a capture record: the original value (or, for a record that could not be read, the
/// line itself) with the stage's dead-letter headers plus `uid2-source-line`.
fn dead_letter(
    line: &[u8],
    record: Option<CaptureRecord>,
    bad: &Malformed,
    line_no: u64,
    out: &mut Vec<u8>,
) {
    let mut record = record.unwrap_or_else(|| {
        let mut r = CaptureRecord::default();
        r.set_value(line);
        r
    });
    record.push_header(headers::ERROR, Some(bad.reason.as_bytes()));
    if let Some(topic) = record.topic.clone() {
        record.push_header(headers::SOURCE_TOPIC, Some(topic.as_bytes()));
    }
    if let Some(p) = record.partition {
        record.push_header(headers::SOURCE_PARTITION, Some(p.to_string().as_bytes()));
    }
    if let Some(o) = record.offset {
        record.push_header(headers::SOURCE_OFFSET, Some(o.to_string().as_bytes()));
    }
    record.push_header(headers::SOURCE_LINE, Some(line_no.to_string().as_bytes()));
    record.write_line(out);
}
