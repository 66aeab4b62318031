//! One-time enrolment of a new node into a store.
//!
//! An invitation holds no store secret. `lpmesh invite` (or a manager on the UI's Invite page) creates
//! one on a member: a random id, a random one-time secret (128 bits) and an expiry (15 minutes by
//! default), kept owner-only in the member's data directory (`invites/`). The token handed to the
//! installer carries the id, the secret, the store's name and public signing key, and where to reach
//! the member — nothing that opens the store's history or its network.
//!
//! The joining node proves it knows the secret with SPAKE2 (a password-authenticated key exchange,
//! RustCrypto's `spake2` on Ed25519): an eavesdropper on the exchange learns nothing it could guess the
//! secret from offline, and an impostor member learns nothing either. Both sides confirm the shared key
//! (HMAC over the whole transcript) before anything else moves. The joiner then signs the transcript
//! with its new node key; the member marks the invitation used (durably, before answering), and hands
//! over the store's secrets sealed with ChaCha20-Poly1305 under a key derived from the exchange, bound
//! to the joiner's node key (associated data). An invitation works once: a used, expired, unknown or
//! over-tried one is refused with a reason both sides print.
//!
//! The exchange runs over plain TCP on the member's enrolment listener (`[mesh] enrol_listen`), in
//! length-prefixed JSON frames of bounded size, with a deadline per connection: a joiner cannot reach
//! the private mesh yet (it has no network key), and the exchange protects itself.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use libp2p_identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::keys::StoreSecrets;

pub const TOKEN_PREFIX: &str = "lpmesh-invite-1.";
pub const INVITES_DIR: &str = "invites";
/// Where a running node writes the address its enrolment listener answers on (for `lpmesh invite`).
pub const ENROL_ADDR_FILE: &str = "enrol.addr";
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// The longest an invitation may live: an invitation is for an installer standing at the new node.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 86_400);
/// Exchanges started on one invitation: one honest try and a couple of retries after a network
/// failure. Guessing a 128-bit secret online is hopeless anyway; this also ends replays of a token.
pub const MAX_ATTEMPTS: u32 = 3;
/// Largest frame either side accepts (the sealed secrets are well under 2 KiB).
pub const MAX_FRAME: usize = 16 * 1024;
/// One enrolment, start to end.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// How long a new connection may take to say hello.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(3);
/// Enrolments a member serves at once; more are refused as busy at once.
pub const MAX_CONCURRENT: usize = 4;

/// Any error, kept as the source of ours: its own message and its causes stay readable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid invitation token: {0}")]
    Token(#[source] BoxError),
    #[error("the invitation was refused by the member: {0}")]
    Refused(Refusal),
    #[error("cannot reach the member at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the enrolment exchange failed: {0}")]
    Protocol(#[source] BoxError),
    #[error("the member did not prove it knows the invitation's secret: it is not the store's member, or the token was altered")]
    NotTheMember,
    #[error("the secrets received are not the store's named in the token ({0})")]
    WrongStore(String),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
}

/// Why a member refused an invitation; printed by both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    #[error("this invitation is unknown to the member (created on another node, or removed)")]
    Unknown,
    #[error("this invitation has expired: ask a manager for a new one")]
    Expired,
    #[error("this invitation was used already: each works once; ask a manager for a new one")]
    Used,
    #[error("this invitation was tried too many times and is void: ask a manager for a new one")]
    TooManyAttempts,
    #[error("the proof of the invitation's secret was wrong")]
    BadProof,
    #[error("the member is busy or cannot store the admission: try again")]
    Unavailable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Expired => "expired",
            Refusal::Used => "used",
            Refusal::TooManyAttempts => "too_many_attempts",
            Refusal::BadProof => "bad_proof",
            Refusal::Unavailable => "unavailable",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EnrolError + '_ {
    move |source| EnrolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, EnrolError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| EnrolError::Protocol(format!("bad base64: {e}").into()))
}

/// An invitation as the member keeps it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    pub id: String,
    secret: String,
    pub store: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub attempts: u32,
    #[serde(default)]
    pub used_by: Option<String>,
    #[serde(default)]
    pub used_ms: Option<u64>,
    /// The new node's rank in the uplink election, written into its admission record.
    #[serde(default)]
    pub priority: u8,
    /// The new node's name, written into its admission record.
    #[serde(default)]
    pub name: Option<String>,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("id", &self.id)
            .field("store", &self.store)
            .field("expires_ms", &self.expires_ms)
            .field("used_by", &self.used_by)
            .finish_non_exhaustive()
    }
}

