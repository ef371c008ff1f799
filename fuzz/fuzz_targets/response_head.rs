//! libFuzzer entry point; the target's logic and invariants are in
//! coregate_http1::fuzzing::response_head, which tests/fuzz_corpus.rs replays the corpus through.
#![no_main]

// The allocation cap (fuzz/src/lib.rs).
use coregate_fuzz as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| coregate_http1::fuzzing::response_head(data));
