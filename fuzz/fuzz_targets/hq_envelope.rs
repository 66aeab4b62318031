//! What HQ's receiver is sent: an envelope from anyone on the internet (input starting with the version
//! byte), or, input starting with `{`, the summary JSON a store (or whoever holds its key) encrypts to HQ.
//! The second mode exists because the fuzzer cannot forge an age ciphertext: without it, the summary
//! checks behind `open` would only ever see the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpmesh_fuzz::{hq_identity, store_key};
use lpmesh_hq::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE_BYTES};
use lpmesh_hq::summary::Summary;
use lpmesh_hq::vv::{Decision, Relation, VersionVector};

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        summary(data);
    } else {
        envelope(data);
    }
});

fn envelope(data: &[u8]) {
    let env = match Envelope::decode(data) {
        Ok(env) => env,
        Err(e) => {
            // Every refusal is counted under its label and logged.
            let _ = (e.reason(), e.to_string());
            return;
        }
    };
    let bytes = env.encode();
    // Input may spell fields by index, shorter than the names `encode` writes.
    let back = if bytes.len() <= MAX_ENVELOPE_BYTES {
        let back = Envelope::decode(&bytes).expect("an envelope that decoded decodes after encode");
        assert_eq!(back, env, "an envelope changed through encode/decode");
        assert_eq!(back.encode(), bytes, "encoding is not stable");
        back
    } else {
        env.clone()
    };
    let key = store_key().public();
    let verified = env.verify(&key);
    // The signature covers the fields, not the bytes.
    assert_eq!(back.verify(&key).is_ok(), verified.is_ok());
    if let Err(e) = &verified {
        assert!(matches!(e, EnvelopeError::BadSignature), "{e}");
    }
    // HQ opens only what verifies, but opening anything must be safe: a store's key can leak.
    match env.open(hq_identity()) {
        Ok(s) => accepted(&env, &s),
        Err(e) => {
            let _ = (e.reason(), e.to_string());
        }
    }
}

fn summary(plain: &[u8]) {
    let parsed = serde_json::from_slice::<Summary>(plain);
    // The envelope says what the summary says, so `open` refuses only for the summary's own faults.
    let like = parsed.as_ref().ok().cloned().unwrap_or_default();
    let env = Envelope {
        store: like.store,
        period_start_ms: like.period_start_ms,
        period_secs: like.period_secs,
        vv: like.vv,
        ciphertext: age::encrypt(&hq_identity().to_public(), plain).expect("encrypting to an x25519 recipient"),
        signature: Vec::new(),
    };
    match (env.open(hq_identity()), parsed) {
        (Ok(s), Ok(p)) => {
            assert_eq!(s, p, "open returns the summary that was sealed");
            accepted(&env, &s);
        }
        (Ok(_), Err(e)) => panic!("opened a summary that does not parse: {e}"),
        (Err(EnvelopeError::BadSummary(_)), Err(_)) => {}
        (Err(EnvelopeError::Invalid(e)), Ok(p)) => assert_eq!(p.validate(), Err(e)),
        (Err(e), p) => panic!("unexpected refusal {e} of {p:?}"),
    }
}

/// What HQ does with a summary it accepted: checks it said what the envelope said, stores it, and shows
/// totals on the dashboard and in the export.
fn accepted(env: &Envelope, s: &Summary) {
    assert_eq!(
        (&s.store, s.period_start_ms, s.period_secs, &s.vv),
        (&env.store, env.period_start_ms, env.period_secs, &env.vv)
    );
    assert_eq!(s.validate(), Ok(()), "open returned a summary that does not validate");
    let _ = (s.footfall_totals(), s.incidents_total());
    assert_eq!(Decision::decide(None, &s.vv), Decision::Insert);
    assert_eq!(
        Decision::decide(Some(&s.vv), &s.vv),
        Decision::Unchanged,
        "a repeat changes nothing"
    );
    // Every HQ replica must keep the same one of two summaries, whichever arrived first.
    let stored = VersionVector(
        [("nodeA".to_string(), 2), ("nodeB".to_string(), 1)]
            .into_iter()
            .collect(),
    );
    let (incoming_wins, stored_wins) = (
        Decision::decide(Some(&stored), &s.vv).writes(),
        Decision::decide(Some(&s.vv), &stored).writes(),
    );
    assert!(
        incoming_wins != stored_wins || s.vv.relation(&stored) == Relation::Equal,
        "both or neither of two summaries kept: {:?} vs {stored:?}",
        s.vv
    );
}
