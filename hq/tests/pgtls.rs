//! HQ's PostgreSQL over TLS, against a real PostgreSQL that speaks TLS with a certificate from a CA
//! this test makes: each `sslmode` does what libpq users expect, and a wrong CA or a wrong name is
//! refused before any query is sent.

use lpmesh_hq::store::{HqStore, Postgres};
use lpmesh_hq::testpg::TestPg;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a server certificate for `localhost` only (not 127.0.0.1) signed by it.
fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test database CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

async fn ssl_in_use(store: &HqStore) -> bool {
    let HqStore::Postgres(p) = store else { unreachable!() };
    p.ssl_in_use().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_does_what_it_says_and_a_wrong_ca_or_name_is_refused() {
    let ours = pki();
    let pg = tokio::task::spawn_blocking({
        let (c, k) = (ours.cert_pem.clone(), ours.key_pem.clone());
        move || TestPg::start_tls(c.as_bytes(), k.as_bytes())
    })
    .await
    .unwrap()
    .unwrap();
    let dir = pg.dir().to_path_buf();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ours.ca_pem).unwrap();
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, pki().ca_pem).unwrap();
    let port = pg.port;
    let url = |host: &str, extra: &str| format!("host={host} port={port} user=postgres dbname=postgres {extra}");

    let connect = |u: String| async move { Postgres::connect(&u, 1).await.map(HqStore::Postgres) };
    // Plain, as before, and what the migrations need works over every mode below.
    assert!(!ssl_in_use(&connect(url("127.0.0.1", "")).await.unwrap()).await);
    assert!(!ssl_in_use(&connect(url("127.0.0.1", "sslmode=prefer")).await.unwrap()).await);
    // Encrypted whoever answers.
    assert!(ssl_in_use(&connect(url("127.0.0.1", "sslmode=require")).await.unwrap()).await);
    // The chain to our CA, any name.
    let s = connect(url(
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={}", ca.display()),
    ))
    .await
    .unwrap();
    assert!(ssl_in_use(&s).await);
    // The chain and the name.
    let full = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let s = connect(url("localhost", &full)).await.unwrap();
    assert!(ssl_in_use(&s).await);
    let uri = format!(
        "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    assert!(ssl_in_use(&connect(uri).await.unwrap()).await);
    // Refused: a name the certificate does not carry, a CA that did not sign it, and `require` with
    // a CA given (libpq then checks the chain).
    for (what, u) in [
        ("wrong name", url("127.0.0.1", &full)),
        (
            "other CA, verify-full",
            url(
                "localhost",
                &format!("sslmode=verify-full sslrootcert={}", other.display()),
            ),
        ),
        (
            "other CA, verify-ca",
            url(
                "127.0.0.1",
                &format!("sslmode=verify-ca sslrootcert={}", other.display()),
            ),
        ),
        (
            "other CA, require",
            url("127.0.0.1", &format!("sslmode=require sslrootcert={}", other.display())),
        ),
    ] {
        let e = match connect(u).await {
            Ok(_) => panic!("{what}: connected"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("certificate") || e.contains("Certificate"), "{what}: {e}");
    }
    let e = match connect(url("localhost", "sslmode=verify-full sslrootcert=/nonexistent/ca.pem")).await {
        Ok(_) => panic!("connected without its CA file"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}
