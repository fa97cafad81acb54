//! The command line as a shell user meets it: `validate` (exit 0, or 1 with every problem), shell
//! completions and the man page, and a reader that closes the pipe early (`gen --output - | head`),
//! which is not an error.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_uid2-enricher"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn validate_accepts_the_dev_config_and_the_production_reference_with_its_variables() {
    let out = binary()
        .args(["validate", "--config", "config/dev.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "config/dev.toml: ok\n"
    );

    let out = binary()
        .args(["validate", "--config", "config/enricher.toml"])
        .env("UID2_API_KEY", "api-key")
        .env(
            "UID2_SECRET_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without the operator's credentials the production reference cannot run.
    let out = binary()
        .args(["validate", "--config", "config/enricher.toml"])
        .env_remove("UID2_API_KEY")
        .env_remove("UID2_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UID2_API_KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_lists_every_problem_librdkafka_and_the_key_source_find() {
    let dir = scratch();
    let keys = dir.join("not-keys.json");
    std::fs::write(&keys, "{\"body\": 7}").unwrap();
    let config = dir.join("bad-kafka.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "k:9093"
[kafka.client]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "NO-SUCH-MECHANISM"
[kafka.producer]
"compression.type" = "brotli"
[uid2]
keys_file = "{}"
"#,
            keys.display()
        ),
    )
    .unwrap();
    let out = binary()
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("parsing keys file"), "{stderr}");
    assert!(stderr.contains("NO-SUCH-MECHANISM"), "{stderr}");
    assert!(stderr.contains("brotli"), "{stderr}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    println!("RESULT validate on a bad config:\n{stderr}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    for (shell, marker) in [
        ("bash", "_uid2__enricher()"),
        ("zsh", "#compdef uid2-enricher"),
        ("fish", "complete -c uid2-enricher"),
    ] {
        let out = binary().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("validate"),
            "{shell} completes the subcommands"
        );
    }
    let out = binary().arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    assert!(page.contains(".TH uid2-enricher 1"), "{page}");
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let dir = scratch();
    let mut child = binary()
        .args(["gen", "--count", "200000", "--output", "-", "--keys-out"])
        .arg(dir.join("gen-keys.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What `| head -3` does: read a few lines, then close the pipe.
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with('{'), "{line}");
    }
    drop(reader);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("error"), "{stderr}");

    // `completions bash | head -1`: the script is longer than a pipe's buffer.
    let mut child = binary()
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}
