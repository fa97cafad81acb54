//! The opt-out webhook and readiness on the `[server]` router, without a broker: a recording publisher
//! stands in for the opt-out topic. Refused calls (no token, wrong token, malformed input, a broker that
//! does not acknowledge) must write nothing and change nothing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::broker::{http_get, http_request, metric_sum};
use uid2_enricher::optout::{LiveOptOuts, OptOutRecord, RawUid2};
use uid2_enricher::stage::server::{self, OptOutEndpoint, OptOutPublisher, ServerState};
use uid2_enricher::support::metrics::Metrics;
use uid2_enricher::support::secret::Redacted;
use uid2_enricher::uid2::KeySet;

const TOKEN: &str = "test-token-0123456789";
const UID_32: &str = common::RAW_UID2;
const UID_33: &str = common::RAW_UID2_PHONE_V3;
/// 2026-01-01T00:00:00Z, the fake clock.
const NOW_S: u32 = 1_767_225_600;

fn fake_now_ms() -> i64 {
    i64::from(NOW_S) * 1000
}

#[derive(Default)]
struct Recorder {
    written: Mutex<Vec<(String, u32)>>,
    fail: AtomicBool,
}

impl OptOutPublisher for Recorder {
    fn publish<'a>(
        &'a self,
        records: &'a [OptOutRecord],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self.fail.load(Ordering::Relaxed) {
                return Err("broker down".to_string());
            }
            self.written
                .lock()
                .unwrap()
                .extend(records.iter().map(|r| (r.raw_uid2.to_base64(), r.secs)));
            Ok(())
        })
    }
}

struct Server {
    port: u16,
    recorder: Arc<Recorder>,
    store: Arc<LiveOptOuts>,
    caught_up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    _runtime: tokio::runtime::Runtime,
}

fn start(token: Option<&str>) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let store = Arc::new(LiveOptOuts::new());
    let caught_up = Arc::new(AtomicBool::new(true));
    let metrics = Arc::new(Metrics::new());
    let keys: Option<Arc<KeySet>> = Some(Arc::new(common::bidstream_keys()));
    let state = ServerState {
        metrics: metrics.clone(),
        keys: Arc::new(keys),
        consuming: Arc::new(AtomicBool::new(true)),
        failed: Arc::new(AtomicBool::new(false)),
        optouts: Arc::new(OptOutEndpoint {
            store: store.clone(),
            caught_up: caught_up.clone(),
            token: token.map(|t| Redacted::new(t.to_string())),
            publisher: Some(recorder.clone()),
            now_ms: fake_now_ms,
        }),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime.spawn(server::serve(
        "127.0.0.1:0".parse().unwrap(),
        server::router(state),
        tokio_util::sync::CancellationToken::new(),
        Some(tx),
    ));
    let port = rx.blocking_recv().unwrap().port();
    Server {
        port,
        recorder,
        store,
        caught_up,
        metrics,
        _runtime: runtime,
    }
}

