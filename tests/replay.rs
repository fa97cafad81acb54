//! `gen` and `replay` (file → file) through the binary, as a DSP engineer runs them: the statuses gen
//! intended come back for every case of the mix; `--now capture` decrypts old captures as they were seen;
//! compressed files; bad input files give the line number and lose nothing already written.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use uid2_enricher::tools::capture_file::{self, CaptureRecord};
use uid2_enricher::tools::traffic::{Case, Generator, Mix};
use uid2_enricher::uid2::TokenVersion;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("replay-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(args)
        .output()
        .expect("running uid2-enricher")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The lines of a (possibly compressed) file; bytes that are not UTF-8 show as U+FFFD.
fn lines(p: &Path) -> Vec<String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut capture_file::open_input(p).unwrap(), &mut bytes).unwrap();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The status a replayed request carries: the member's, or `no_token` when nothing was added.
fn member_status(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v.pointer("/user/ext/uid2_enrichment/status")
        .and_then(|s| s.as_str())
        .unwrap_or("no_token")
        .to_string()
}

#[test]
fn gen_then_replay_gives_every_case_its_intended_status() {
    let dir = scratch("gen");
    let (requests, keys, out, dlq, summary) = (
        dir.join("requests.jsonl.zst"),
        dir.join("keys.json"),
        dir.join("out.jsonl.gz"),
        dir.join("dlq.jsonl"),
        dir.join("summary.json"),
    );
    let now = "2026-01-01T00:00:00Z";
    let mix = Case::ALL.map(|c| format!("{}=1", c.name())).join(",");
    let count = 3000;
    let generated = bin(&[
        "gen",
        "--count",
        &count.to_string(),
        "--output",
        path(&requests),
        "--keys-out",
        path(&keys),
        "--mix",
        &mix,
        "--seed",
        "11",
        "--users",
        "500",
        "--now",
        now,
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let replay = bin(&[
        "replay",
        "--input",
        path(&requests),
        "--output",
        path(&out),
        "--keys",
        path(&keys),
        "--now",
        now,
        "--dlq",
        path(&dlq),
        "--summary-json",
        path(&summary),
        "--threads",
        "3",
    ]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );

    // The same seed and parameters in-process give the intended case of every line.
    let mix = Mix::parse(&mix).unwrap();
    let mut generator = Generator::new(11, mix, 1_767_225_600_000, 500, 2000);
    let intended: Vec<Case> = (0..count).map(|_| generator.next_request().case).collect();
    let out_lines = lines(&out);
    let mut out_iter = out_lines.iter();
    let mut seen = std::collections::HashSet::new();
    for (n, case) in intended.iter().enumerate() {
        seen.insert(*case);
        if let Some(expected) = case.expected_status() {
            let line = out_iter
                .next()
                .expect("an output line per well-formed request");
            assert_eq!(member_status(line), expected, "line {} ({case:?})", n + 1);
        }
    }
    assert!(out_iter.next().is_none(), "no extra output lines");
    assert_eq!(seen.len(), Case::ALL.len(), "every case was generated");
    let malformed = intended.iter().filter(|c| **c == Case::Malformed).count();
    let dead = lines(&dlq);
    assert_eq!(dead.len(), malformed);
    for d in &dead {
        let r = CaptureRecord::parse(d.as_bytes()).unwrap();
        assert!(r.headers.iter().any(|(k, _)| k == "uid2-error"));
        assert!(r.headers.iter().any(|(k, _)| k == "uid2-source-line"));
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["records"], count);
    assert_eq!(s["dead_lettered"], malformed as u64);
    let success = intended
        .iter()
        .filter(|c| c.expected_status() == Some("success"))
        .count() as u64;
    assert_eq!(s["statuses"]["success"], success);
}

/// Usage mistakes are refused with the fix: seconds given to `--now` (which would decrypt as of January
/// 1970), `--rate`/`--speed` without `--to-topic` (once silently ignored), a missing keys file.
#[test]
fn usage_mistakes_are_refused_with_the_fix() {
    let dir = scratch("now_in_seconds");
    let (requests, keys) = (dir.join("requests.jsonl"), dir.join("keys.json"));
    let gen_at = |now: &str| {
        bin(&[
            "gen",
            "--count",
            "1",
            "--output",
            path(&requests),
            "--keys-out",
            path(&keys),
            "--now",
            now,
        ])
    };
    let refused = gen_at("1767225600");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("looks like seconds") && stderr.contains("1767225600000"),
        "{stderr}"
    );
    assert!(!keys.exists(), "nothing is written when --now is refused");
    assert!(gen_at("1767225600000").status.success());
    let token = "A4AAAAAAAAAA";
    let decrypted = bin(&[
        "decrypt",
        "--keys",
        path(&keys),
        "--now",
        "1767225600",
        token,
    ]);
    let stderr = String::from_utf8_lossy(&decrypted.stderr);
    assert_eq!(decrypted.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1767225600000"), "{stderr}");
    for pacing in ["--rate", "--speed"] {
        let paced = bin(&[
            "replay",
            "--input",
            path(&requests),
            "--output",
            path(&dir.join("out.jsonl")),
            "--keys",
            path(&keys),
            pacing,
            "2",
        ]);
        let stderr = String::from_utf8_lossy(&paced.stderr);
        assert_eq!(paced.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(pacing) && stderr.contains("--to-topic"),
            "{stderr}"
        );
    }
    let missing = bin(&["decrypt", "--keys", path(&dir.join("nope.json")), token]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nope.json") && stderr.contains("gen --keys-out"),
        "{stderr}"
    );
}

#[test]
fn now_capture_decrypts_old_captures_as_they_were_seen_and_keeps_the_shape() {
    let dir = scratch("now-capture");
    let keys = common::write_bidstream_keys(dir.join("keys.json"));
    // Valid from an hour before NOW (2026-01-01) for a day: long expired by the wall clock.
    let token = common::Token::new(TokenVersion::V4).build();
    let request = common::site_request_with(&token);
    let mut record = CaptureRecord {
        ts: Some(common::NOW),
        topic: Some("bid-requests".into()),
        partition: Some(2),
        offset: Some(7),
        ..CaptureRecord::default()
    };
    record.set_key(Some(b"k1"));
    record.set_value(request.as_bytes());
    record.push_header("x-trace", Some(b"abc"));
    let input = dir.join("capture.jsonl");
    let mut line = Vec::new();
    record.write_line(&mut line);
    line.extend_from_slice(format!("{request}\n").as_bytes());
    std::fs::write(&input, &line).unwrap();

    let as_seen = dir.join("as-seen.jsonl");
    let run = bin(&[
        "replay",
        "--input",
        path(&input),
        "--output",
        path(&as_seen),
        "--keys",
        path(&keys),
        "--now",
        "capture",
    ]);
    // The bare line has no captured time: reported with its line number, not guessed.
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("line 2: no_capture_time"), "{stderr}");
    let out = lines(&as_seen);
    assert_eq!(out.len(), 1);
    let replayed = CaptureRecord::parse(out[0].as_bytes()).unwrap();
    let value = String::from_utf8(replayed.value_bytes().unwrap()).unwrap();
    assert_eq!(member_status(&value), "success");
    assert_eq!(replayed.ts, record.ts);
    assert_eq!((replayed.partition, replayed.offset), (Some(2), Some(7)));
    assert_eq!(replayed.key.as_deref(), Some("k1"));
    let names: Vec<&str> = replayed.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["x-trace", "uid2-status", "uid2-enrichment"]);

    let today = dir.join("today.jsonl");
    let run = bin(&[
        "replay",
        "--input",
        path(&input),
        "--output",
        path(&today),
        "--keys",
        path(&keys),
    ]);
    assert!(run.status.success());
    let out = lines(&today);
    let replayed = CaptureRecord::parse(out[0].as_bytes()).unwrap();
    let value = String::from_utf8(replayed.value_bytes().unwrap()).unwrap();
    assert_eq!(member_status(&value), "expired_token");
    assert_eq!(member_status(&out[1]), "expired_token");
}

