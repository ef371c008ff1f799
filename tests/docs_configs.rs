//! The configs the docs show are configs that work: every `toml` block of docs/providers.md
//! and coregate.example.toml pass `coregate check`, with their key variables set, their
//! secret files and certificates made here (the docs' paths replaced by these).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::certs::TestCa;
use common::*;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn check(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg(&path)
        .env("OPENAI_API_KEY", "sk-docs-openai")
        .env("ELEVENLABS_API_KEY", "docs-elevenlabs")
        .env("CARTESIA_API_KEY", "docs-cartesia")
        .output()
        .unwrap();
    let all = output_text(&out);
    (out.status.success(), all)
}

#[test]
fn every_provider_config_in_the_docs_passes_check() {
    let dir = tmpdir("docs-configs");
    let ca = TestCa::new(&dir, "docs");
    let main = ca.leaf(&dir, "cert", &["gateway.example.com"], false);
    let stt = ca.leaf(&dir, "stt", &["stt.example.com"], false);
    for secret in ["deepgram", "speech"] {
        std::fs::write(dir.join(secret), format!("docs-{secret}-key\n")).unwrap();
    }
    let d = dir.display();
    let replace = [
        ("/etc/coregate/cert.pem", main.cert.display().to_string()),
        ("/etc/coregate/key.pem", main.key.display().to_string()),
        ("/etc/coregate/stt.pem", stt.cert.display().to_string()),
        ("/etc/coregate/stt.key", stt.key.display().to_string()),
        (
            "/etc/coregate/internal-ca.pem",
            ca.pem.display().to_string(),
        ),
        ("file:/run/secrets/", format!("file:{d}/")),
    ];
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/providers.md")).unwrap();
    let blocks = toml_blocks(&doc);
    assert!(blocks.len() >= 5, "docs/providers.md lost its configs");
    for (i, block) in blocks.iter().enumerate() {
        let text = replace
            .iter()
            .fold(block.clone(), |t, (from, to)| t.replace(from, to));
        let (ok, out) = check(&dir, &format!("block{i}"), &text);
        assert!(ok, "docs/providers.md block {i}:\n{block}\n{out}");
        for secret in [
            "sk-docs-openai",
            "docs-elevenlabs",
            "docs-cartesia",
            "docs-deepgram-key",
        ] {
            assert!(!out.contains(secret), "block {i} printed a key:\n{out}");
        }
    }
    let example = std::fs::read_to_string(format!("{ROOT}/coregate.example.toml")).unwrap();
    let (ok, out) = check(&dir, "example", &example);
    assert!(ok, "coregate.example.toml:\n{out}");
}
