//! What the binary was built with and the README's "Connecting to your cluster" snippets: `--version`
//! names librdkafka and its features; each snippet, its `${…}` filled from a test environment, is a valid
//! configuration whose every Kafka client librdkafka creates (the check `run` does before it connects);
//! a literal password is refused with the fix. With the `oidc` feature the OIDC snippet's client also
//! fetches its token from a token endpoint started here, with the client credentials.
//!
//! The SCRAM and mTLS snippets also run end to end through tansu in `tests/secured_cluster.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use uid2_enricher::config;
use uid2_enricher::stage::kafka::KafkaClients;

fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("snippets");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The README's snippet `name`, as written.
fn snippet(name: &str) -> String {
    let readme = readme();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &readme[readme.find(&marker).expect("the README has the snippet")..];
    let start = after.find("```toml\n").unwrap() + "```toml\n".len();
    let end = after[start..].find("```").unwrap();
    after[start..start + end].to_string()
}

/// A client certificate and key that librdkafka can load.
fn client_pem(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["uid2-enricher".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn settings(name: &str, env: &[(&str, String)]) -> config::Settings {
    let text = format!(
        "{}\n[uid2]\nkeys_file = \"{}\"\n",
        snippet(name),
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo-keys.json")
    );
    config::parse_with_env(&text, &format!("README snippet {name}"), &|var| {
        env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone())
    })
    .unwrap_or_else(|e| panic!("README snippet {name}: {e}"))
}

fn env_for(dir: &Path) -> Vec<(&'static str, String)> {
    let (cert, key) = client_pem(dir);
    vec![
        ("KAFKA_BROKERS", "127.0.0.1:1".to_string()),
        ("KAFKA_API_KEY", "ABCDEFGHIJKLMNOP".to_string()),
        ("KAFKA_API_SECRET", "cc-api-secret-SnippetQ1".to_string()),
        ("KAFKA_USERNAME", "alice".to_string()),
        ("KAFKA_PASSWORD", "scram-password-SnippetQ2".to_string()),
        ("KAFKA_CERT_FILE", cert.display().to_string()),
        ("KAFKA_KEY_FILE", key.display().to_string()),
        ("KAFKA_OIDC_CLIENT_ID", "uid2-enricher".to_string()),
        (
            "KAFKA_OIDC_CLIENT_SECRET",
            "oidc-client-secret-SnippetQ3".to_string(),
        ),
        (
            "KAFKA_OIDC_TOKEN_URL",
            "http://127.0.0.1:1/token".to_string(),
        ),
    ]
}

#[test]
fn version_names_librdkafka_and_its_features() {
    let out = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("uid2-enricher {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let features = text
        .split("builtin.features=")
        .nth(1)
        .expect("builtin.features")
        .trim();
    let features: Vec<&str> = features.split(',').collect();
    assert!(text.contains("librdkafka 2."), "{text}");
    for needed in [
        "gzip",
        "snappy",
        "lz4",
        "zstd",
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
    ] {
        assert!(features.contains(&needed), "{needed} missing: {text}");
    }
    assert_eq!(
        features.contains(&"oidc"),
        cfg!(feature = "oidc"),
        "oidc exactly with the oidc feature: {text}"
    );
    println!("RESULT --version: {}", text.replace('\n', " | "));
}

#[test]
fn the_readme_snippets_make_every_client_the_stage_makes() {
    let dir = scratch();
    let env = env_for(&dir);
    for name in ["sasl-plain", "scram", "mtls"] {
        let s = settings(name, &env);
        KafkaClients::new(&s.kafka)
            .check(&s.kafka.group_id)
            .unwrap_or_else(|e| panic!("README snippet {name}: {e}"));
        assert!(
            !format!("{s:?}").contains("SnippetQ"),
            "{name}: a secret in Debug"
        );
        println!("RESULT README snippet {name}: parsed, every client created");
    }
    // OIDC needs the `oidc` build; without it librdkafka refuses the client, and says why.
    let s = settings("oidc", &env);
    let oidc = KafkaClients::new(&s.kafka).check(&s.kafka.group_id);
    if cfg!(feature = "oidc") {
        oidc.unwrap_or_else(|e| panic!("README snippet oidc: {e}"));
        println!("RESULT README snippet oidc: parsed, every client created (oidc feature)");
    } else {
        let e = oidc.expect_err("OIDC without the oidc feature").to_string();
        assert!(e.to_lowercase().contains("oidc"), "{e}");
        assert!(!e.contains("SnippetQ"), "{e}");
        println!("RESULT README snippet oidc without the oidc feature: refused: {e}");
    }
}

#[test]
fn a_literal_password_is_refused_with_the_fix() {
    let dir = scratch();
    let path = dir.join("literal-password.toml");
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"k:9093\"\n[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"hunter2-Literal\"\n[uid2]\nkeys_file = \"{}\"\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo-keys.json")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`sasl.password` in [kafka.client] is a secret written in the file"),
        "{stderr}"
    );
    assert!(stderr.contains("literal-password.toml:5:19"), "{stderr}");
    assert!(
        stderr.contains("\"sasl.password\" = \"${KAFKA_SASL_PASSWORD}\""),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    println!("RESULT literal sasl.password: {}", stderr.trim());
}

/// With the `oidc` feature: the OIDC snippet's consumer asks the token endpoint for a token, with the
/// client id and secret as HTTP Basic credentials and the client-credentials grant.
#[cfg(feature = "oidc")]
#[test]
fn the_oidc_snippet_fetches_a_token_with_the_client_credentials() {
    use base64::Engine as _;
    use rdkafka::consumer::BaseConsumer;
    use std::io::{BufRead, BufReader, Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let jwt = format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(
                r#"{{"sub":"uid2-enricher","exp":{exp},"iat":{}}}"#,
                exp - 3600
            )),
            b64.encode("sig")
        );
        let response =
            format!(r#"{{"access_token":"{jwt}","token_type":"bearer","expires_in":3600}}"#);
        write!(
            socket,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
            response.len()
        )
        .unwrap();
        (head, String::from_utf8(body).unwrap())
    });

    let dir = scratch();
    let mut env = env_for(&dir);
    env.retain(|(k, _)| *k != "KAFKA_OIDC_TOKEN_URL");
    env.push((
        "KAFKA_OIDC_TOKEN_URL",
        format!("http://127.0.0.1:{port}/token"),
    ));
    let s = settings("oidc", &env);
    let consumer: BaseConsumer = KafkaClients::new(&s.kafka)
        .stage_consumer(&s.kafka.group_id)
        .unwrap()
        .create()
        .unwrap();
    let (head, body) = server.join().unwrap();
    drop(consumer);
    let expected = base64::engine::general_purpose::STANDARD
        .encode("uid2-enricher:oidc-client-secret-SnippetQ3");
    assert!(head.starts_with("POST /token"), "{head}");
    assert!(
        head.contains(&format!("Authorization: Basic {expected}")),
        "{head}"
    );
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    println!(
        "RESULT README snippet oidc: the client fetched its token from the endpoint with the client credentials"
    );
}
