//! The stage and its tools against secured Kafka clusters: a real Kafka-compatible broker (`tansu`, binary
//! in `UID2_TANSU`, started here) with SASL/SCRAM authentication, and TLS terminated by a proxy in this
//! test (tokio-rustls, certificates made at test time by rcgen) that tansu advertises as its address, so
//! every client connection after the bootstrap goes through it too. tansu 0.6 builds a TLS acceptor and
//! never uses it, and has no SASL/PLAIN: hence the proxy, and PLAIN checked only through client creation
//! (`tests/cluster_snippets.rs`).
//!
//! For each of SASL_PLAINTEXT + SCRAM-SHA-256, SASL_PLAINTEXT + SCRAM-SHA-512, SSL with server
//! verification, mTLS and SASL_SSL + SCRAM-SHA-512: `replay --to-topic --config` writes N requests,
//! `uid2-enricher run` enriches them, `verify --config` finds 0 lost, `capture --config` reads the output
//! back. The mTLS and SASL_SSL runs use the README's snippets as written, their `${…}` filled from the
//! environment. Then the failures: a wrong password, an unknown CA, a missing client certificate — the
//! stage stays not ready, consumes nothing, says why in a few lines, and never prints the secret.
//!
//! Run by `scripts/test.sh`: `UID2_TANSU=$(command -v tansu) cargo test --test secured_cluster -- --ignored`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{Instance, free_port, http_get, metric_sum};
use uid2_enricher::support::clock::wall_clock_ms;
use uid2_enricher::tools::traffic::{Generator, Mix};

const N: usize = 300;
const PASSWORD: &str = "s3cret-ScramPassword-Zq7";
const WRONG_PASSWORD: &str = "not-the-password-Xk2";

fn tansu() -> String {
    std::env::var("UID2_TANSU")
        .expect("UID2_TANSU is not set: run scripts/test.sh, which builds tansu")
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("secured")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------------------

/// A test CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a second CA
/// that signed none of them; all PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: String,
    server_key: String,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (Issuer::new(params, key), cert.pem())
    };
    let (issuer, ca_pem) = ca("uid2-enricher test CA");
    let (_, other_pem) = ca("some other CA");
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".to_string(), "localhost".to_string()],
        "tansu",
    );
    let (client_cert, client_key) = leaf(vec!["uid2-enricher".to_string()], "uid2-enricher");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca_pem),
        other_ca: write("other-ca.pem", &other_pem),
        server_cert,
        server_key,
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The TLS proxy
// ---------------------------------------------------------------------------------------------------------

