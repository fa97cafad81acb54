//! Tests of the opt-out rule, the record parsers, and the compact and live sets (checked against a hash
//! map, through growth and concurrent inserts).

use super::set::{HASHED, text_prefix};
use super::*;
use std::collections::HashMap;

const UID_32: &str = "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=";
const UID_33: &str = "BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8";
const T: u32 = 1_767_225_600;

fn key(i: u64, len: usize) -> RawUid2 {
    // Deliberately structured keys (a counter in the hashed bytes, after a 33-byte key's metadata
    // byte), not random ones: the hash must spread them.
    let mut b = [0u8; 33];
    b[len - 32..len - 24].copy_from_slice(&i.to_be_bytes());
    RawUid2::from_bytes(&b[..len]).unwrap()
}

#[test]
fn only_opt_outs_after_establishment_count() {
    let set: HashMap<String, i64> = [("u".to_string(), 1_000)].into();
    assert!(is_opted_out(&set, "u", 999));
    assert!(
        !is_opted_out(&set, "u", 1_000),
        "established at the opt-out instant: not before it"
    );
    assert!(!is_opted_out(&set, "u", 1_001));
    assert!(!is_opted_out(&set, "other", 0));
    assert!(!is_opted_out(&NoOptOuts, "u", 0));
}

#[test]
fn raw_uid2_text_round_trips_and_rejects_what_is_not_one() {
    for text in [UID_32, UID_33] {
        let k = RawUid2::parse(text).unwrap();
        assert_eq!(k.to_base64(), text);
        assert_eq!(
            k.as_bytes(),
            crate::engine::uid2::encrypt::parse_raw_uid2(text).unwrap()
        );
    }
    assert_eq!(RawUid2::parse(UID_32).unwrap().as_bytes().len(), 32);
    assert_eq!(RawUid2::parse(UID_33).unwrap().as_bytes().len(), 33);
    assert_eq!(
        RawUid2::parse_detailed(&UID_32[..43]),
        Err(RawUid2Error::Length(43))
    );
    let bad = UID_32.replace('/', "_");
    assert_eq!(RawUid2::parse_detailed(&bad), Err(RawUid2Error::NotBase64));
    // 31 bytes in 44 characters does not exist; 30 bytes is 40 characters.
    assert!(RawUid2::from_bytes(&[0; 31]).is_none());
    assert!(RawUid2::from_bytes(&[0; 34]).is_none());
    assert!(!format!("{:?}", RawUid2::parse(UID_32).unwrap()).contains("ywsv"));
}

#[test]
fn times_must_be_sane_unix_seconds() {
    assert_eq!(parse_optout_secs("1767225600"), Ok(T));
    assert_eq!(parse_optout_secs(" 1767225600 "), Ok(T));
    assert_eq!(
        parse_optout_secs("1767225600000"),
        Err(OptOutTimeError::Milliseconds(1_767_225_600_000))
    );
    assert_eq!(parse_optout_secs("12"), Err(OptOutTimeError::TooEarly(12)));
    assert_eq!(
        parse_optout_secs("4102444800"),
        Err(OptOutTimeError::TooLate(4_102_444_800))
    );
    for bad in [
        "",
        "-1",
        "1.5",
        "0x10",
        "17672256OO",
        "99999999999999999999",
    ] {
        assert_eq!(
            parse_optout_secs(bad),
            Err(OptOutTimeError::NotANumber),
            "{bad:?}"
        );
    }
}

#[test]
fn set_keeps_the_latest_time_and_tells_keys_apart() {
    let mut set = OptOutSet::new();
    let (a, b) = (
        RawUid2::parse(UID_32).unwrap(),
        RawUid2::parse(UID_33).unwrap(),
    );
    assert_eq!(set.insert(&a, T), Applied::New);
    assert_eq!(set.insert(&a, T - 5), Applied::Unchanged);
    assert_eq!(set.get(&a), Some(T));
    assert_eq!(set.insert(&a, T + 5), Applied::Later);
    assert_eq!(set.get(&a), Some(T + 5));
    assert_eq!(set.get(&b), None);
    assert_eq!(set.insert(&b, T), Applied::New);
    assert_eq!(set.len(), 2);
    // A 32-byte key and a 33-byte key sharing their first 32 bytes are different raw UID2s.
    let mut long = [0u8; 33];
    long[..32].copy_from_slice(a.as_bytes());
    let a33 = RawUid2::from_bytes(&long).unwrap();
    assert_eq!(set.get(&a33), None);
    assert_eq!(set.opted_out_at_ms(UID_32), Some(i64::from(T + 5) * 1000));
    assert_eq!(set.opted_out_at_ms("not a uid"), None);
    assert!(is_opted_out(&set, UID_33, i64::from(T) * 1000 - 1));
    assert!(!is_opted_out(&set, UID_33, i64::from(T) * 1000));
}