/// What the installer carries to the new node.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub store: String,
    /// The store's public signing key, as a peer id: the secrets received must match it.
    pub store_key: String,
    pub id: String,
    secret: String,
    /// The member's enrolment listener, `host:port`.
    pub enrol: String,
    /// Mesh addresses to dial first once enrolled.
    pub bootstrap: Vec<String>,
    pub expires_ms: u64,
    /// The node name the new node is admitted under (its configuration must say the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("store", &self.store)
            .field("id", &self.id)
            .field("enrol", &self.enrol)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", b64(&json))
    }

    pub fn decode(text: &str) -> Result<Self, EnrolError> {
        let text = text.trim();
        if text.starts_with("lpmesh-join-1.") {
            return Err(EnrolError::Token(
                "this is an old join token that carried the store's secrets: it is no longer accepted; \
                 create an invitation with `lpmesh invite` on a running node"
                    .into(),
            ));
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| EnrolError::Token(format!("it does not start with {TOKEN_PREFIX}").into()))?;
        if body.len() > MAX_FRAME {
            return Err(EnrolError::Token("it is too long".into()));
        }
        let json = unb64(body).map_err(|_| EnrolError::Token("it is not base64".into()))?;
        let t: Token = serde_json::from_slice(&json).map_err(|e| EnrolError::Token(e.into()))?;
        if t.id.len() != 32 || !t.id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(EnrolError::Token("bad invitation id".into()));
        }
        if unb64(&t.secret).map(|s| s.len()).ok() != Some(16) {
            return Err(EnrolError::Token("bad invitation secret".into()));
        }
        Ok(t)
    }
}

fn invite_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(INVITES_DIR).join(format!("{id}.json"))
}

/// Writes `inv` atomically (temporary file, fsync, rename, fsync of the directory): a crash leaves
/// the old state or the new, and "used" is on disk before the secrets leave.
fn save(data_dir: &Path, inv: &Invitation) -> Result<(), EnrolError> {
    let dir = data_dir.join(INVITES_DIR);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = invite_path(data_dir, &inv.id);
    // A name of its own per write: two exchanges (or two processes) saving at once never interleave.
    let tmp = path.with_extension(format!("tmp.{:016x}", rand::random::<u64>()));
    let json = serde_json::to_vec_pretty(inv).map_err(|e| EnrolError::Protocol(e.into()))?;
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&json).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
}

fn claim_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(INVITES_DIR).join(format!("{id}.used"))
}

/// Takes the invitation for one joiner, atomically across tasks and processes (the node and an
/// `lpmesh invite --serve` may answer the same directory): only one exchange ever creates the file.
fn claim(data_dir: &Path, id: &str, node: &str) -> Result<bool, EnrolError> {
    let path = claim_path(data_dir, id);
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(node.as_bytes()).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            let dir = data_dir.join(INVITES_DIR);
            fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(EnrolError::Io { path, source: e }),
    }
}

/// Serialises the read-modify-write of invitation files within this process (attempt counts).
static INVITES_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load(data_dir: &Path, id: &str) -> Result<Option<Invitation>, EnrolError> {
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let path = invite_path(data_dir, id);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice::<Invitation>(&b)
            .map(|mut inv| {
                if inv.used_by.is_none() && claim_path(data_dir, id).exists() {
                    inv.used_by = Some(fs::read_to_string(claim_path(data_dir, id)).unwrap_or_default());
                }
                Some(inv)
            })
            .map_err(|e| EnrolError::Protocol(format!("{}: {e}", path.display()).into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EnrolError::Io { path, source: e }),
    }
}

/// What an invitation gives the node that uses it, written into its admission record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Its node name (`node` in its configuration): the store takes events and actions from it only
    /// under this name.
    pub name: Option<String>,
    /// Its rank in the uplink election.
    pub priority: u8,
}

