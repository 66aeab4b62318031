//! A grant to fetch evidence, as a tablet's URL brings it to the node that keeps the evidence: any
//! text is refused or taken without a panic, and only a grant signed by the member it names, for
//! this evidence, within its time, is taken.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpmesh_mesh::record::Origin;
use lpmesh_node::event::EvidenceId;
use lpmesh_node::evidence::token::{Grant, MAX_GRANT_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The member "front" (the key the corpus's seeds are signed with) and the evidence asked for
    // are fixed, and so is the time.
    static FRONT: std::sync::OnceLock<Origin> = std::sync::OnceLock::new();
    let front = *FRONT.get_or_init(|| {
        let key = libp2p_identity::Keypair::ed25519_from_bytes([7; 32]).expect("a key");
        Origin::of(&key).expect("an Ed25519 key")
    });
    let id = EvidenceId::parse("0123456789abcdef0123456789abcdef").expect("a valid id");
    let now = 1_800_000_000_000;
    for download in [false, true] {
        if let Ok(g) = Grant::verify("shop-1", text, &id, download, now, |name| {
            (name == "front").then_some(front)
        }) {
            // Taken: then it was short, named this evidence and the member, and has time left.
            assert!(text.len() <= MAX_GRANT_LEN);
            assert_eq!(g.evidence, id);
            assert_eq!(g.issuer, "front");
            assert!(g.expires_ms > now - 120_000 && g.expires_ms - g.issued_ms <= 300_000);
            assert!(!download || g.download);
        }
    }
    // Ids come from URLs too.
    if let Some(i) = EvidenceId::parse(text) {
        assert_eq!(i.as_str(), text);
        assert!(text.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
});