#[test]
fn set_agrees_with_a_hash_map_through_many_growths() {
    let mut set = OptOutSet::new();
    let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..200_000u64 {
        let len = if i % 5 == 0 { 33 } else { 32 };
        let k = key(rng.u64(0..150_000), len);
        let secs = T + rng.u32(0..1000);
        let expected = match model.get(k.as_bytes()) {
            None => Applied::New,
            Some(&old) if secs > old => Applied::Later,
            Some(_) => Applied::Unchanged,
        };
        assert_eq!(set.insert(&k, secs), expected);
        let e = model.entry(k.as_bytes().to_vec()).or_insert(secs);
        *e = (*e).max(secs);
    }
    assert_eq!(set.len(), model.len());
    for (k, secs) in &model {
        assert_eq!(set.get(&RawUid2::from_bytes(k).unwrap()), Some(*secs));
    }
    for i in 150_000..160_000u64 {
        assert_eq!(set.get(&key(i, 32)), None);
        assert_eq!(set.get(&key(i, 33)), None);
    }
    let listed: HashMap<Vec<u8>, u32> = set
        .iter()
        .map(|r| (r.raw_uid2.as_bytes().to_vec(), r.secs))
        .collect();
    assert_eq!(listed, model);
    let per_entry = set.heap_bytes() as f64 / set.len() as f64;
    assert!(per_entry < 80.0, "{per_entry:.1} bytes per entry");
}

#[test]
fn lookups_by_text_agree_with_lookups_by_bytes() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut set = OptOutSet::new();
    let mut keys = Vec::new();
    for i in 0..20_000u32 {
        let len = if i % 3 == 0 { 33 } else { 32 };
        let mut b = [0u8; 33];
        rng.fill(&mut b);
        let k = RawUid2::from_bytes(&b[..len]).unwrap();
        if i % 2 == 0 {
            set.insert(&k, T + i);
        }
        keys.push(k);
    }
    let live = LiveOptOuts::from(set.clone());
    for k in &keys {
        let text = k.to_base64();
        let (prefix, long) = text_prefix(&text).unwrap();
        assert_eq!(&prefix[..], &k.as_bytes()[..HASHED]);
        assert_eq!(long, k.as_bytes().len() == 33);
        let expected = set.get(k).map(|secs| i64::from(secs) * 1000);
        assert_eq!(set.opted_out_at_ms(&text), expected);
        assert_eq!(live.opted_out_at_ms(&text), expected);
        set.prefetch(&text);
        live.prefetch(&text);
        // A listed key whose text is spoiled after the hashed prefix, or shortened, is not found.
        let mut spoiled = text.clone().into_bytes();
        spoiled[30] = b'*';
        let spoiled = String::from_utf8(spoiled).unwrap();
        assert_eq!(live.opted_out_at_ms(&spoiled), None);
        assert_eq!(set.opted_out_at_ms(&text[..43]), None);
        live.prefetch(&spoiled);
        live.prefetch(&text[..43]);
    }
    for bad in [
        "",
        "*BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8",
        "BFOsW2SkK0-g",
    ] {
        assert_eq!(text_prefix(bad), None);
        assert_eq!(live.opted_out_at_ms(bad), None);
    }
    // Hints follow the tables as they grow.
    let grown = LiveOptOuts::new();
    for k in &keys {
        grown.insert(k, T);
    }
    for k in &keys {
        assert_eq!(
            grown.opted_out_at_ms(&k.to_base64()),
            Some(i64::from(T) * 1000)
        );
    }
}

#[test]
fn batches_and_absorbing_agree_with_single_inserts() {
    let records: Vec<OptOutRecord> = (0..5_000u64)
        .map(|i| OptOutRecord {
            raw_uid2: key(i % 3_000, if i % 7 == 0 { 33 } else { 32 }),
            secs: T + (i as u32 % 13),
        })
        .collect();
    let (mut one, mut batched) = (OptOutSet::new(), OptOutSet::new());
    let mut expected = Vec::new();
    for r in &records {
        expected.push(one.insert(&r.raw_uid2, r.secs));
    }
    let mut got = Vec::new();
    batched.insert_batch(&records, |a| got.push(a));
    assert_eq!(got, expected);
    assert_eq!(batched.len(), one.len());
    // Absorbing keeps what the live set received meanwhile, latest time winning.
    let live = LiveOptOuts::new();
    live.insert(&key(1, 32), T + 100);
    live.insert(&key(999_999, 32), T);
    live.absorb(batched);
    assert_eq!(live.len(), one.len() as u64 + 1);
    assert_eq!(live.get(&key(1, 32)), Some(T + 100));
    assert_eq!(live.get(&key(999_999, 32)), Some(T));
    assert_eq!(live.get(&key(2, 32)), one.get(&key(2, 32)));
}