/// Creates an invitation on a member. `enrol` is where the member's listener answers.
pub fn invite(
    data_dir: &Path,
    secrets: &StoreSecrets,
    enrol: &str,
    bootstrap: Vec<String>,
    expires: Duration,
    grant: Grant,
    now_ms: u64,
) -> Result<(Invitation, Token), EnrolError> {
    let expires = expires.min(MAX_EXPIRY);
    prune(data_dir, now_ms);
    let id: [u8; 16] = rand::random();
    let secret: [u8; 16] = rand::random();
    let inv = Invitation {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        secret: b64(&secret),
        store: secrets.store.clone(),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(expires.as_millis().min(u64::MAX as u128) as u64),
        attempts: 0,
        used_by: None,
        used_ms: None,
        priority: grant.priority,
        name: grant.name.clone(),
    };
    save(data_dir, &inv)?;
    let store_key = secrets.signing_key()?.public().to_peer_id().to_string();
    let token = Token {
        store: inv.store.clone(),
        store_key,
        id: inv.id.clone(),
        secret: inv.secret.clone(),
        enrol: enrol.to_string(),
        bootstrap,
        expires_ms: inv.expires_ms,
        name: grant.name,
    };
    Ok((inv, token))
}

/// Forgets invitations expired more than a day ago (kept that long so a late joiner still hears
/// "expired" rather than "unknown"), with their claim files.
fn prune(data_dir: &Path, now_ms: u64) {
    const KEEP_MS: u64 = 86_400_000;
    for inv in list(data_dir) {
        if inv.expires_ms.saturating_add(KEEP_MS) < now_ms {
            let _ = fs::remove_file(invite_path(data_dir, &inv.id));
            let _ = fs::remove_file(claim_path(data_dir, &inv.id));
        }
    }
}

/// Every invitation this member holds (for `lpmesh invite --list` and the UI).
pub fn list(data_dir: &Path) -> Vec<Invitation> {
    let Ok(rd) = fs::read_dir(data_dir.join(INVITES_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<Invitation> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let id = name.strip_suffix(".json")?.to_string();
            load(data_dir, &id).ok().flatten()
        })
        .collect();
    out.sort_by_key(|i| i.created_ms);
    out
}

fn identity(store: &str, id: &str) -> Identity {
    Identity::new(format!("lpmesh-enrol-1|{store}|{id}").as_bytes())
}

struct Keys {
    member_confirm: [u8; 32],
    joiner_confirm: [u8; 32],
    seal: [u8; 32],
}

fn derive(shared: &[u8], transcript: &[u8]) -> Keys {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(transcript), shared);
    let mut k = Keys {
        member_confirm: [0; 32],
        joiner_confirm: [0; 32],
        seal: [0; 32],
    };
    // Expanding 32 bytes from SHA-256's HKDF cannot fail (the limit is 255 x 32).
    let _ = hk.expand(b"member confirms", &mut k.member_confirm);
    let _ = hk.expand(b"joiner confirms", &mut k.joiner_confirm);
    let _ = hk.expand(b"sealed secrets", &mut k.seal);
    k
}

fn mac(key: &[u8; 32], transcript: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: the error case cannot happen, and an empty tag never verifies.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(transcript);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn mac_ok(key: &[u8; 32], transcript: &[u8], tag: &[u8]) -> bool {
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return false;
    };
    m.update(transcript);
    m.verify_slice(tag).is_ok()
}

fn bind_key(t: &[u8], node: &[u8]) -> Vec<u8> {
    let mut v = t.to_vec();
    v.extend((node.len() as u32).to_be_bytes());
    v.extend(node);
    v
}

fn transcript(store: &str, id: &str, joiner_msg: &[u8], member_msg: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for part in [
        b"lpmesh-enrol-1".as_slice(),
        store.as_bytes(),
        id.as_bytes(),
        joiner_msg,
        member_msg,
    ] {
        t.extend((part.len() as u32).to_be_bytes());
        t.extend(part);
    }
    t
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Msg {
    Hello {
        id: String,
        spake: String,
    },
    Challenge {
        spake: String,
        confirm: String,
    },
    Proof {
        confirm: String,
        node_key: String,
        signature: String,
    },
    Admitted {
        sealed: String,
    },
    Refused {
        reason: Refusal,
    },
}

async fn send<S: AsyncWriteExt + Unpin>(s: &mut S, m: &Msg) -> Result<(), EnrolError> {
    let json = serde_json::to_vec(m).map_err(|e| EnrolError::Protocol(e.into()))?;
    let io = |e: std::io::Error| EnrolError::Protocol(e.into());
    s.write_all(&(json.len() as u32).to_be_bytes()).await.map_err(io)?;
    s.write_all(&json).await.map_err(io)?;
    s.flush().await.map_err(io)
}

async fn recv<S: AsyncReadExt + Unpin>(s: &mut S) -> Result<Msg, EnrolError> {
    let io = |e: std::io::Error| EnrolError::Protocol(e.into());
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(EnrolError::Protocol(format!("a frame of {len} bytes").into()));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    serde_json::from_slice(&buf).map_err(|e| EnrolError::Protocol(e.into()))
}

/// A node admitted by this member.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub node: PublicKey,
    pub invitation: String,
    /// The election priority the invitation gave it.
    pub priority: u8,
    /// The node name the invitation gave it.
    pub name: Option<String>,
}

