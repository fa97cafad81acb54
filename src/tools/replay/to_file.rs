//! `replay` file → file on every core: a reader thread cuts the input into batches of whole lines, a pool
//! of workers processes them in parallel, and the writer (the calling thread) puts them back in input
//! order.

use std::collections::BTreeMap;
use std::io::{BufRead, Read as _};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::batch::{Batch, Done, process_batch};
use super::job::Job;
use super::{Now, ReplayArgs, Summary, progress_bar};
use crate::tools::capture_file::{self, Output};

/// Bytes per batch handed to a worker (about 2,000 requests of 2 KB): large enough to amortise the
/// hand-offs, small enough to keep every core busy and memory bounded.
const BATCH_BYTES: usize = 4 << 20;
/// Bytes per read: at least the input buffer's size, so reads bypass it and land in the batch directly.
const READ_CHUNK: usize = 1 << 20;
/// Batches in flight between the reader, the workers and the writer.
const BATCHES_IN_FLIGHT: usize = 16;

enum Work {
    Lines(Batch),
    /// The input failed after the batches before `seq`; all of those have been sent.
    Failed {
        seq: u64,
        error: anyhow::Error,
    },
}

pub(super) fn to_file(args: &ReplayArgs, output_path: &Path, now: Now) -> anyhow::Result<Summary> {
    let job = Arc::new(Job::from_args(args, now)?);
    let input = capture_file::open_input(&args.input)?;
    let input_size = (!capture_file::is_stdio(&args.input)
        && capture_file::Compression::of(&args.input) == capture_file::Compression::None)
        .then(|| std::fs::metadata(&args.input).ok().map(|m| m.len()))
        .flatten();
    let mut output = Output::create(output_path)?;
    let mut dlq = args.dlq.as_deref().map(Output::create).transpose()?;
    let progress = progress_bar(
        input_size,
        args.quiet || capture_file::is_stdio(output_path),
    );
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1);
    let started = Instant::now();
    let pool = Pool::start(input, args.input.display().to_string(), &job, threads)?;
    let (summary, failure) = write_in_order(&pool.done, &mut output, dlq.as_mut(), &progress)?;
    pool.join();
    // The decrypt cache can hold hundreds of thousands of entries; freeing them one by one costs a few
    // percent of a run, and the process ends right after.
    std::mem::forget(job);
    progress.finish_and_clear();
    finish(summary, failure, output, dlq, started)
}

/// The reader and the workers, and the end of the pipeline the writer reads.
struct Pool {
    reader: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    done: Receiver<Done>,
}

impl Pool {
    fn start(
        input: Box<dyn BufRead + Send>,
        input_name: String,
        job: &Arc<Job>,
        threads: usize,
    ) -> anyhow::Result<Pool> {
        let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(BATCHES_IN_FLIGHT);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(BATCHES_IN_FLIGHT);
        let reader = std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn(move || read_batches(input, &input_name, &work_tx))?;
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let (rx, tx, job) = (work_rx.clone(), done_tx.clone(), job.clone());
                std::thread::Builder::new()
                    .name(format!("replay-{i}"))
                    .spawn(move || work(&job, &rx, &tx))
            })
            .collect::<Result<_, _>>()?;
        Ok(Pool {
            reader,
            workers,
            done: done_rx,
        })
    }

    /// Waits for every thread; the writer may have stopped early, so the done channel closes first to
    /// release workers blocked on it (and, through them, the reader).
    fn join(self) {
        let Pool {
            reader,
            workers,
            done,
        } = self;
        drop(done);
        let _ = reader.join();
        for w in workers {
            let _ = w.join();
        }
    }
}

