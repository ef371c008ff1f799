//! libFuzzer entry point for the config loader: `Config::parse` (TOML, serde, the keys'
//! checks, `validate`) on any UTF-8 text, then `validate` again on what it accepted.
//! tests/fuzz_corpus.rs replays the corpus through the same two calls.
#![no_main]

use coregate_fuzz as _; // the allocation cap (fuzz/src/lib.rs)
use coregate_gateway::config::Config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Config::parse reads the files a config names (api_key = "file:...", certificates): a
    // text naming a device (/dev/zero) would read forever. A config is the operator's, not a
    // peer's, so such inputs are skipped rather than fuzzed (tests/fuzz_corpus.rs skips them too).
    if ["dev/", "proc/", "sys/"].iter().any(|d| text.contains(d)) {
        return;
    }
    if let Ok(cfg) = Config::parse(text, "fuzz") {
        let _ = cfg.validate("fuzz");
    }
});
