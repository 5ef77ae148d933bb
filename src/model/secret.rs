//! Endpoint signing secrets: `whsec_` followed by base64 of 24 to 64 random bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;

pub const PREFIX: &str = "whsec_";
pub const MIN_KEY_BYTES: usize = 24;
pub const MAX_KEY_BYTES: usize = 64;

/// Generates a new secret with 32 random bytes.
pub fn generate() -> String {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// Decodes a secret into its key bytes, or explains what a valid one looks like.
pub fn decode(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(PREFIX) else {
        return Err(format!(
            "must start with \"{PREFIX}\" followed by base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
        ));
    };
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| format!("the part after \"{PREFIX}\" is not valid base64"))?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(format!(
            "the key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_decodes_to_32_bytes() {
        assert_eq!(decode(&generate()).unwrap().len(), 32);
    }

    #[test]
    fn decode_rejects_malformed_secrets() {
        assert!(decode("not-a-secret").is_err());
        assert!(decode("whsec_!!!").is_err());
        // 16 bytes: too short.
        assert!(decode(&format!("whsec_{}", STANDARD.encode([1u8; 16]))).is_err());
        // 65 bytes: too long.
        assert!(decode(&format!("whsec_{}", STANDARD.encode([1u8; 65]))).is_err());
        assert_eq!(
            decode(&format!("whsec_{}", STANDARD.encode([7u8; 24]))).unwrap(),
            vec![7u8; 24]
        );
    }
}
