//! A node's configuration file as an installer or operator writes it: every mistake must come back as
//! a problem naming the file and line, never as a panic, and what passes must run.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lpmesh_node::config::{ConfigError, NodeConfig};

fuzz_target!(|data: &[u8]| {
    // The node reads its file with `read_to_string`: invalid UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("node.toml");
    match NodeConfig::parse(text, file) {
        Ok(cfg) => {
            // The node compiles each camera's rules at start: a checked file must not fail there.
            assert!(
                cfg.schedule.compile().is_ok(),
                "the schedule passed the checks but does not compile"
            );
            for cam in &cfg.cameras {
                let spec = cfg
                    .camera_spec(cam, "fuzz-model")
                    .expect("a camera that passed the checks compiles");
                assert_eq!(spec.zones.len(), cam.zones.len(), "a checked zone was dropped");
                assert_eq!(spec.lines.len(), cam.lines.len(), "a checked counting line was dropped");
            }
            let _ = (cfg.tracker_config(), cfg.decode_threshold(), cfg.runtime.threads());
        }
        Err(ConfigError::Invalid { problems }) => {
            assert!(!problems.is_empty(), "refused without saying why");
            let lines = text.matches('\n').count() + 1;
            for p in &problems {
                assert_eq!(p.file, file);
                assert!(
                    p.line.is_none_or(|l| (1..=lines).contains(&l)),
                    "line {:?} of {lines}",
                    p.line
                );
                assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
            }
            let _ = ConfigError::Invalid { problems }.to_string();
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse does not read files: {e}"),
    }
});