fn work(job: &Job, rx: &Receiver<Work>, tx: &Sender<Done>) {
    for work in rx {
        let done = match work {
            Work::Lines(batch) => process_batch(job, &batch),
            Work::Failed { seq, error } => Done::failed(seq, error),
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

/// The writer: puts batches back in input order, up to the input's failure if it fails.
fn write_in_order(
    done_rx: &Receiver<Done>,
    output: &mut Output,
    mut dlq: Option<&mut Output>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Summary, Option<anyhow::Error>)> {
    let mut summary = Summary::default();
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = 0;
    for done in done_rx.iter() {
        pending.insert(done.seq, done);
        while let Some(done) = pending.remove(&next) {
            next += 1;
            if let Some(error) = done.failed {
                return Ok((summary, Some(error)));
            }
            output.write_lines(&done.output, done.output_lines)?;
            if let Some(dlq) = dlq.as_deref_mut() {
                dlq.write_lines(&done.dlq, done.summary.dead_lettered)?;
            }
            progress.inc(done.input_bytes);
            summary.merge(done.summary);
            progress.set_message(format!("{} records", summary.records));
        }
    }
    Ok((summary, None))
}

/// Closes the outputs and prints the summary; an input failure is the error, naming how much output is
/// complete.
fn finish(
    mut summary: Summary,
    failure: Option<anyhow::Error>,
    output: Output,
    dlq: Option<Output>,
    started: Instant,
) -> anyhow::Result<Summary> {
    let written = output.lines;
    let output_name = output.path().display().to_string();
    output.finish()?;
    if let Some(dlq) = dlq {
        dlq.finish()?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_second = summary.records as f64 / summary.seconds.max(1e-9);
    if let Some(error) = failure {
        summary.print(&output_name);
        return Err(error.context(format!(
            "stopped; the {written} lines written to {output_name} before the error are complete"
        )));
    }
    summary.print(&output_name);
    Ok(summary)
}

/// Reads the input in large blocks and hands out batches of whole lines. Reading blocks straight into the
/// batch buffer (rather than line by line) saves a copy of every byte; a line longer than a block simply
/// makes its batch larger.
fn read_batches(
    mut input: Box<dyn BufRead + Send>,
    input_name: &str,
    work: &crossbeam_channel::Sender<Work>,
) {
    let mut seq = 0;
    let mut line_no = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut data = Vec::with_capacity(BATCH_BYTES + carry.len() + READ_CHUNK);
        data.append(&mut carry);
        let mut eof = false;
        let mut failure = None;
        // Fill to the target size, then on until the block holds at least one newline.
        while !eof && (data.len() < BATCH_BYTES || memchr::memchr(b'\n', &data).is_none()) {
            let filled = data.len();
            data.resize(filled + READ_CHUNK, 0);
            match input.read(data.get_mut(filled..).unwrap_or_default()) {
                Ok(0) => {
                    data.truncate(filled);
                    eof = true;
                }
                Ok(n) => data.truncate(filled + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => data.truncate(filled),
                Err(e) => {
                    data.truncate(filled);
                    failure = Some(e);
                    break;
                }
            }
        }
        // Whole lines go now; a partial last line waits for the next block (or is the last line at EOF).
        let whole = if eof {
            data.len()
        } else {
            memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1)
        };
        carry.extend_from_slice(data.get(whole..).unwrap_or_default());
        data.truncate(whole);
        let mut ends: Vec<usize> = memchr::memchr_iter(b'\n', &data).collect();
        if data.last().is_some_and(|b| *b != b'\n') {
            ends.push(data.len());
        }
        if !ends.is_empty() {
            let lines = ends.len() as u64;
            let batch = Batch {
                seq,
                first_line: line_no + 1,
                data,
                ends,
            };
            if work.send(Work::Lines(batch)).is_err() {
                return;
            }
            seq += 1;
            line_no += lines;
        }
        if let Some(e) = failure {
            let hint = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                " (the compressed stream ends early: is the file truncated?)"
            } else {
                ""
            };
            let error = anyhow::anyhow!("reading {input_name} at line {}: {e}{hint}", line_no + 1);
            let _ = work.send(Work::Failed { seq, error });
            return;
        }
        if eof {
            return;
        }
    }
}
