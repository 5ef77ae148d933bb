//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::secret;

/// Builds the `webhook-signature` header value: one `v1,` signature per
/// secret, separated by spaces. Secrets that do not decode are skipped; the
/// API rejects them before they are stored.
pub fn signature_header(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::new();
    for key in secrets.iter().filter_map(|s| secret::decode(s).ok()) {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&STANDARD.encode(mac.finalize().into_bytes()));
    }
    header
}

/// Checks a `webhook-signature` header against one secret, as a receiver would.
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let expected = signature_header(&[secret], msg_id, timestamp, body);
    if expected.is_empty() {
        return false;
    }
    header.split(' ').any(|candidate| {
        subtle::ConstantTimeEq::ct_eq(candidate.as_bytes(), expected.as_bytes()).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn signature_matches_specification_example() {
        assert_eq!(
            signature_header(&[SECRET], MSG_ID, TIMESTAMP, BODY),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_give_two_signatures() {
        let other = crate::model::secret::generate();
        let header = signature_header(&[SECRET, &other], MSG_ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(verify(SECRET, MSG_ID, TIMESTAMP, BODY, &header));
        assert!(verify(&other, MSG_ID, TIMESTAMP, BODY, &header));
    }

    #[test]
    fn changed_body_fails_verification() {
        let header = signature_header(&[SECRET], MSG_ID, TIMESTAMP, BODY);
        assert!(!verify(
            SECRET,
            MSG_ID,
            TIMESTAMP,
            br#"{"test": 2432232315}"#,
            &header
        ));
    }
}