fn get(s: &Server, query: &str, auth: Option<&str>) -> (u16, String) {
    let header = auth.map(|a| format!("Bearer {a}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    http_request(s.port, "GET", &format!("/optout?{query}"), &headers, b"")
}

fn post(s: &Server, body: &str, auth: Option<&str>) -> (u16, String) {
    let header = auth.map(|a| format!("Bearer {a}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(h) = header.as_deref() {
        headers.push(("Authorization", h));
    }
    http_request(s.port, "POST", "/optout", &headers, body.as_bytes())
}

fn escape(uid: &str) -> String {
    uid.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn nothing_written(s: &Server) {
    assert!(s.recorder.written.lock().unwrap().is_empty());
    assert!(s.store.is_empty());
}

#[test]
fn refused_calls_write_nothing() {
    let s = start(Some(TOKEN));
    let good = format!("user={}&optouttime={NOW_S}", escape(UID_32));
    let (code, body) = get(&s, &good, None);
    assert_eq!(code, 401, "{body}");
    let (code, _) = get(&s, &good, Some("wrong-token-0123456789"));
    assert_eq!(code, 401);
    let (code, _) = get(&s, &good, Some(&TOKEN[..TOKEN.len() - 1]));
    assert_eq!(code, 401);
    let (code, _) = post(
        &s,
        &format!(r#"[{{"user":"{UID_32}","optouttime":{NOW_S}}}]"#),
        None,
    );
    assert_eq!(code, 401);
    nothing_written(&s);

    let cases: [(String, &str); 7] = [
        (format!("optouttime={NOW_S}"), "expected ?user="),
        (format!("user=abc&optouttime={NOW_S}"), "44 characters"),
        (
            format!(
                "user={}&optouttime={NOW_S}",
                escape(&UID_32.replace('/', "_"))
            ),
            "base64",
        ),
        (
            format!("user={}&optouttime={NOW_S}000", escape(UID_32)),
            "milliseconds",
        ),
        (
            format!("user={}&optouttime=12", escape(UID_32)),
            "before 2020",
        ),
        (
            format!("user={}&optouttime=soon", escape(UID_32)),
            "whole number",
        ),
        (
            format!("user={}&optouttime={}", escape(UID_32), NOW_S + 2 * 86_400),
            "more than a day after",
        ),
    ];
    for (query, reason) in &cases {
        let (code, body) = get(&s, query, Some(TOKEN));
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(reason), "{query}: {body}");
        assert!(!body.contains(UID_32), "raw UID2s are not echoed: {body}");
    }
    let batches = [
        ("[]".to_string(), "empty"),
        ("{}".to_string(), "JSON array"),
        (
            format!(r#"[{{"user":"{UID_32}","optouttime":{NOW_S}}},{{"user":"{UID_33}"}}]"#),
            "item 1: missing `optouttime`",
        ),
        (
            format!(
                r#"[{{"user":"{UID_32}","optouttime":{NOW_S}}},{{"user":"{UID_33}","optouttime":{}}}]"#,
                NOW_S + 3 * 86_400
            ),
            "item 1: the opt-out time",
        ),
    ];
    for (batch, reason) in &batches {
        let (code, body) = post(&s, batch, Some(TOKEN));
        assert_eq!(code, 400, "{batch}: {body}");
        assert!(body.contains(reason), "{batch}: {body}");
    }
    nothing_written(&s);

    // Not acknowledged by the topic: 503 and the local set stays as it was.
    s.recorder.fail.store(true, Ordering::Relaxed);
    let (code, body) = get(&s, &good, Some(TOKEN));
    assert_eq!(code, 503, "{body}");
    nothing_written(&s);

    let metrics = s.metrics.render();
    assert_eq!(
        metric_sum(
            &metrics,
            "uid2_enricher_optout_webhook_requests_total{outcome=\"unauthorized\"}"
        ),
        4
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "uid2_enricher_optout_webhook_requests_total{outcome=\"invalid\"}"
        ),
        (cases.len() + batches.len()) as u64
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "uid2_enricher_optout_webhook_requests_total{outcome=\"unavailable\"}"
        ),
        1
    );
}

#[test]
fn accepted_calls_are_published_then_applied() {
    let s = start(Some(TOKEN));
    // The UID2 service's GET, with base64's `+` sent unescaped (it arrives as a space) and escaped.
    let (code, body) = get(
        &s,
        &format!("user={UID_32}&optouttime={NOW_S}"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = get(
        &s,
        &format!("optouttime={}&user={}", NOW_S + 10, escape(UID_32)),
        Some(TOKEN),
    );
    assert_eq!(code, 200);
    let raw = RawUid2::parse(UID_32).unwrap();
    assert_eq!(s.store.get(&raw), Some(NOW_S + 10));
    // An older opt-out delivered late: the topic gets the latest time this instance knows.
    let batch = format!(
        r#"[{{"user":"{UID_32}","optouttime":{}}},{{"raw_uid2":"{UID_33}","unix_seconds":"{NOW_S}"}}]"#,
        NOW_S - 100
    );
    let (code, body) = post(&s, &batch, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        *s.recorder.written.lock().unwrap(),
        vec![
            (UID_32.to_string(), NOW_S),
            (UID_32.to_string(), NOW_S + 10),
            (UID_32.to_string(), NOW_S + 10),
            (UID_33.to_string(), NOW_S),
        ]
    );
    assert_eq!(s.store.get(&raw), Some(NOW_S + 10));
    assert_eq!(s.store.get(&RawUid2::parse(UID_33).unwrap()), Some(NOW_S));
    let (_, metrics) = http_get(s.port, "/metrics");
    assert_eq!(metric_sum(&metrics, "uid2_enricher_optout_set_entries"), 2);
    assert_eq!(
        metric_sum(
            &metrics,
            "uid2_enricher_optout_webhook_requests_total{outcome=\"accepted\"}"
        ),
        3
    );
}

#[test]
fn webhook_without_a_token_is_disabled() {
    let s = start(None);
    let (code, body) = get(
        &s,
        &format!("user={}&optouttime={NOW_S}", escape(UID_32)),
        Some(TOKEN),
    );
    assert_eq!(code, 503);
    assert!(
        body.contains("disabled") && body.contains("UID2_OPTOUT_TOKEN"),
        "{body}"
    );
    nothing_written(&s);
}

#[test]
fn not_ready_until_the_opt_out_set_caught_up() {
    let s = start(Some(TOKEN));
    s.caught_up.store(false, Ordering::Relaxed);
    let (code, body) = http_get(s.port, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("opt-out"), "{body}");
    s.caught_up.store(true, Ordering::Relaxed);
    assert_eq!(http_get(s.port, "/readyz").0, 200);
}
