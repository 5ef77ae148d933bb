//! Endpoint secrets encrypted at rest with the operator's key (`encryption_key`).
//!
//! A value is sealed with ChaCha20-Poly1305 under a random 96-bit nonce and
//! stored as `enc1:` followed by standard base64 of nonce, ciphertext and tag.
//! The associated data, its [`context`], names the column and the row
//! (`endpoints.secret/ep_…`), so a sealed value copied into another row or
//! column does not open.
//!
//! The store seals a value before it is written with [`seal`], and opens it
//! after it is read with [`open`], using the cipher that each connection
//! carries (see `Conn::cipher`). [`open`] returns a plaintext value unchanged.
//! A sealed value without a key, or one that does not open with the key, is
//! an error and never an empty string.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// Prefix of a sealed value; the digit is the format version.
pub const SEALED_PREFIX: &str = "enc1:";

/// Length of an encryption key, in bytes.
pub const KEY_BYTES: usize = 32;

/// The 32-byte key that seals endpoint secrets. Its `Debug` output never
/// shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; KEY_BYTES]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl EncryptionKey {
    /// Parses a key written as standard base64 (44 characters) or as 64 hex
    /// digits, either of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            decode_hex(text)
        } else {
            STANDARD
                .decode(text)
                .map_err(|_| "must be base64 or hex".to_owned())?
        };
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "must be {KEY_BYTES} bytes, as 44 characters of base64 or 64 hex digits; got {} bytes",
                bytes.len()
            )
        })?;
        Ok(Self(key))
    }
}

fn decode_hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(digits, 16).expect("checked to be hex digits")
        })
        .collect()
}

/// The failure to open a stored value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("stored value {context} is encrypted, but no encryption key is set; set HOOKD_ENCRYPTION_KEY (encryption_key) to the key it was encrypted with")]
    NoKey { context: String },
    #[error("stored value {context} does not decrypt with the configured key; HOOKD_ENCRYPTION_KEY (encryption_key) is not the key it was encrypted with, or the value is damaged")]
    WrongKey { context: String },
}

/// Seals and opens values with one key.
// TODO: the key cannot be rotated, because every value opens with one key
// only. A setting for the previous key, tried when the current one fails,
// and a pass at open that reseals such values would allow rotation.
pub struct Cipher {
    key: LessSafeKey,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    pub fn new(key: &EncryptionKey) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key.0)
            .expect("a 32-byte key is valid for ChaCha20-Poly1305");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `plaintext` under a fresh random nonce, bound to `context`.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut sealed = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .expect("sealing fails only for inputs of more than 256 GiB");
        let mut stored = Vec::with_capacity(NONCE_LEN + sealed.len());
        stored.extend_from_slice(&nonce);
        stored.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(stored))
    }

    /// Decrypts a value made by [`Cipher::seal`] with the same `context`.
    fn open_sealed(&self, encoded: &str, context: &str) -> Option<String> {
        let mut stored = STANDARD.decode(encoded).ok()?;
        if stored.len() < NONCE_LEN {
            return None;
        }
        let mut ciphertext = stored.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&stored).ok()?;
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut ciphertext)
            .ok()?;
        String::from_utf8(plaintext.to_vec()).ok()
    }
}

/// Returns the associated data that binds a sealed value to its place, such
/// as `endpoints.secret/ep_…` for `column` `endpoints.secret`.
pub fn context(column: &str, row_id: &str) -> String {
    format!("{column}/{row_id}")
}

/// Returns true when a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// Returns the plaintext of a stored value: a sealed one is decrypted, a
/// plaintext one is returned as it is.
pub fn open(cipher: Option<&Cipher>, stored: &str, context: &str) -> Result<String, OpenError> {
    let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
        return Ok(stored.to_owned());
    };
    let Some(cipher) = cipher else {
        return Err(OpenError::NoKey {
            context: context.to_owned(),
        });
    };
    cipher
        .open_sealed(encoded, context)
        .ok_or_else(|| OpenError::WrongKey {
            context: context.to_owned(),
        })
}

