//! The default login token scheme: hex HMAC-SHA256(secret, user id). The match server checks
//! it when it has a login secret; a trusted backend issues tokens to players with it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The token a client presents for `user_id` under `secret`.
pub fn login_token(secret: &[u8], user_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(user_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
