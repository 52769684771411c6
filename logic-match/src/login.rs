//! The login check: with a secret, the token must be hex HMAC-SHA256(secret, user id).

use std::sync::Arc;

use logic_sdk::LogicError;
use proto::matchmaking::v1::errors;

#[derive(Clone)]
pub(crate) struct Checker {
    secret: Option<Arc<[u8]>>,
}

impl Checker {
    pub(crate) fn new(secret: Option<&str>) -> Self {
        Self {
            secret: secret
                .filter(|s| !s.is_empty())
                .map(|s| Arc::from(s.as_bytes())),
        }
    }

    pub(crate) fn is_checking(&self) -> bool {
        self.secret.is_some()
    }

    /// The user id, once its token checks out.
    pub(crate) fn check(&self, user_id: &str, token: &str) -> Result<String, LogicError> {
        let valid_id = !user_id.is_empty()
            && user_id.len() <= 64
            && user_id.chars().all(|c| c.is_ascii_graphic());
        if !valid_id {
            return Err(LogicError::bad_request(
                "user ids are 1 to 64 printable characters",
            ));
        }
        if let Some(secret) = &self.secret {
            let expected = wire::auth::login_token(secret, user_id);
            if !constant_time_eq(expected.as_bytes(), token.as_bytes()) {
                return Err(LogicError::new(errors::BAD_CREDENTIAL, "bad credential"));
            }
        }
        Ok(user_id.to_owned())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_only_with_a_secret() {
        let open = Checker::new(None);
        assert_eq!(open.check("ann", ""), Ok("ann".to_owned()));
        assert!(open.check("", "").is_err());
        assert!(open.check("has space", "").is_err());
        let strict = Checker::new(Some("s3cret"));
        let token = wire::auth::login_token(b"s3cret", "ann");
        assert_eq!(strict.check("ann", &token), Ok("ann".to_owned()));
        assert_eq!(
            strict.check("bob", &token).map_err(|e| e.code),
            Err(errors::BAD_CREDENTIAL)
        );
    }
}