/// The member's side of one enrolment connection. Returns the admitted node, or why not.
pub async fn answer<S>(
    stream: &mut S,
    data_dir: &Path,
    secrets: &StoreSecrets,
    now_ms: impl Fn() -> u64,
) -> Result<Admitted, EnrolError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    // A connection that says nothing gives its place up quickly.
    let hello = tokio::time::timeout(HELLO_DEADLINE, recv(stream))
        .await
        .map_err(|_| EnrolError::Protocol("no hello".into()))??;
    let Msg::Hello { id, spake } = hello else {
        return Err(EnrolError::Protocol("expected hello".into()));
    };
    let verdict = {
        let _guard = INVITES_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        match load(data_dir, &id)? {
            None => Err(Refusal::Unknown),
            Some(inv) if inv.store != secrets.store => Err(Refusal::Unknown),
            Some(inv) if inv.used_by.is_some() => Err(Refusal::Used),
            Some(inv) if now_ms() > inv.expires_ms => Err(Refusal::Expired),
            Some(inv) if inv.attempts >= MAX_ATTEMPTS => Err(Refusal::TooManyAttempts),
            Some(mut inv) => {
                inv.attempts += 1;
                match save(data_dir, &inv) {
                    Ok(()) => Ok(inv),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record an enrolment attempt");
                        Err(Refusal::Unavailable)
                    }
                }
            }
        }
    };
    let mut inv = match verdict {
        Ok(inv) => inv,
        Err(reason) => {
            let _ = send(stream, &Msg::Refused { reason }).await;
            return Err(EnrolError::Refused(reason));
        }
    };
    let secret = unb64(&inv.secret)?;
    let joiner_msg = unb64(&spake)?;
    let (state, member_msg) =
        Spake2::<Ed25519Group>::start_symmetric(&Password::new(&secret), &identity(&inv.store, &inv.id));
    let shared = state
        .finish(&joiner_msg)
        .map_err(|e| EnrolError::Protocol(format!("SPAKE2: {e:?}").into()))?;
    let t = transcript(&inv.store, &inv.id, &joiner_msg, &member_msg);
    let keys = derive(&shared, &t);
    send(
        stream,
        &Msg::Challenge {
            spake: b64(&member_msg),
            confirm: b64(&mac(&keys.member_confirm, &t)),
        },
    )
    .await?;
    let Msg::Proof {
        confirm,
        node_key,
        signature,
    } = recv(stream).await?
    else {
        return Err(EnrolError::Protocol("expected proof".into()));
    };
    let node_bytes = unb64(&node_key)?;
    let node = PublicKey::try_decode_protobuf(&node_bytes)
        .map_err(|e| EnrolError::Protocol(format!("node key: {e}").into()))?;
    // The node key is inside what the joiner confirms and signs: nobody in the middle can swap it.
    let tk = bind_key(&t, &node_bytes);
    if !mac_ok(&keys.joiner_confirm, &tk, &unb64(&confirm)?) || !node.verify(&tk, &unb64(&signature)?) {
        let _ = send(
            stream,
            &Msg::Refused {
                reason: Refusal::BadProof,
            },
        )
        .await;
        return Err(EnrolError::Refused(Refusal::BadProof));
    }
    // Claimed before anything leaves, and by one exchange only: whatever happens to the answer, the
    // invitation never works again.
    let peer = node.to_peer_id().to_string();
    match claim(data_dir, &inv.id, &peer) {
        Ok(true) => {}
        Ok(false) => {
            let _ = send(stream, &Msg::Refused { reason: Refusal::Used }).await;
            return Err(EnrolError::Refused(Refusal::Used));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record an admission");
            let _ = send(
                stream,
                &Msg::Refused {
                    reason: Refusal::Unavailable,
                },
            )
            .await;
            return Err(EnrolError::Refused(Refusal::Unavailable));
        }
    }
    // The secret is no use any more: it does not stay on disk.
    inv.used_by = Some(peer);
    inv.used_ms = Some(now_ms());
    inv.secret = String::new();
    if let Err(e) = {
        let _guard = INVITES_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        save(data_dir, &inv)
    } {
        // The claim file already says it is used; this only loses who and when.
        tracing::warn!(error = %e, "cannot record who used an invitation");
    }
    let plain = serde_json::to_vec(secrets).map_err(|e| EnrolError::Protocol(e.into()))?;
    let sealed = ChaCha20Poly1305::new((&keys.seal).into())
        .encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: &plain,
                aad: &node_bytes,
            },
        )
        .map_err(|_| EnrolError::Protocol("sealing failed".into()))?;
    send(stream, &Msg::Admitted { sealed: b64(&sealed) }).await?;
    Ok(Admitted {
        node,
        invitation: inv.id,
        priority: inv.priority,
        name: inv.name,
    })
}