/// Returns the form of `plaintext` to store: sealed with a key, unchanged without one.
pub fn seal(cipher: Option<&Cipher>, plaintext: &str, context: &str) -> String {
    match cipher {
        Some(cipher) => cipher.seal(plaintext, context),
        None => plaintext.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> EncryptionKey {
        EncryptionKey([byte; KEY_BYTES])
    }

    #[test]
    fn sealed_value_opens_with_same_key_and_context() {
        let cipher = Cipher::new(&key(1));
        let sealed = cipher.seal("whsec_abc", "endpoints.secret/ep_1");

        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        assert!(!sealed.contains("whsec_abc"), "{sealed}");
        assert_eq!(
            open(Some(&cipher), &sealed, "endpoints.secret/ep_1").unwrap(),
            "whsec_abc"
        );
    }

    #[test]
    fn sealing_twice_gives_different_values() {
        let cipher = Cipher::new(&key(1));

        let first = cipher.seal("whsec_abc", "c");
        let second = cipher.seal("whsec_abc", "c");

        assert_ne!(first, second);
    }

    #[test]
    fn sealed_value_rejects_other_key_or_context() {
        let sealed = Cipher::new(&key(1)).seal("whsec_abc", "endpoints.secret/ep_1");

        assert!(matches!(
            open(
                Some(&Cipher::new(&key(2))),
                &sealed,
                "endpoints.secret/ep_1"
            ),
            Err(OpenError::WrongKey { .. })
        ));
        assert!(matches!(
            open(
                Some(&Cipher::new(&key(1))),
                &sealed,
                "endpoints.secret/ep_2"
            ),
            Err(OpenError::WrongKey { .. })
        ));
        assert!(matches!(
            open(None, &sealed, "endpoints.secret/ep_1"),
            Err(OpenError::NoKey { .. })
        ));
    }

    #[test]
    fn damaged_value_is_rejected() {
        let cipher = Cipher::new(&key(1));
        let sealed = cipher.seal("whsec_abc", "c");
        let mut damaged = sealed.into_bytes();
        let last = damaged.len() - 3;
        damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(damaged).unwrap();

        assert!(open(Some(&cipher), &damaged, "c").is_err());
        assert!(open(Some(&cipher), "enc1:", "c").is_err());
        assert!(open(Some(&cipher), "enc1:!!", "c").is_err());
    }

    #[test]
    fn plaintext_passes_through() {
        let cipher = Cipher::new(&key(1));

        assert_eq!(open(Some(&cipher), "whsec_abc", "c").unwrap(), "whsec_abc");
        assert_eq!(open(None, "whsec_abc", "c").unwrap(), "whsec_abc");
        assert_eq!(seal(None, "whsec_abc", "c"), "whsec_abc");
    }

    #[test]
    fn key_parses_from_base64_and_hex() {
        let base64 = STANDARD.encode([7u8; KEY_BYTES]);
        let hex = "07".repeat(KEY_BYTES);

        assert_eq!(EncryptionKey::parse(&base64).unwrap(), key(7));
        assert_eq!(EncryptionKey::parse(&hex).unwrap(), key(7));
    }

    #[test]
    fn key_of_wrong_length_is_rejected() {
        let short = STANDARD.encode([7u8; 16]);

        let err = EncryptionKey::parse(&short).unwrap_err();

        assert!(err.contains("got 16 bytes"), "{err}");
        assert!(EncryptionKey::parse("not base64!").is_err());
        assert!(EncryptionKey::parse(&"0".repeat(63)).is_err());
    }

    #[test]
    fn key_debug_hides_the_key() {
        let text = format!("{:?}", key(0xab));

        assert!(!text.contains("171"), "{text}");
        assert!(!text.to_lowercase().contains("ab, "), "{text}");
        assert_eq!(text, "EncryptionKey(<redacted>)");
    }
}
