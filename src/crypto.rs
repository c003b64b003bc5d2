//! The key ring: tokens and other secrets at rest are sealed with XChaCha20-Poly1305.
//!
//! A sealed value is `version (1) ‖ key id (4) ‖ nonce (24) ‖ ciphertext+tag`. The key id is a
//! fingerprint of the key, so the ring can be reordered: the first key seals, every key opens,
//! and a new first key rotates without logging anyone out. The associated data names the row
//! and column a value belongs to, so a ciphertext copied elsewhere does not open.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("no key in the ring has id {0}")]
    UnknownKey(String),
    #[error("the sealed value does not open with its key and associated data")]
    Tampered,
}

pub struct KeyRing {
    keys: Vec<([u8; KEY_ID_LEN], XChaCha20Poly1305)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyRing {
    /// Builds the ring from base64 32-byte keys. On error, says which key (by index) and why,
    /// never what it holds.
    pub fn from_config(keys: &[SecretString]) -> Result<KeyRing, (usize, String)> {
        if keys.is_empty() {
            return Err((
                0,
                "at least one key is needed (`courier gen-key` makes one)".into(),
            ));
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let bytes = STANDARD
                .decode(key.expose_secret().trim())
                .map_err(|_| (i, "is not valid base64".to_owned()))?;
            let key = Key::try_from(bytes.as_slice())
                .map_err(|_| (i, format!("must decode to 32 bytes, not {}", bytes.len())))?;
            let id = key_id(&bytes);
            if ring.iter().any(|(other, _)| *other == id) {
                return Err((i, "is the same key as an earlier one".to_owned()));
            }
            ring.push((id, XChaCha20Poly1305::new(&key)));
        }
        Ok(KeyRing { keys: ring })
    }

    /// Seals `plaintext` under the first key, bound to `aad`.
    #[allow(
        clippy::expect_used,
        reason = "XChaCha20-Poly1305 fails only past 2^38 bytes; courier seals cookies and tokens"
    )]
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let nonce = XNonce::from(nonce_bytes);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a value sealed by any key of the ring, checking that it belongs to `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < HEADER_LEN + 16 || sealed[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| CryptoError::UnknownKey(hex::encode(id)))?;
        let nonce = XNonce::try_from(&sealed[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| CryptoError::Malformed)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad,
                },
            )
            .map_err(|_| CryptoError::Tampered)
    }

    /// The bytes every value sealed now begins with: the format version and the first key's
    /// id. A stored value that does not begin with them was sealed by another key (or is not a
    /// sealed value at all), which SQL can tell without opening anything.
    pub fn sealing_prefix(&self) -> [u8; 1 + KEY_ID_LEN] {
        let mut prefix = [VERSION; 1 + KEY_ID_LEN];
        prefix[1..].copy_from_slice(&self.keys[0].0);
        prefix
    }

    /// Whether `sealed` was sealed by a key other than the first one (and so should be
    /// re-sealed when next written).
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        sealed.get(1..1 + KEY_ID_LEN) != Some(&self.keys[0].0[..])
    }
}

fn key_id(key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"courier key id\0")
        .chain_update(key)
        .finalize();
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// Bytes from the operating system's CSPRNG.
#[allow(
    clippy::expect_used,
    reason = "without the OS's random source no key, id or nonce is safe: stopping is right"
)]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    buf
}

/// Random bytes for ids that must be unique but protect nothing (request ids, trace and span
/// ids): the OS's CSPRNG read 4 KiB at a time into a per-thread buffer, so that a request does
/// not pay three `getrandom` calls for its ids. Never use it for keys, tokens, states or nonces:
/// those take `random_bytes`, straight from the OS.
pub fn id_bytes<const N: usize>() -> [u8; N] {
    const BUFFER: usize = 4096;
    struct Pool {
        bytes: [u8; BUFFER],
        used: usize,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> =
            const { std::cell::RefCell::new(Pool { bytes: [0; BUFFER], used: BUFFER }) };
    }
    POOL.with_borrow_mut(|pool| {
        if N > BUFFER {
            return random_bytes::<N>();
        }
        if pool.used + N > BUFFER {
            pool.bytes = random_bytes::<BUFFER>();
            pool.used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&pool.bytes[pool.used..pool.used + N]);
        // Each byte is handed out once.
        pool.bytes[pool.used..pool.used + N].fill(0);
        pool.used += N;
        out
    })
}

/// A new URL-safe random string carrying 256 bits.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A new base64 32-byte key, as `courier gen-key` prints it.
pub fn generate_key() -> String {
    STANDARD.encode(random_bytes::<32>())
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compares two secrets in constant time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[&str]) -> KeyRing {
        let keys: Vec<SecretString> = keys.iter().map(|k| SecretString::from(*k)).collect();
        KeyRing::from_config(&keys).unwrap()
    }

    #[test]
    fn id_bytes_are_not_repeated_across_refills() {
        let mut seen = std::collections::HashSet::new();
        // 600 × 16 bytes crosses two refills of the 4 KiB buffer.
        for _ in 0..600 {
            assert!(seen.insert(id_bytes::<16>()), "an id came out twice");
        }
        assert_ne!(id_bytes::<8>(), [0; 8]);
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_associated_data() {
        let k = generate_key();
        let ring = ring(&[&k]);
        let sealed = ring.seal(b"refresh-token", b"session_tokens.refresh_token:1");
        assert_eq!(
            ring.open(&sealed, b"session_tokens.refresh_token:1")
                .unwrap(),
            b"refresh-token"
        );
        assert!(matches!(
            ring.open(&sealed, b"session_tokens.refresh_token:2"),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            ring.open(&sealed, b"session_tokens.access_token:1"),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn a_new_first_key_still_opens_what_the_old_one_sealed() {
        let (old, new) = (generate_key(), generate_key());
        let sealed = ring(&[&old]).seal(b"x", b"aad");
        let rotated = ring(&[&new, &old]);
        assert_eq!(rotated.open(&sealed, b"aad").unwrap(), b"x");
        assert!(rotated.is_stale(&sealed));
        assert!(!rotated.is_stale(&rotated.seal(b"x", b"aad")));
        assert!(
            rotated
                .seal(b"x", b"aad")
                .starts_with(&rotated.sealing_prefix())
        );
        assert!(!sealed.starts_with(&rotated.sealing_prefix()));
        assert!(matches!(
            ring(&[&new]).open(&sealed, b"aad"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_flipped_bit_does_not_open() {
        let ring = ring(&[&generate_key()]);
        let mut sealed = ring.seal(b"secret", b"aad");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(ring.open(&sealed, b"aad").is_err());
        assert!(matches!(
            ring.open(&sealed[..10], b"aad"),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn keys_of_the_wrong_size_are_refused() {
        let keys = [SecretString::from(STANDARD.encode([0u8; 16]))];
        assert!(KeyRing::from_config(&keys).is_err());
        assert!(KeyRing::from_config(&[]).is_err());
    }
}