#[test]
fn live_set_takes_inserts_while_others_read() {
    let live = std::sync::Arc::new(LiveOptOuts::new());
    let writer = {
        let live = live.clone();
        std::thread::spawn(move || {
            for i in 0..50_000u64 {
                live.insert(&key(i, 32), T);
            }
        })
    };
    let reader = {
        let live = live.clone();
        std::thread::spawn(move || {
            // Once seen, an entry stays: the reader never sees an insert undone by a growth.
            let mut seen = 0u64;
            while seen < 50_000 {
                if live.get(&key(seen, 32)).is_some() {
                    seen += 1;
                } else {
                    for j in 0..seen {
                        assert_eq!(live.get(&key(j, 32)), Some(T));
                    }
                    std::thread::yield_now();
                }
            }
        })
    };
    writer.join().unwrap();
    reader.join().unwrap();
    assert_eq!(live.len(), 50_000);
    let (lo, hi) = live.shard_len_range();
    assert!(lo > 0 && hi < 200, "shards hold {lo}..{hi} of 50,000");
    let moved: LiveOptOuts = {
        let mut s = OptOutSet::new();
        s.insert(&key(1, 33), T);
        s.into()
    };
    assert_eq!(moved.len(), 1);
    assert_eq!(moved.get(&key(1, 33)), Some(T));
}

#[test]
fn csv_lines_with_an_optional_header() {
    let f = LineFormat::detect("raw_uid2,unix_seconds");
    assert_eq!(f, LineFormat::Csv);
    assert_eq!(parse_line(f, "raw_uid2,unix_seconds", true), Ok(None));
    assert_eq!(parse_line(f, "user,optouttime\r", true), Ok(None));
    assert_eq!(parse_line(f, "   ", false), Ok(None));
    let r = parse_line(f, &format!("{UID_32},{T}\r"), true)
        .unwrap()
        .unwrap();
    assert_eq!((r.raw_uid2.to_base64(), r.secs), (UID_32.to_string(), T));
    let r = parse_line(f, &format!("\"{UID_33}\", {T}"), false)
        .unwrap()
        .unwrap();
    assert_eq!(r.raw_uid2.as_bytes().len(), 33);
    // A header is only a header on the first line.
    assert!(parse_line(f, "raw_uid2,unix_seconds", false).is_err());
    assert!(matches!(
        parse_line(f, &format!("{UID_32},{T},x"), false),
        Err(OptOutRecordError::Shape(_))
    ));
    assert!(matches!(
        parse_line(f, &format!("{UID_32};{T}"), false),
        Err(OptOutRecordError::Shape(_))
    ));
    assert!(matches!(
        parse_line(f, &format!("{UID_32},{}000", T), false),
        Err(OptOutRecordError::Time(OptOutTimeError::Milliseconds(_)))
    ));
    assert!(matches!(
        parse_line(f, &format!("abc,{T}"), false),
        Err(OptOutRecordError::RawUid2(RawUid2Error::Length(3)))
    ));
}

#[test]
fn json_lines_with_either_names() {
    let f = LineFormat::detect(" {\"user\":1}");
    assert_eq!(f, LineFormat::JsonLines);
    for line in [
        format!(r#"{{"user":"{UID_32}","optouttime":{T}}}"#),
        format!(r#"{{"raw_uid2":"{UID_32}","unix_seconds":"{T}","extra":[1]}}"#),
    ] {
        let r = parse_line(f, &line, false).unwrap().unwrap();
        assert_eq!((r.raw_uid2.to_base64(), r.secs), (UID_32.to_string(), T));
    }
    assert_eq!(
        parse_line(f, &format!(r#"{{"user":"{UID_32}"}}"#), false),
        Err(OptOutRecordError::Missing("optouttime"))
    );
    assert_eq!(
        parse_line(f, &format!(r#"{{"optouttime":{T}}}"#), false),
        Err(OptOutRecordError::Missing("user"))
    );
    assert_eq!(
        parse_line(
            f,
            &format!(r#"{{"user":"{UID_32}","optouttime":1.5}}"#),
            false
        ),
        Err(OptOutRecordError::Time(OptOutTimeError::NotANumber))
    );
    assert!(matches!(
        parse_line(f, "{not json", false),
        Err(OptOutRecordError::Shape(_))
    ));
}

#[test]
fn batches_are_taken_whole_or_not_at_all() {
    let ok = format!(
        r#"[{{"user":"{UID_32}","optouttime":{T}}},{{"raw_uid2":"{UID_33}","unix_seconds":"{T}"}}]"#
    );
    assert_eq!(parse_json_batch(ok.as_bytes()).unwrap().len(), 2);
    let bad =
        format!(r#"[{{"user":"{UID_32}","optouttime":{T}}},{{"user":"{UID_33}","optouttime":5}}]"#);
    assert_eq!(
        parse_json_batch(bad.as_bytes()),
        Err(BatchError::Item {
            index: 1,
            error: OptOutRecordError::Time(OptOutTimeError::TooEarly(5))
        })
    );
    assert_eq!(parse_json_batch(b"[]"), Err(BatchError::Empty));
    assert!(matches!(
        parse_json_batch(b"{\"user\":1}"),
        Err(BatchError::NotAnArray(_))
    ));
    assert!(matches!(
        parse_json_batch(b"[1]"),
        Err(BatchError::Item { index: 0, .. })
    ));
    let many = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
    assert_eq!(
        parse_json_batch(many.as_bytes()),
        Err(BatchError::TooLarge(MAX_BATCH + 1))
    );
}