/// The joiner's side: proves the token's secret, receives the store's secrets for `node_key`.
pub async fn join<S>(stream: &mut S, token: &Token, node_key: &Keypair) -> Result<StoreSecrets, EnrolError>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let secret = unb64(&token.secret)?;
    let (state, joiner_msg) =
        Spake2::<Ed25519Group>::start_symmetric(&Password::new(&secret), &identity(&token.store, &token.id));
    send(
        stream,
        &Msg::Hello {
            id: token.id.clone(),
            spake: b64(&joiner_msg),
        },
    )
    .await?;
    let (member_msg, confirm) = match recv(stream).await? {
        Msg::Challenge { spake, confirm } => (unb64(&spake)?, unb64(&confirm)?),
        Msg::Refused { reason } => return Err(EnrolError::Refused(reason)),
        _ => return Err(EnrolError::Protocol("expected a challenge".into())),
    };
    let shared = state
        .finish(&member_msg)
        .map_err(|e| EnrolError::Protocol(format!("SPAKE2: {e:?}").into()))?;
    let t = transcript(&token.store, &token.id, &joiner_msg, &member_msg);
    let keys = derive(&shared, &t);
    if !mac_ok(&keys.member_confirm, &t, &confirm) {
        return Err(EnrolError::NotTheMember);
    }
    let node_bytes = node_key.public().encode_protobuf();
    let tk = bind_key(&t, &node_bytes);
    let signature = node_key
        .sign(&tk)
        .map_err(|e| EnrolError::Protocol(format!("signing: {e}").into()))?;
    send(
        stream,
        &Msg::Proof {
            confirm: b64(&mac(&keys.joiner_confirm, &tk)),
            node_key: b64(&node_bytes),
            signature: b64(&signature),
        },
    )
    .await?;
    let sealed = match recv(stream).await? {
        Msg::Admitted { sealed } => unb64(&sealed)?,
        Msg::Refused { reason } => return Err(EnrolError::Refused(reason)),
        _ => return Err(EnrolError::Protocol("expected the admission".into())),
    };
    let plain = ChaCha20Poly1305::new((&keys.seal).into())
        .decrypt(
            &[0u8; 12].into(),
            Payload {
                msg: &sealed,
                aad: &node_bytes,
            },
        )
        .map_err(|_| EnrolError::NotTheMember)?;
    let secrets: StoreSecrets =
        serde_json::from_slice(&plain).map_err(|e| EnrolError::Protocol(format!("secrets: {e}").into()))?;
    let secrets = secrets.checked()?;
    let key = secrets.signing_key()?.public().to_peer_id().to_string();
    if secrets.store != token.store || key != token.store_key {
        return Err(EnrolError::WrongStore(secrets.store));
    }
    Ok(secrets)
}

/// `lpmesh join`: connects to the token's member and runs the joiner's side within [`DEADLINE`].
pub async fn join_remote(token: &Token, node_key: &Keypair) -> Result<StoreSecrets, EnrolError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Said here without a round trip (the member checks again: this clock may be wrong).
    if now > token.expires_ms.saturating_add(60_000) {
        return Err(EnrolError::Refused(Refusal::Expired));
    }
    let run = async {
        let mut s = tokio::net::TcpStream::connect(&token.enrol)
            .await
            .map_err(|source| EnrolError::Connect {
                addr: token.enrol.clone(),
                source,
            })?;
        join(&mut s, token, node_key).await
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .map_err(|_| EnrolError::Protocol(format!("no answer from {} within {DEADLINE:?}", token.enrol).into()))?
}