#[test]
fn bad_lines_are_reported_by_line_number_and_strict_makes_them_fatal() {
    let dir = scratch("bad-lines");
    let keys = common::write_bidstream_keys(dir.join("keys.json"));
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\"}\nthis is not json\n{\"ts\":1,\"topic\":\"t\",\"partition\":0,\"offset\":5}\n\n{\"id\":\"b\"}\n",
    )
    .unwrap();
    let (out, dlq) = (dir.join("out.jsonl"), dir.join("dlq.jsonl"));
    let run = bin(&[
        "replay",
        "--input",
        path(&input),
        "--output",
        path(&out),
        "--keys",
        path(&keys),
        "--dlq",
        path(&dlq),
    ]);
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("line 2: not_a_json_object"), "{stderr}");
    assert!(
        stderr.contains(
            "line 3: bad_capture_record: the capture record has neither `value` nor `value_b64`"
        ),
        "{stderr}"
    );
    // Well-formed lines byte-identical (no tokens), the blank line kept, bad lines out.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"id\":\"a\"}\n\n{\"id\":\"b\"}\n"
    );
    let dead = lines(&dlq);
    assert_eq!(dead.len(), 2);
    let first = CaptureRecord::parse(dead[0].as_bytes()).unwrap();
    assert_eq!(first.value.as_deref(), Some("this is not json"));
    let second = CaptureRecord::parse(dead[1].as_bytes()).unwrap();
    assert_eq!(
        second.value.as_deref(),
        Some(r#"{"ts":1,"topic":"t","partition":0,"offset":5}"#),
        "a record that cannot be read is kept whole as the value"
    );

    let strict = bin(&[
        "replay",
        "--input",
        path(&input),
        "--output",
        path(&out),
        "--keys",
        path(&keys),
        "--strict",
    ]);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn a_truncated_gzip_input_stops_with_the_line_and_keeps_what_was_written() {
    let dir = scratch("truncated");
    let keys = common::write_bidstream_keys(dir.join("keys.json"));
    let full = dir.join("full.jsonl.gz");
    {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&full).unwrap(),
            flate2::Compression::default(),
        );
        for i in 0..20_000 {
            writeln!(
                gz,
                r#"{{"id":"req-{i}","imp":[{{"id":"1","tagid":"{:x}"}}]}}"#,
                i * 7919
            )
            .unwrap();
        }
        gz.finish().unwrap();
    }
    let bytes = std::fs::read(&full).unwrap();
    let truncated = dir.join("truncated.jsonl.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("out.jsonl.zst");
    let run = bin(&[
        "replay",
        "--input",
        path(&truncated),
        "--output",
        path(&out),
        "--keys",
        path(&keys),
    ]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(stderr.contains("at line "), "{stderr}");
    // Everything written before the error is complete and in order (the zstd frame was finished).
    let written = lines(&out);
    assert!(written.len() > 1000, "{} lines kept", written.len());
    for (i, l) in written.iter().enumerate() {
        assert!(
            l.starts_with(&format!(r#"{{"id":"req-{i}","#)),
            "line {}: {l}",
            i + 1
        );
    }
    assert!(
        stderr.contains(&format!("the {} lines written", written.len())),
        "{stderr}"
    );
}

/// `uid2_status` of a replayed pixel URL, or `no_token` when nothing was appended.
fn pixel_status(line: &str) -> String {
    line.split(['?', '&', '#'])
        .find_map(|p| p.strip_prefix("uid2_status="))
        .unwrap_or("no_token")
        .to_string()
}

#[test]
fn pixel_streams_replay_with_the_statuses_gen_intended() {
    let dir = scratch("pixel");
    let (pixels, keys, out) = (
        dir.join("pixels.txt"),
        dir.join("keys.json"),
        dir.join("out.txt"),
    );
    let now = "2026-01-01T00:00:00Z";
    let mix = "v2=1,v3=1,v4=2,expired=1,unknown-site-key=1,tampered=1,euid=1,none=1,malformed=1";
    let generated = bin(&[
        "gen",
        "--count",
        "1500",
        "--format",
        "pixel",
        "--output",
        path(&pixels),
        "--keys-out",
        path(&keys),
        "--mix",
        mix,
        "--seed",
        "5",
        "--now",
        now,
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let run = bin(&[
        "replay",
        "--input",
        path(&pixels),
        "--output",
        path(&out),
        "--keys",
        path(&keys),
        "--now",
        now,
        "--format",
        "pixel",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut generator = Generator::new(
        5,
        Mix::parse(mix).unwrap(),
        1_767_225_600_000,
        100_000,
        2000,
    );
    let input = lines(&pixels);
    let mut output = lines(&out).into_iter();
    for (n, url) in input.iter().enumerate() {
        let case = generator.next_pixel().case;
        let Some(expected) = case.expected_status() else {
            continue;
        };
        let line = output.next().expect("an output line per well-formed pixel");
        assert_eq!(pixel_status(&line), expected, "line {} ({case:?})", n + 1);
        // Only parameters were appended (before any fragment).
        let base = url.split('#').next().unwrap();
        assert!(line.starts_with(base), "line {}: {line}", n + 1);
    }
    assert!(output.next().is_none());
}

#[test]
fn tokenize_then_decrypt_in_sharing_mode_gives_the_raw_uid2s_back() {
    let dir = scratch("tokenize");
    let (events, keys, tokenized, decrypted, dlq) = (
        dir.join("events.jsonl"),
        dir.join("keys.json"),
        dir.join("tokenized.jsonl"),
        dir.join("decrypted.jsonl"),
        dir.join("dlq.jsonl"),
    );
    let generated = bin(&[
        "gen",
        "--count",
        "800",
        "--format",
        "json",
        "--raw-uid2",
        "--output",
        path(&events),
        "--keys-out",
        path(&keys),
        "--mix",
        "v4=8,none=1,malformed=1",
        "--seed",
        "9",
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let run = bin(&[
        "replay",
        "--input",
        path(&events),
        "--output",
        path(&tokenized),
        "--keys",
        path(&keys),
        "--mode",
        "sharing",
        "--format",
        "json",
        "--direction",
        "tokenize",
        "--dlq",
        path(&dlq),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = bin(&[
        "replay",
        "--input",
        path(&tokenized),
        "--output",
        path(&decrypted),
        "--keys",
        path(&keys),
        "--mode",
        "sharing",
        "--format",
        "json",
        "--pointer",
        "/uid2",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let originals: Vec<serde_json::Value> = lines(&events)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| {
            v.get("uid2")
                .and_then(|u| u.as_str())
                .is_none_or(|u| u.len() == 44)
        })
        .collect();
    let tokenized = lines(&tokenized);
    let decrypted = lines(&decrypted);
    assert_eq!(tokenized.len(), originals.len());
    assert_eq!(decrypted.len(), originals.len());
    let mut round_trips = 0;
    for ((original, token_line), back) in originals.iter().zip(&tokenized).zip(&decrypted) {
        let back: serde_json::Value = serde_json::from_str(back).unwrap();
        match original.get("uid2").and_then(|u| u.as_str()) {
            Some(raw) => {
                assert!(
                    !token_line.contains(raw),
                    "a raw UID2 left the tokenize direction"
                );
                assert_eq!(back["uid2_enrichment"]["status"], "success", "{back}");
                assert_eq!(back["uid2_enrichment"]["raw_uid2"], raw);
                round_trips += 1;
            }
            None => assert_eq!(
                &serde_json::from_str::<serde_json::Value>(token_line).unwrap(),
                original
            ),
        }
    }
    assert!(round_trips > 500, "{round_trips}");
    let dead = lines(&dlq);
    assert!(!dead.is_empty());
    assert!(dead.iter().all(|d| d.contains("invalid_raw_uid2")));
}

#[test]
fn optouts_from_a_file_apply_the_rule_offline() {
    let dir = scratch("optouts");
    let keys = common::write_bidstream_keys(dir.join("keys.json"));
    // Established 30 days before NOW.
    let token = common::Token::new(TokenVersion::V4).build();
    let request = common::site_request_with(&token);
    let input = dir.join("in.jsonl");
    std::fs::write(&input, format!("{request}\n")).unwrap();
    let now = common::NOW.to_string();
    let status_with = |optout_ms: i64, name: &str| {
        let optouts = dir.join(name);
        std::fs::write(
            &optouts,
            format!(
                "raw_uid2,unix_seconds\n{},{}\n",
                common::RAW_UID2,
                optout_ms / 1000
            ),
        )
        .unwrap();
        let out = dir.join(format!("{name}.out"));
        let run = bin(&[
            "replay",
            "--input",
            path(&input),
            "--output",
            path(&out),
            "--keys",
            path(&keys),
            "--now",
            &now,
            "--optouts",
            path(&optouts),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        member_status(&lines(&out)[0])
    };
    assert_eq!(
        status_with(common::NOW - common::DAY_MS, "after.csv"),
        "opted_out"
    );
    assert_eq!(
        status_with(common::NOW - 60 * common::DAY_MS, "before.csv"),
        "success"
    );

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "raw_uid2,unix_seconds\nnot-a-uid,12\n").unwrap();
    let run = bin(&[
        "replay",
        "--input",
        path(&input),
        "--output",
        path(&dir.join("x")),
        "--keys",
        path(&keys),
        "--optouts",
        path(&bad),
    ]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("bad.csv") && stderr.contains('2'),
        "{stderr}"
    );
}

/// A production config names an operator whose credentials live in the environment. Replaying with
/// `--keys` uses neither, so it works without them; without `--keys` the missing credential is named.
/// The rest of the file is still checked.
#[test]
fn replay_with_keys_does_not_need_the_operator_credentials_of_its_config() {
    let dir = scratch("operator_config");
    let (requests, keys, out) = (
        dir.join("requests.jsonl"),
        dir.join("keys.json"),
        dir.join("out.jsonl"),
    );
    let now = "1767225600000";
    assert!(
        bin(&[
            "gen",
            "--count",
            "5",
            "--output",
            path(&requests),
            "--keys-out",
            path(&keys),
            "--now",
            now,
        ])
        .status
        .success()
    );
    let config = dir.join("production.toml");
    std::fs::write(&config, "[uid2]\nbase_url = \"https://prod.uidapi.com\"\n").unwrap();
    let replay = |config: &Path, with_keys: bool| {
        let mut args = vec![
            "replay",
            "--input",
            path(&requests),
            "--output",
            path(&out),
            "--now",
            now,
            "--config",
            path(config),
        ];
        if with_keys {
            args.extend(["--keys", path(&keys)]);
        }
        Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
            .args(&args)
            .env_remove("UID2_API_KEY")
            .env_remove("UID2_SECRET_KEY")
            .output()
            .unwrap()
    };
    let with_keys = replay(&config, true);
    assert!(
        with_keys.status.success(),
        "{}",
        String::from_utf8_lossy(&with_keys.stderr)
    );
    assert_eq!(lines(&out).len(), 5);
    let without_keys = replay(&config, false);
    let stderr = String::from_utf8_lossy(&without_keys.stderr);
    assert_eq!(without_keys.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("UID2_API_KEY"), "{stderr}");
    // The file is still validated whole: a bad [uid2] is refused even with --keys.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[uid2]\nbase_url = \"http://prod.uidapi.com\"\n").unwrap();
    let refused = replay(&bad, true);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("base_url"), "{stderr}");
}

/// `gen --euid-keys-out` makes a stream that needs both operators' keys; `replay` and `decrypt` take
/// `--keys` once per operator, each file serving the scope its body declares.
#[test]
fn a_uid2_and_euid_stream_needs_both_key_sets() {
    let dir = scratch("uid2-and-euid");
    let (requests, uid2_keys, euid_keys) = (
        dir.join("requests.jsonl"),
        dir.join("uid2-keys.json"),
        dir.join("euid-keys.json"),
    );
    let now = "2026-01-01T00:00:00Z";
    let generated = bin(&[
        "gen",
        "--count",
        "300",
        "--output",
        path(&requests),
        "--keys-out",
        path(&uid2_keys),
        "--euid-keys-out",
        path(&euid_keys),
        "--mix",
        "v4=1,v3=1,euid-valid=1",
        "--now",
        now,
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let euid_doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&euid_keys).unwrap()).unwrap();
    assert_eq!(euid_doc["body"]["identity_scope"], "EUID");
    let statuses = |keys: &[&Path], name: &str| {
        let out = dir.join(name);
        let mut args = vec!["replay", "--input", path(&requests), "--output", path(&out)];
        for k in keys {
            args.extend(["--keys", path(k)]);
        }
        args.extend(["--now", now]);
        let replay = bin(&args);
        assert!(
            replay.status.success(),
            "{}",
            String::from_utf8_lossy(&replay.stderr)
        );
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for line in lines(&out) {
            *counts.entry(member_status(&line)).or_default() += 1;
        }
        counts
    };
    let both = statuses(&[&uid2_keys, &euid_keys], "both.jsonl");
    assert_eq!(both.get("success"), Some(&300), "{both:?}");
    let uid2_only = statuses(&[&uid2_keys], "uid2-only.jsonl");
    let euid_only = statuses(&[&euid_keys], "euid-only.jsonl");
    let refused = uid2_only["invalid_identity_scope"];
    assert!(refused > 50, "{uid2_only:?}");
    assert_eq!(uid2_only["success"] + refused, 300, "{uid2_only:?}");
    assert_eq!(euid_only["success"], refused, "{euid_only:?}");

    // Two files of one scope are refused, naming both.
    let twice = bin(&[
        "replay",
        "--input",
        path(&requests),
        "--output",
        path(&dir.join("x.jsonl")),
        "--keys",
        path(&uid2_keys),
        "--keys",
        path(&uid2_keys),
    ]);
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(
        !twice.status.success() && stderr.contains("both hold UID2 keys"),
        "{stderr}"
    );

    // decrypt: an EUID token with both files decrypts; with the UID2 file alone it is of another scope.
    let line = std::fs::read_to_string(&requests).unwrap();
    let euid_token = line
        .lines()
        .find(|l| l.contains("euid.eu"))
        .and_then(|l| {
            let request: serde_json::Value = serde_json::from_str(l).ok()?;
            let eids = request["user"]["eids"]
                .as_array()
                .or(request["user"]["ext"]["eids"].as_array())?
                .clone();
            Some(eids[0]["uids"][0]["id"].as_str()?.to_string())
        })
        .expect("an EUID token in the stream");
    let decrypt = |keys: &[&Path]| {
        let mut args = vec!["decrypt"];
        for k in keys {
            args.extend(["--keys", path(k)]);
        }
        args.extend(["--now", now, &euid_token]);
        let out = bin(&args);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        doc["status"].as_str().unwrap().to_string()
    };
    assert_eq!(decrypt(&[&uid2_keys, &euid_keys]), "success");
    assert_eq!(decrypt(&[&euid_keys]), "success");
    assert_eq!(decrypt(&[&uid2_keys]), "invalid_identity_scope");
}
