//! HQ's configuration file: mistakes are errors naming the file, and what passes keeps HQ's own limits.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lpmesh_hq::config::{HqConfig, HqConfigError};
use lpmesh_hq::envelope::MAX_ENVELOPE_BYTES;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("hq.toml");
    match HqConfig::parse(text, file) {
        Ok(cfg) => {
            assert_eq!(
                cfg.tls_cert.is_some(),
                cfg.tls_key.is_some(),
                "a certificate without its key"
            );
            assert!((1024..=MAX_ENVELOPE_BYTES).contains(&cfg.max_envelope_bytes));
        }
        Err(e) => {
            let message = e.to_string();
            match e {
                HqConfigError::Invalid { path, .. } => assert_eq!(path, file),
                HqConfigError::Read { .. } => panic!("parse does not read files: {message}"),
            }
            assert!(message.starts_with("hq.toml: "), "the error names the file: {message}");
        }
    }
});