/// Counts of the member's enrolment listener, for metrics.
#[derive(Debug, Default)]
pub struct EnrolStats {
    pub admitted: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

/// Serves enrolments on `listener` until the task is dropped: at most [`MAX_CONCURRENT`] at once,
/// each within [`DEADLINE`]. `admitted` hears of every node let in.
pub async fn serve(
    listener: tokio::net::TcpListener,
    data_dir: PathBuf,
    secrets: StoreSecrets,
    ring: Option<crate::crypto::Keyring>,
    stats: std::sync::Arc<EnrolStats>,
    admitted: tokio::sync::mpsc::Sender<Admitted>,
) {
    use std::sync::atomic::Ordering;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    let secrets = std::sync::Arc::new(secrets);
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "enrolment listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Accepted first, then a place: idle connections cannot keep a real joiner waiting unanswered.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    send(
                        &mut stream,
                        &Msg::Refused {
                            reason: Refusal::Unavailable,
                        },
                    ),
                )
                .await;
            });
            continue;
        };
        // The key epochs the node holds now go with the secrets: the new node reads the whole history.
        let secrets = match &ring {
            Some(r) => {
                let mut s = (*secrets).clone();
                let epochs = r.epochs();
                let skip = epochs.len().saturating_sub(crate::keys::MAX_EPOCHS_HELD);
                s.epochs = epochs.into_iter().skip(skip).collect();
                std::sync::Arc::new(s)
            }
            None => secrets.clone(),
        };
        let (dir, stats, admitted) = (data_dir.clone(), stats.clone(), admitted.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let now = || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            };
            match tokio::time::timeout(DEADLINE, answer(&mut stream, &dir, &secrets, now)).await {
                Ok(Ok(a)) => {
                    stats.admitted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %a.node.to_peer_id(), from = %peer, invitation = %a.invitation, "a new node was admitted to the store");
                    let _ = admitted.try_send(a);
                }
                Ok(Err(EnrolError::Refused(r))) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %peer, reason = r.as_str(), "an enrolment was refused");
                }
                Ok(Err(e)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %peer, error = %e, "an enrolment failed");
                }
                Err(_) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %peer, "an enrolment ran out of time");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "lpmesh-enrol-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    async fn run(
        member_dir: &Path,
        secrets: &StoreSecrets,
        token: &Token,
        now: u64,
    ) -> (Result<Admitted, EnrolError>, Result<StoreSecrets, EnrolError>) {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let key = Keypair::generate_ed25519();
        // Each side owns its end, so a side that gives up closes it (as a TCP connection would).
        tokio::join!(
            async move { answer(&mut a, member_dir, secrets, move || now).await },
            async move { join(&mut b, token, &key).await }
        )
    }

    #[tokio::test]
    async fn an_invitation_admits_once_and_carries_no_secret() {
        let d = dir("once");
        let secrets = StoreSecrets::generate("shop").unwrap();
        let (_, token) = invite(
            &d,
            &secrets,
            "127.0.0.1:1",
            vec![],
            DEFAULT_EXPIRY,
            Grant::default(),
            1_000,
        )
        .unwrap();
        let text = token.encode();
        for s in [&secrets.psk, &secrets.age_secret, &secrets.signing_key] {
            assert!(!text.contains(s.as_str()));
            let json = String::from_utf8(unb64(text.strip_prefix(TOKEN_PREFIX).unwrap()).unwrap()).unwrap();
            assert!(!json.contains(s.as_str()), "the token holds no store secret");
        }
        let token = Token::decode(&text).unwrap();
        let (m, j) = run(&d, &secrets, &token, 2_000).await;
        let got = j.unwrap();
        assert_eq!((got.psk.as_str(), got.store.as_str()), (secrets.psk.as_str(), "shop"));
        assert!(m.is_ok());
        let (m, j) = run(&d, &secrets, &token, 3_000).await;
        assert!(matches!(m, Err(EnrolError::Refused(Refusal::Used))), "{m:?}");
        assert!(matches!(j, Err(EnrolError::Refused(Refusal::Used))), "{j:?}");
        let _ = fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_joiners_racing_on_one_invitation_get_one_admission() {
        let d = dir("race");
        let secrets = StoreSecrets::generate("shop").unwrap();
        let (_, token) = invite(&d, &secrets, "x:1", vec![], DEFAULT_EXPIRY, Grant::default(), 1_000).unwrap();
        let ((m1, j1), (m2, j2)) = tokio::join!(run(&d, &secrets, &token, 2_000), run(&d, &secrets, &token, 2_000));
        assert_eq!(
            [j1.is_ok(), j2.is_ok()].iter().filter(|ok| **ok).count(),
            1,
            "{j1:?} {j2:?}"
        );
        assert_eq!([m1.is_ok(), m2.is_ok()].iter().filter(|ok| **ok).count(), 1);
        let inv = load(&d, &token.id).unwrap().unwrap();
        assert!(
            inv.used_by.is_some() && inv.secret.is_empty(),
            "used, and its secret is gone"
        );
        let _ = fs::remove_dir_all(&d);
    }

    /// A one-minute invitation made at `now_ms`.
    fn invite_at(d: &Path, secrets: &StoreSecrets, now_ms: u64) -> (Invitation, Token) {
        invite(
            d,
            secrets,
            "x:1",
            vec![],
            Duration::from_secs(60),
            Grant::default(),
            now_ms,
        )
        .unwrap()
    }

    #[test]
    fn invitations_expired_a_day_ago_are_forgotten() {
        let d = dir("prune");
        let secrets = StoreSecrets::generate("shop").unwrap();
        let (old, _) = invite_at(&d, &secrets, 1_000);
        let (fresh, _) = invite_at(&d, &secrets, 1_000 + 86_400_000);
        assert_eq!(list(&d).len(), 2, "expired an hour ago: still said to be expired");
        invite_at(&d, &secrets, 1_000 + 2 * 86_400_000);
        let ids: Vec<String> = list(&d).into_iter().map(|i| i.id).collect();
        assert!(!ids.contains(&old.id) && ids.contains(&fresh.id), "{ids:?}");
        let _ = fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn expired_wrong_and_overtried_invitations_are_refused() {
        let d = dir("refused");
        let secrets = StoreSecrets::generate("shop").unwrap();
        let (_, token) = invite_at(&d, &secrets, 1_000);
        let (m, j) = run(&d, &secrets, &token, 1_000 + 61_000).await;
        assert!(matches!(m, Err(EnrolError::Refused(Refusal::Expired))));
        assert!(matches!(j, Err(EnrolError::Refused(Refusal::Expired))));

        // Someone who saw the id but guesses the secret: refused, and never sees the secrets.
        let (_, token) = invite(&d, &secrets, "x:1", vec![], DEFAULT_EXPIRY, Grant::default(), 1_000).unwrap();
        let mut wrong = token.clone();
        wrong.secret = b64(&[7u8; 16]);
        for _ in 0..MAX_ATTEMPTS {
            let (m, j) = run(&d, &secrets, &wrong, 2_000).await;
            assert!(matches!(j, Err(EnrolError::NotTheMember)), "{j:?}");
            assert!(m.is_err());
        }
        let (m, j) = run(&d, &secrets, &token, 2_000).await;
        assert!(matches!(m, Err(EnrolError::Refused(Refusal::TooManyAttempts))), "{m:?}");
        assert!(j.is_err());

        // An impostor member (another store's secret behind the same id) is found out by the joiner.
        let (_, token) = invite(&d, &secrets, "x:1", vec![], DEFAULT_EXPIRY, Grant::default(), 1_000).unwrap();
        let mut inv = load(&d, &token.id).unwrap().unwrap();
        inv.secret = b64(&[9u8; 16]);
        save(&d, &inv).unwrap();
        let (_, j) = run(&d, &secrets, &token, 2_000).await;
        assert!(matches!(j, Err(EnrolError::NotTheMember)), "{j:?}");

        let mut unknown = token.clone();
        unknown.id = "0".repeat(32);
        let (m, _) = run(&d, &secrets, &unknown, 2_000).await;
        assert!(matches!(m, Err(EnrolError::Refused(Refusal::Unknown))));
        assert!(Token::decode("lpmesh-join-1.abc")
            .unwrap_err()
            .to_string()
            .contains("no longer accepted"));
        assert!(Token::decode("hello").is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
