//! The store's encryption: every record payload is age-encrypted to the store's X25519 recipient, so
//! only nodes of the store (which hold its identity) can read it, whoever relays or stores it.

use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not a valid store secret key")]
    BadSecret,
    #[error("not a valid store recipient")]
    BadRecipient,
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

/// The store's secret (every node of the store holds it). Its text form is an age secret key.
pub struct StoreSecret(age::x25519::Identity);

impl StoreSecret {
    pub fn generate() -> Self {
        Self(age::x25519::Identity::generate())
    }

    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        age::x25519::Identity::from_str(s.trim())
            .map(Self)
            .map_err(|_| CryptoError::BadSecret)
    }

    /// The secret as text, for the node's key file (owner-only permissions; never logged).
    pub fn expose(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.0.to_string().expose_secret().to_string()
    }

    pub fn recipient(&self) -> StoreRecipient {
        StoreRecipient(self.0.to_public())
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        age::decrypt(&self.0, ciphertext).map_err(|e| CryptoError::Decrypt(e.to_string()))
    }
}

/// Where payloads are encrypted to.
#[derive(Clone)]
pub struct StoreRecipient(age::x25519::Recipient);

impl StoreRecipient {
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        age::x25519::Recipient::from_str(s.trim())
            .map(Self)
            .map_err(|_| CryptoError::BadRecipient)
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        age::encrypt(&self.0, plaintext).map_err(|e| CryptoError::Encrypt(e.to_string()))
    }
}

impl std::fmt::Display for StoreRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let s = StoreSecret::generate();
        let c = s.recipient().encrypt(b"loitering in aisle 3").unwrap();
        assert!(
            !c.windows(9).any(|w| w == b"loitering"),
            "ciphertext does not carry the plaintext"
        );
        assert_eq!(s.decrypt(&c).unwrap(), b"loitering in aisle 3");
        let other = StoreSecret::generate();
        assert!(other.decrypt(&c).is_err());
        let again = StoreSecret::parse(&s.expose()).unwrap();
        assert_eq!(again.decrypt(&c).unwrap(), b"loitering in aisle 3");
        assert!(StoreSecret::parse("AGE-SECRET-KEY-1NOPE").is_err());
        assert!(StoreRecipient::parse(&s.recipient().to_string()).is_ok());
    }
}