/// A TLS-terminating proxy on `port` in front of `upstream`, requiring a client certificate signed by the
/// test CA when `client_auth`. Runs until the test process ends.
fn start_tls_proxy(port: u16, upstream: SocketAddr, pki: &Pki, client_auth: bool) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = vec![CertificateDer::from_pem_slice(pki.server_cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap()
    } else {
        builder
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    wait_for_port(port);
}

// ---------------------------------------------------------------------------------------------------------
// tansu
// ---------------------------------------------------------------------------------------------------------

/// A tansu broker; stopped when dropped.
struct Tansu {
    child: Option<Child>,
    port: u16,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Tansu {
    fn start(dir: &Path, port: u16, advertised: u16, storage: &str, authentication: bool) -> Tansu {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .unwrap();
        let mut command = Command::new(tansu());
        command
            .current_dir(dir)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            .args(["--storage-engine", storage]);
        if authentication {
            command.arg("--authentication");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting tansu");
        wait_for_port(port);
        Tansu {
            child: Some(child),
            port,
        }
    }

    fn tool(&self, args: &[&str]) {
        let status = Command::new(tansu())
            .args(args)
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu {args:?} failed");
    }

    fn create_topics(&self, topics: &[&str]) {
        for topic in topics {
            self.tool(&["topic", "create", topic, "--partitions", "2"]);
        }
    }
}

/// A tansu that authenticates with SCRAM: users and topics are made while it runs without
/// `--authentication` (its own client cannot authenticate), on a SQLite file, then it restarts on the
/// same file with `--authentication`.
fn scram_tansu(
    dir: &Path,
    advertised: Option<u16>,
    users: &[(&str, &str)],
    topics: &[&str],
) -> Tansu {
    let port = free_port();
    let storage = "sqlite://tansu.db";
    {
        let open = Tansu::start(dir, port, port, storage, false);
        for (user, mechanism) in users {
            open.tool(&["user", "create", user, PASSWORD, "--mechanism", mechanism]);
        }
        open.create_topics(topics);
    }
    std::thread::sleep(Duration::from_millis(300));
    Tansu::start(dir, port, advertised.unwrap_or(port), storage, true)
}

// ---------------------------------------------------------------------------------------------------------
// The stage and the tools
// ---------------------------------------------------------------------------------------------------------

/// A configuration: `cluster` (a `[kafka]` table and `[kafka.client]`), then the test's own tables.
fn write_config(dir: &Path, cluster: &str, keys: &Path, port: u16) -> PathBuf {
    let path = dir.join("stage.toml");
    std::fs::write(
        &path,
        format!(
            r#"{cluster}
[kafka.consumer]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000
"fetch.wait.max.ms" = 10
[uid2]
keys_file = "{keys}"
[server]
listen = "127.0.0.1:{port}"
[log]
level = "info"
"#,
            keys = keys.display()
        ),
    )
    .unwrap();
    path
}

fn uid2_enricher(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn start_stage(config: &Path, dir: &Path, env: &[(&str, String)]) -> Instance {
    let log = std::fs::File::create(dir.join("stage.log")).unwrap();
    Instance(Some(
        Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

struct Traffic {
    keys: PathBuf,
    requests: PathBuf,
}

fn traffic(dir: &Path) -> Traffic {
    let mut generator = Generator::new(21, Mix::default(), wall_clock_ms(), 100, 1200);
    let keys = dir.join("keys.json");
    std::fs::write(&keys, generator.keys_json()).unwrap();
    let mut lines = Vec::new();
    for _ in 0..N {
        lines.extend_from_slice(&generator.next_request().bytes);
        lines.push(b'\n');
    }
    let requests = dir.join("requests.jsonl");
    std::fs::write(&requests, lines).unwrap();
    Traffic { keys, requests }
}

/// N requests through the stage on the cluster `cluster` describes, with `--config` tools on both ends.
fn end_to_end(
    name: &str,
    dir: &Path,
    cluster: &str,
    env: &[(&str, String)],
    topics: (&str, &str, &str),
) {
    let (input, output, dlq) = topics;
    let traffic = traffic(dir);
    let port = free_port();
    let config = write_config(dir, cluster, &traffic.keys, port);
    let config_arg = config.to_str().unwrap();
    let started = Instant::now();

    let replay = uid2_enricher(
        &[
            "replay",
            "--quiet",
            "--input",
            traffic.requests.to_str().unwrap(),
            "--to-topic",
            input,
            "--config",
            config_arg,
        ],
        env,
    );
    assert!(
        replay.status.success(),
        "{name}: replay --to-topic failed: {}",
        String::from_utf8_lossy(&replay.stderr)
    );

    let stage = start_stage(&config, dir, env);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, metrics) = http_get_or_empty(port);
        let done = metric_sum(&metrics, "uid2_enricher_records_out_total")
            + metric_sum(&metrics, "uid2_enricher_dead_lettered_total");
        if done >= N as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: only {done} of {N} records out; see {}",
            dir.join("stage.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = http_get(port, "/readyz");
    assert_eq!(status, 200, "{name}: the stage is ready while it works");

    let verify = uid2_enricher(
        &[
            "verify",
            "--config",
            config_arg,
            "--input",
            input,
            "--output",
            output,
            "--dlq",
            dlq,
            "--json",
            "--timeout",
            "60",
        ],
        env,
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{name}: verify --config: {report} {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["lost"], 0, "{name}: {report}");

    assert_eq!(report["input"], N, "{name}: {report}");
    let capture = |topic: &str| {
        let file = dir.join(format!("capture-{topic}.jsonl"));
        let out = uid2_enricher(
            &[
                "capture",
                "--quiet",
                "--config",
                config_arg,
                "--topic",
                topic,
                // tansu's memory engine reports a partition's end per batch, so its end offsets cannot
                // be trusted: stop on quiet instead.
                "--idle",
                "3",
                "--duration",
                "60",
                "--output",
                file.to_str().unwrap(),
            ],
            env,
        );
        assert!(
            out.status.success(),
            "{name}: capture --config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&file).unwrap().lines().count()
    };
    let (captured, dead) = (capture(output), capture(dlq));
    assert_eq!(captured + dead, N, "{name}: capture read the whole output");
    common::broker::terminate(stage, &format!("secured/{name}"));
    let log = std::fs::read_to_string(dir.join("stage.log")).unwrap();
    for (variable, value) in env {
        if variable.contains("PASSWORD") {
            assert!(
                !log.contains(value.as_str()),
                "{name}: {variable} is in the stage's log"
            );
        }
    }
    println!(
        "RESULT secured cluster, {name}: {N} requests replayed, enriched and verified (0 lost, {captured} captured, {dead} dead-lettered) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn http_get_or_empty(port: u16) -> (u16, String) {
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        return (0, String::new());
    }
    http_get(port, "/metrics")
}

/// The stage against a cluster it cannot authenticate to: not ready, nothing consumed, the cause in a
/// few log lines, no secret in them. Returns the log.
fn refused(
    name: &str,
    dir: &Path,
    cluster: &str,
    env: &[(&str, String)],
    secret: Option<&str>,
) -> String {
    let keys = traffic(dir).keys;
    let port = free_port();
    let config = write_config(dir, cluster, &keys, port);
    let stage = start_stage(&config, dir, env);
    let started = Instant::now();
    // librdkafka retries for ever: the first refusal must be in the log within a few seconds, and
    // the log must stay quiet after it.
    while !std::fs::read_to_string(dir.join("stage.log"))
        .unwrap()
        .contains("ERROR")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name}: no error logged in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first_error = started.elapsed();
    std::thread::sleep(Duration::from_secs(10));
    wait_for_port(port);
    let (status, body) = http_get(port, "/readyz");
    let (_, metrics) = http_get(port, "/metrics");
    common::broker::terminate(stage, &format!("secured/{name}"));
    let log = std::fs::read_to_string(dir.join("stage.log")).unwrap();
    assert_eq!(status, 503, "{name}: not ready: {body}");
    assert_eq!(
        metric_sum(&metrics, "uid2_enricher_records_in_total"),
        0,
        "{name}: nothing consumed"
    );
    if let Some(secret) = secret {
        assert!(!log.contains(secret), "{name}: the secret is in the log");
    }
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    assert!(
        (1..=8).contains(&errors),
        "{name}: {errors} error lines (one per cause and client expected):\n{log}"
    );
    assert!(
        body.contains("last Kafka client error"),
        "{name}: /readyz says why: {body}"
    );
    println!(
        "RESULT secured cluster, {name}: first error logged after {:.1} s; then 10 s later: {errors} error lines in all, 0 consumed, /readyz 503 {:?}",
        first_error.as_secs_f64(),
        body.trim()
    );
    log
}

/// The README's snippet `name`, as written.
fn readme_snippet(name: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &readme[readme.find(&marker).expect("the README has the snippet")..];
    let start = after.find("```toml\n").unwrap() + "```toml\n".len();
    let end = after[start..].find("```").unwrap();
    after[start..start + end].to_string()
}

/// A SCRAM-SHA-512 tansu with the default topics behind a TLS proxy (no client certificate asked):
/// the broker, the certificates and the proxy's port, which tansu advertises.
fn sasl_ssl_cluster(dir: &Path, user: &str) -> (Tansu, Pki, u16) {
    let pki = make_pki(dir);
    let proxy = free_port();
    let broker = scram_tansu(dir, Some(proxy), &[(user, "scram512")], &STAGE_TOPICS);
    start_tls_proxy(
        proxy,
        SocketAddr::from(([127, 0, 0, 1], broker.port)),
        &pki,
        false,
    );
    (broker, pki, proxy)
}

/// An open tansu (memory storage) with the default topics behind a TLS proxy, which asks for a client
/// certificate when `client_auth`: the broker, the certificates and the proxy's port.
fn tls_cluster(dir: &Path, client_auth: bool) -> (Tansu, Pki, u16) {
    let pki = make_pki(dir);
    let proxy = free_port();
    let port = free_port();
    let broker = Tansu::start(dir, port, proxy, "memory://tansu/", false);
    broker.create_topics(&STAGE_TOPICS);
    start_tls_proxy(
        proxy,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &pki,
        client_auth,
    );
    (broker, pki, proxy)
}

/// A cluster section for TLS with server verification against `ca`, no client certificate.
fn ssl_only(proxy: u16, ca: &Path) -> String {
    format!(
        "[kafka]\nbrokers = \"127.0.0.1:{proxy}\"\n[kafka.client]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
        ca.display()
    )
}

fn sasl_plaintext(port: u16, mechanism: &str, user: &str, topics: (&str, &str, &str)) -> String {
    format!(
        r#"[kafka]
brokers = "127.0.0.1:{port}"
group_id = "g-{user}"
input_topics = ["{}"]
output_topic = "{}"
dlq_topic = "{}"
[kafka.client]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanisms" = "{mechanism}"
"sasl.username" = "{user}"
"sasl.password" = "${{KAFKA_PASSWORD}}"
"#,
        topics.0, topics.1, topics.2
    )
}

const DEFAULT_TOPICS: (&str, &str, &str) =
    ("bid-requests", "bid-requests-enriched", "bid-requests-dlq");
/// Every topic a stage with the default names reads or writes, the opt-out topic included.
const STAGE_TOPICS: [&str; 4] = [
    DEFAULT_TOPICS.0,
    DEFAULT_TOPICS.1,
    DEFAULT_TOPICS.2,
    "uid2-optouts",
];

#[test]
#[ignore = "needs tansu (UID2_TANSU); run by scripts/test.sh"]
fn sasl_plaintext_scram_256_and_512_end_to_end_and_a_wrong_password_refused() {
    let dir = scratch("sasl-plaintext");
    let t256 = ("in-256", "out-256", "dlq-256");
    let t512 = ("in-512", "out-512", "dlq-512");
    let broker = scram_tansu(
        &dir,
        None,
        &[("bob", "scram256"), ("alice", "scram512")],
        &[
            t256.0,
            t256.1,
            t256.2,
            t512.0,
            t512.1,
            t512.2,
            "uid2-optouts",
        ],
    );
    let env = vec![("KAFKA_PASSWORD", PASSWORD.to_string())];
    let sub = |s: &str| {
        let d = dir.join(s);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    end_to_end(
        "SASL_PLAINTEXT + SCRAM-SHA-256",
        &sub("256"),
        &sasl_plaintext(broker.port, "SCRAM-SHA-256", "bob", t256),
        &env,
        t256,
    );
    end_to_end(
        "SASL_PLAINTEXT + SCRAM-SHA-512",
        &sub("512"),
        &sasl_plaintext(broker.port, "SCRAM-SHA-512", "alice", t512),
        &env,
        t512,
    );
    let log = refused(
        "wrong password",
        &sub("wrong"),
        &sasl_plaintext(broker.port, "SCRAM-SHA-512", "alice", t512),
        &[("KAFKA_PASSWORD", WRONG_PASSWORD.to_string())],
        Some(WRONG_PASSWORD),
    );
    assert!(
        log.to_lowercase().contains("authentication"),
        "the log says authentication failed:\n{log}"
    );
}

#[test]
#[ignore = "needs tansu (UID2_TANSU); run by scripts/test.sh"]
fn sasl_ssl_scram_512_from_the_readme_end_to_end() {
    let dir = scratch("sasl-ssl");
    let (_broker, pki, proxy) = sasl_ssl_cluster(&dir, "carol");
    let env = vec![
        ("KAFKA_BROKERS", format!("127.0.0.1:{proxy}")),
        ("KAFKA_USERNAME", "carol".to_string()),
        ("KAFKA_PASSWORD", PASSWORD.to_string()),
        ("KAFKA_CA_LOCATION", pki.ca.display().to_string()),
    ];
    end_to_end(
        "SASL_SSL + SCRAM-SHA-512 (README snippet)",
        &dir,
        &readme_snippet("scram"),
        &env,
        DEFAULT_TOPICS,
    );
}

#[test]
#[ignore = "needs tansu (UID2_TANSU); run by scripts/test.sh"]
fn ssl_with_server_verification_end_to_end_and_an_unknown_ca_refused() {
    let dir = scratch("ssl");
    let (_broker, pki, proxy) = tls_cluster(&dir, false);
    let cluster = |ca: &Path| ssl_only(proxy, ca);
    let ok = dir.join("ok");
    std::fs::create_dir_all(&ok).unwrap();
    end_to_end(
        "SSL with server verification",
        &ok,
        &cluster(&pki.ca),
        &[],
        DEFAULT_TOPICS,
    );
    let bad = dir.join("unknown-ca");
    std::fs::create_dir_all(&bad).unwrap();
    let log = refused("unknown CA", &bad, &cluster(&pki.other_ca), &[], None);
    assert!(
        log.contains("certificate verify failed"),
        "the log says the certificate was not trusted:\n{log}"
    );
}

#[test]
#[ignore = "needs tansu (UID2_TANSU); run by scripts/test.sh"]
fn mtls_from_the_readme_end_to_end_and_a_missing_client_certificate_refused() {
    let dir = scratch("mtls");
    let (_broker, pki, proxy) = tls_cluster(&dir, true);
    let env = vec![
        ("KAFKA_BROKERS", format!("127.0.0.1:{proxy}")),
        ("KAFKA_CA_LOCATION", pki.ca.display().to_string()),
        ("KAFKA_CERT_FILE", pki.client_cert.display().to_string()),
        ("KAFKA_KEY_FILE", pki.client_key.display().to_string()),
    ];
    let ok = dir.join("ok");
    std::fs::create_dir_all(&ok).unwrap();
    end_to_end(
        "mTLS (README snippet)",
        &ok,
        &readme_snippet("mtls"),
        &env,
        DEFAULT_TOPICS,
    );
    let bad = dir.join("no-client-cert");
    std::fs::create_dir_all(&bad).unwrap();
    let cluster = ssl_only(proxy, &pki.ca);
    let log = refused("missing client certificate", &bad, &cluster, &[], None);
    assert!(
        log.contains("certificate required") && log.contains("Kafka authentication or TLS failed"),
        "the log names the TLS failure:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// The deployment files, run as written
// ---------------------------------------------------------------------------------------------------------

fn yaml(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An HTTP GET on 127.0.0.1:`port` that waits for the listener: (status, body).
fn probe(port: u16, path: &str) -> (u16, String) {
    wait_for_port(port);
    http_get(port, path)
}

/// A fake UID2 operator serving `keys_json`, for as long as the test process runs: its base URL.
fn fake_operator(secret: &str, api_key: &str, keys_json: String) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let (secret, api_key) = (secret.to_string(), api_key.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (_operator, url) =
                common::operator::start(&secret, &api_key, keys_json, true).await;
            tx.send(url).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// Starts `args` (the manifest's, the config path mapped into `dir`) with `env`; waits until the probe
/// paths answer 200 on `port`; checks every metric the Grafana dashboard queries is exposed; stops it
/// with SIGTERM within `grace`.
fn run_as_deployed(
    name: &str,
    dir: &Path,
    args: &[String],
    env: &[(String, String)],
    port: u16,
    probe_paths: &[String],
    grace: Duration,
) {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let started = Instant::now();
    // Killed if the test fails before it stops it, so no process outlives the test.
    let mut instance = Instance(Some(
        Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));
    let child = instance.0.as_mut().unwrap();
    // Nothing else may answer on the manifest's port.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || child.try_wait().unwrap().is_some(),
        "{name}: something else listens on {port}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for path in probe_paths {
        loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name}: exited; see {}",
                dir.join(format!("{name}.log")).display()
            );
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, path).0 == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {path} never answered 200"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let ready_after = started.elapsed();
    // Traffic, so that every labelled series has a sample: requests of every status and malformed ones
    // (replayed into the input with the same configuration and environment), and an opt-out through the
    // webhook, which goes round the opt-out topic.
    let requests = traffic(dir).requests;
    let config = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config in the args");
    let replay = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(["replay", "--quiet", "--input"])
        .arg(&requests)
        .args(["--to-topic", DEFAULT_TOPICS.0, "--config", config])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{name}: replay --to-topic with the deployed config: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let token = env
        .iter()
        .find(|(k, _)| k == "UID2_OPTOUT_TOKEN")
        .map(|(_, v)| format!("Bearer {v}"))
        .expect("the webhook's token");
    let optout = format!(
        r#"[{{"user":"{}","optouttime":{}}}]"#,
        common::RAW_UID2,
        wall_clock_ms() / 1000
    );
    let (code, body) = common::broker::http_request(
        port,
        "POST",
        "/optout",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &token),
        ],
        optout.as_bytes(),
    );
    assert_eq!(code, 200, "{name}: the opt-out webhook: {body}");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/uid2-enricher.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queried = dashboard_metrics(&dashboard);
    assert!(queried.len() >= 10, "the dashboard queries {queried:?}");
    // Lag comes with librdkafka's statistics, every 5 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = probe(port, "/metrics");
        let missing: Vec<&String> = queried
            .iter()
            .filter(|m| !metrics.contains(&format!("\n{m}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the dashboard queries {missing:?}, which /metrics does not have:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let stopped_in = common::broker::terminate_within(instance, name, grace);
    println!(
        "RESULT deploy files, {name}: {probe_paths:?} answered 200 after {:.1} s, the dashboard's {} metrics exposed, SIGTERM → exit 0 in {:.1} s (grace {grace:?})",
        ready_after.as_secs_f64(),
        queried.len(),
        stopped_in.as_secs_f64()
    );
}

/// Every metric name in the dashboard's queries.
fn dashboard_metrics(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr"
                        && let Some(expr) = v.as_str()
                    {
                        let mut word = String::new();
                        for c in expr.chars().chain([' ']) {
                            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                                word.push(c);
                            } else {
                                if word.starts_with("uid2_enricher_")
                                    || word.starts_with("process_")
                                {
                                    out.insert(word.clone());
                                }
                                word.clear();
                            }
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(dashboard, &mut out);
    out
}

#[test]
#[ignore = "needs tansu (UID2_TANSU); run by scripts/test.sh"]
fn the_deploy_files_run_as_written() {
    let dir = scratch("deploy");
    let (_broker, pki, proxy) = sasl_ssl_cluster(&dir, "uid2-enricher");
    const API_KEY: &str = "UID2-C-L-999-DeployTestKey";
    const SECRET: &str = "Vt3FRIA2R3fNTqRY5hTsYsvnkq/Gtuw6pfNx94e0ZzA=";
    let generator = Generator::new(5, Mix::default(), wall_clock_ms(), 100, 1000);
    let operator = fake_operator(SECRET, API_KEY, generator.keys_json().to_string());
    // The values a cluster's Secrets would hold, by the names the manifests use.
    let value_of = |name: &str| -> String {
        match name {
            "KAFKA_BROKERS" => format!("127.0.0.1:{proxy}"),
            "KAFKA_USERNAME" => "uid2-enricher".to_string(),
            "KAFKA_PASSWORD" => PASSWORD.to_string(),
            "UID2_API_KEY" => API_KEY.to_string(),
            "UID2_SECRET_KEY" => SECRET.to_string(),
            "UID2_OPTOUT_TOKEN" => "deploy-test-optout-token".to_string(),
            // The EUID operator's, named for a configuration with a key source per operator; this
            // one has the single [uid2] source, so they are set but unused.
            "EUID_API_KEY" => "EUID-C-L-999-DeployTestKey".to_string(),
            "EUID_SECRET_KEY" => SECRET.to_string(),
            other => panic!("the manifests name {other}, which this test does not know"),
        }
    };
    // What an overlay adds here: the test CA, and the operator and broker of this machine.
    let overlay = [
        (
            "KAFKA_CA_LOCATION".to_string(),
            pki.ca.display().to_string(),
        ),
        ("UID2_BASE_URL".to_string(), operator.clone()),
    ];

    // Kubernetes: the ConfigMap's TOML at the mount path, the container's args and env as written.
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let configmap = yaml("deploy/kubernetes/configmap.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let toml = configmap["data"]["enricher.toml"]
        .as_str()
        .expect("the ConfigMap holds enricher.toml");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| m["mountPath"].as_str())
        .expect("the config volume's mount path")
        .to_string();
    let config_dir = dir.join("etc");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("enricher.toml"), toml).unwrap();
    let map_path = |arg: &str| -> String {
        match arg.strip_prefix(&mount) {
            Some(rest) => format!("{}{rest}", config_dir.display()),
            None => arg.to_string(),
        }
    };
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("the container's args")
        .iter()
        .map(|a| map_path(a.as_str().unwrap()))
        .collect();
    let mut env: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("the container's env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = e["value"]
                .as_str()
                .map_or_else(|| value_of(&name), str::to_string);
            (name, value)
        })
        .collect();
    env.extend(overlay.iter().cloned());
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("the http port") as u16;
    let probe_paths: Vec<String> = ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .map(|p| {
            let get = &container[*p]["httpGet"];
            assert_eq!(get["port"], "http", "{p} probes the http port");
            get["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{p}"))
                .to_string()
        })
        .collect();
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let validate = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(["validate", "--config"])
        .arg(config_dir.join("enricher.toml"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "validate on the ConfigMap: {}",
        String::from_utf8_lossy(&validate.stderr)
    );
    run_as_deployed("kubernetes", &dir, &args, &env, port, &probe_paths, grace);

    // systemd: ExecStartPre and ExecStart as written, the binary and config paths mapped here.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/uid2-enricher.service"
    ))
    .unwrap();
    let line = |key: &str| -> Vec<String> {
        let value = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}"));
        let mut words = value.split_whitespace();
        let binary = words.next().unwrap();
        assert!(binary.ends_with("/uid2-enricher"), "{key} runs {binary}");
        words.map(map_path).collect()
    };
    let (pre, start) = (line("ExecStartPre"), line("ExecStart"));
    let stop_timeout = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map_or(Duration::from_secs(90), |v| {
            Duration::from_secs(v.trim_end_matches('s').parse().unwrap())
        });
    let env_names: Vec<String> = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/uid2-enricher.env.example"
    ))
    .unwrap()
    .lines()
    // `NAME=value`, and `#NAME=` for the optional ones the example leaves commented out.
    .filter_map(|l| {
        l.strip_prefix('#')
            .unwrap_or(l)
            .split_once('=')
            .map(|(k, _)| k.to_string())
    })
    .filter(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
    .collect();
    let mut unit_env: Vec<(String, String)> = env_names
        .iter()
        .filter(|n| !overlay.iter().any(|(k, _)| k == *n))
        .map(|n| (n.clone(), value_of(n)))
        .collect();
    unit_env.extend(overlay.iter().cloned());
    let pre_run = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(&pre)
        .env_clear()
        .envs(unit_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        pre_run.status.success(),
        "ExecStartPre: {}",
        String::from_utf8_lossy(&pre_run.stderr)
    );
    run_as_deployed(
        "systemd",
        &dir,
        &start,
        &unit_env,
        port,
        &["/readyz".to_string(), "/healthz".to_string()],
        stop_timeout,
    );
}
