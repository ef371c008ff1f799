//! libFuzzer entry point for the request-body meter (WAV, multipart, JSON text, raw audio);
//! the target's logic and invariants are in coregate_gateway::meter::fuzzing::body, which
//! tests/fuzz_corpus.rs replays the corpus through.
#![no_main]

use coregate_fuzz as _; // the allocation cap (fuzz/src/lib.rs)

libfuzzer_sys::fuzz_target!(|data: &[u8]| coregate_gateway::meter::fuzzing::body(data));
