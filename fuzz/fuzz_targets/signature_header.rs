//! Fuzzes `signature_header` with one to three valid `whsec_` secrets of 24
//! to 64 key bytes, sometimes an invalid secret among them, and any message
//! id, timestamp and body.
//!
//! Each signature is checked against an HMAC-SHA256 computed here from
//! SHA-256 alone (RFC 2104), so a fault in how hookd drives the `hmac`
//! crate cannot hide behind the same fault in the check.

#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hookd::delivery::signing::{signature_header, verify};
use hookd::model::secret::{MAX_KEY_BYTES, MIN_KEY_BYTES, PREFIX};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// Block size of SHA-256 in bytes: HMAC pads the key to this length.
const BLOCK_BYTES: usize = 64;

/// One call of `signature_header`, built from the fuzz input.
struct Case {
    /// Key bytes of each valid secret, in header order.
    keys: Vec<Vec<u8>>,
    /// The secrets as passed, with an invalid one inserted at some position.
    secrets: Vec<String>,
    msg_id: String,
    timestamp: i64,
    body: Vec<u8>,
}

fn case(u: &mut Unstructured<'_>) -> Result<Case> {
    let count = u.int_in_range(1..=3)?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u.int_in_range(MIN_KEY_BYTES..=MAX_KEY_BYTES)?;
        keys.push(u.bytes(len)?.to_vec());
    }
    let mut secrets: Vec<String> = keys.iter().map(|key| encode_secret(key)).collect();
    if u.arbitrary::<bool>()? {
        let invalid = invalid_secret(u)?;
        let position = u.int_in_range(0..=secrets.len())?;
        secrets.insert(position, invalid);
    }
    Ok(Case {
        keys,
        secrets,
        msg_id: u.arbitrary()?,
        timestamp: u.arbitrary()?,
        body: u.arbitrary()?,
    })
}

fn encode_secret(key: &[u8]) -> String {
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// Builds a secret that `signature_header` must skip: a wrong prefix, text
/// that is not base64, or a key outside 24 to 64 bytes.
fn invalid_secret(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=2)? {
        0 => format!("whsec{}", STANDARD.encode([7u8; 32])),
        1 => format!("{PREFIX}{}!", STANDARD.encode([7u8; 32])),
        _ => {
            let len = if u.arbitrary::<bool>()? {
                u.int_in_range(0..=MIN_KEY_BYTES - 1)?
            } else {
                u.int_in_range(MAX_KEY_BYTES + 1..=2 * MAX_KEY_BYTES)?
            };
            format!("{PREFIX}{}", STANDARD.encode(vec![7u8; len]))
        }
    })
}

/// HMAC-SHA256 for a key of at most one block, as RFC 2104 defines it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    assert!(key.len() <= BLOCK_BYTES, "longer keys are hashed first");
    let mut padded = [0u8; BLOCK_BYTES];
    padded[..key.len()].copy_from_slice(key);
    let inner_pad: Vec<u8> = padded.iter().map(|byte| byte ^ 0x36).collect();
    let outer_pad: Vec<u8> = padded.iter().map(|byte| byte ^ 0x5c).collect();

    let inner = Sha256::new()
        .chain_update(&inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

fuzz_target!(|data: &[u8]| {
    let Ok(case) = case(&mut Unstructured::new(data)) else {
        return;
    };
    let secrets: Vec<&str> = case.secrets.iter().map(String::as_str).collect();
    let header = signature_header(&secrets, &case.msg_id, case.timestamp, &case.body);

    // The signed content is "id.timestamp.body", with the timestamp in decimal.
    let mut signed = format!("{}.{}.", case.msg_id, case.timestamp).into_bytes();
    signed.extend_from_slice(&case.body);
    let expected: Vec<String> = case
        .keys
        .iter()
        .map(|key| format!("v1,{}", STANDARD.encode(hmac_sha256(key, &signed))))
        .collect();
    assert_eq!(header, expected.join(" "));

    let valid_secrets: Vec<String> = case.keys.iter().map(|key| encode_secret(key)).collect();
    for secret in &secrets {
        let valid = valid_secrets.iter().any(|valid| valid == secret);
        assert_eq!(
            verify(secret, &case.msg_id, case.timestamp, &case.body, &header),
            valid,
            "{secret}"
        );
    }

    // A changed body or timestamp no longer verifies.
    let first = &valid_secrets[0];
    let mut changed_body = case.body.clone();
    changed_body.push(b' ');
    assert!(!verify(
        first,
        &case.msg_id,
        case.timestamp,
        &changed_body,
        &header
    ));
    let changed_timestamp = case.timestamp.wrapping_add(1);
    assert!(!verify(
        first,
        &case.msg_id,
        changed_timestamp,
        &case.body,
        &header
    ));
});
