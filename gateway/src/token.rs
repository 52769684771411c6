//! Resume tokens: what a client presents to resume its session, on this gateway or another.
//!
//! A token names the cluster, the user, the session, the gateway holding the session, the
//! session's epoch (so a token resumes once: every attach bumps the epoch) and an expiry, and
//! carries an HMAC-SHA256 over them, keyed by a key derived from the cluster secret: any gateway
//! of the cluster can check it, nobody else can make one. Encoded as lowercase hex.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) cluster: String,
    pub(crate) user: String,
    pub(crate) session: u64,
    /// The gateway holding the session when the token was issued.
    pub(crate) gateway: String,
    pub(crate) epoch: u64,
    pub(crate) expires_at_ms: u64,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a token of ours: malformed, or the signature does not match.
    Invalid,
    /// Issued by another cluster.
    WrongCluster,
    /// Its time is up.
    Expired,
}

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// Longest token accepted (a user id is at most 256 bytes, node and cluster ids are short).
const MAX_TOKEN_CHARS: usize = 2048;

/// Makes and checks tokens with the cluster's key.
#[derive(Clone)]
pub(crate) struct Tokens {
    key: [u8; 32],
    cluster: String,
}

impl Tokens {
    /// Tokens of `cluster`, keyed by `secret` (the cluster secret; the key is derived from it,
    /// so a token never carries anything the mesh's own credential could be recovered from).
    pub(crate) fn new(cluster: &str, secret: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"switchyard resume token v1\0");
        hasher.update(secret.as_bytes());
        Self {
            key: hasher.finalize().into(),
            cluster: cluster.to_owned(),
        }
    }

    /// This cluster's id.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A token for `claims` (its cluster is this one's).
    pub(crate) fn issue(&self, claims: &Claims) -> String {
        let mut body = Vec::with_capacity(64 + claims.user.len());
        body.push(VERSION);
        put_str(&mut body, &self.cluster);
        put_str(&mut body, &claims.user);
        body.extend_from_slice(&claims.session.to_be_bytes());
        put_str(&mut body, &claims.gateway);
        body.extend_from_slice(&claims.epoch.to_be_bytes());
        body.extend_from_slice(&claims.expires_at_ms.to_be_bytes());
        let tag = self.tag(&body);
        body.extend_from_slice(&tag);
        hex(&body)
    }

    /// What a token says, once it is checked: format, cluster, signature, expiry (against
    /// `now_ms`), in that order.
    pub(crate) fn check(&self, token: &str, now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Invalid);
        }
        let bytes = unhex(token).ok_or(TokenError::Invalid)?;
        if bytes.len() < 1 + TAG_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let claims = parse(body).ok_or(TokenError::Invalid)?;
        if claims.cluster != self.cluster {
            return Err(TokenError::WrongCluster);
        }
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| TokenError::Invalid)?;
        if claims.expires_at_ms <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.extend_from_slice(&(bytes.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..bytes.len().min(u16::MAX as usize)]);
}

/// Reads the claims of a token body; `None` when it is not one.
fn parse(body: &[u8]) -> Option<Claims> {
    let mut rest = body;
    let version = *take(&mut rest, 1)?.first()?;
    if version != VERSION {
        return None;
    }
    let cluster = take_str(&mut rest)?;
    let user = take_str(&mut rest)?;
    let session = take_u64(&mut rest)?;
    let gateway = take_str(&mut rest)?;
    let epoch = take_u64(&mut rest)?;
    let expires_at_ms = take_u64(&mut rest)?;
    rest.is_empty().then_some(Claims {
        cluster,
        user,
        session,
        gateway,
        epoch,
        expires_at_ms,
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(take(rest, 8)?.try_into().ok()?))
}

fn take_str(rest: &mut &[u8]) -> Option<String> {
    let len = u16::from_be_bytes(take(rest, 2)?.try_into().ok()?) as usize;
    String::from_utf8(take(rest, len)?.to_vec()).ok()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            cluster: "c1".into(),
            user: "ann".into(),
            session: 42,
            gateway: "g1".into(),
            epoch: 3,
            expires_at_ms: 10_000,
        }
    }

    #[test]
    fn a_token_is_checked_for_format_cluster_signature_and_expiry() {
        let tokens = Tokens::new("c1", "secret-1");
        let token = tokens.issue(&claims());
        assert_eq!(tokens.check(&token, 9_999), Ok(claims()));
        assert_eq!(tokens.check(&token, 10_000), Err(TokenError::Expired));
        // Another cluster's gateway (whatever its secret) says so.
        assert_eq!(
            Tokens::new("c2", "secret-1").check(&token, 0),
            Err(TokenError::WrongCluster)
        );
        // Same cluster id, another secret: not one of ours.
        assert_eq!(
            Tokens::new("c1", "secret-2").check(&token, 0),
            Err(TokenError::Invalid)
        );
        // A changed byte, a cut token, garbage.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 70;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).expect("hex");
        assert_eq!(tokens.check(&forged, 0), Err(TokenError::Invalid));
        assert_eq!(
            tokens.check(&token[..token.len() - 2], 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(tokens.check("zz", 0), Err(TokenError::Invalid));
        assert_eq!(tokens.check("", 0), Err(TokenError::Invalid));
        assert_eq!(tokens.check(&"a".repeat(5000), 0), Err(TokenError::Invalid));
    }

    #[test]
    fn no_input_makes_the_checker_panic() {
        // Tokens come from the network: random text, random hex, and valid tokens cut or
        // extended anywhere are refused, never a panic.
        let tokens = Tokens::new("c1", "secret-1");
        let token = tokens.issue(&claims());
        for cut in 0..token.len() {
            assert!(tokens.check(&token[..cut], 0).is_err());
        }
        for _ in 0..20_000 {
            let len = rand::random_range(0..300);
            let hexy: String = (0..len)
                .map(|_| b"0123456789abcdef"[rand::random_range(0..16)] as char)
                .collect();
            assert!(tokens.check(&hexy, 0).is_err());
            let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            assert!(tokens.check(&String::from_utf8_lossy(&bytes), 0).is_err());
        }
    }
}
