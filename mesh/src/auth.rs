//! The cluster credential: a shared secret every internal call and datagram must carry.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::{Request, Status, metadata::AsciiMetadataValue, service::Interceptor};

/// Metadata key of the credential on internal gRPC calls.
pub const CREDENTIAL_HEADER: &str = "x-switchyard-cluster-key";
/// Bytes of HMAC tag in front of every unreliable datagram.
pub(crate) const TAG_LEN: usize = 16;

/// The cluster's shared secret, ready for use on calls and datagrams.
#[derive(Clone)]
pub struct Credential {
    header: AsciiMetadataValue,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

/// A secret that cannot serve as a credential.
#[derive(Debug, thiserror::Error)]
#[error("the cluster secret must be 8 to 256 printable ASCII characters without spaces")]
pub struct BadSecret;

impl Credential {
    /// Checks and wraps the shared secret.
    pub fn new(secret: &str) -> Result<Self, BadSecret> {
        let valid =
            (8..=256).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(BadSecret);
        }
        let header = secret.parse().map_err(|_| BadSecret)?;
        Ok(Self {
            header,
            secret: secret.as_bytes().into(),
        })
    }

    /// Checks the credential of an incoming call.
    pub(crate) fn check(&self, request: &Request<()>) -> Result<(), Status> {
        let presented = request.metadata().get(CREDENTIAL_HEADER);
        match presented {
            Some(value) if constant_time_eq(value.as_bytes(), self.header.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("bad cluster credential")),
            None => Err(Status::unauthenticated("missing cluster credential")),
        }
    }

    /// HMAC tag of a datagram body.
    pub(crate) fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Verifies a datagram's tag; returns its body when genuine.
    pub(crate) fn open<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let (tag, body) = datagram.split_at_checked(TAG_LEN)?;
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).ok().map(|()| body)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Adds the cluster credential to outgoing calls.
#[derive(Clone)]
pub struct AddCredential(AsciiMetadataValue);

impl Interceptor for AddCredential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(CREDENTIAL_HEADER, self.0.clone());
        Ok(request)
    }
}

impl Credential {
    pub(crate) fn client_interceptor(&self) -> AddCredential {
        AddCredential(self.header.clone())
    }

    /// The interceptor that rejects calls without this credential; wrap every internal
    /// service with it.
    pub fn server_interceptor(&self) -> CheckCredential {
        CheckCredential(self.clone())
    }
}

/// Rejects incoming calls without the credential.
#[derive(Clone)]
pub struct CheckCredential(pub(crate) Credential);

impl Interceptor for CheckCredential {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.check(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_validated() {
        assert!(Credential::new("short").is_err());
        assert!(Credential::new("has a space in it").is_err());
        assert!(Credential::new("good-secret-123").is_ok());
    }

    #[test]
    fn datagram_tags_verify_only_with_the_same_secret() {
        let a = Credential::new("secret-one").expect("valid");
        let b = Credential::new("secret-two").expect("valid");
        let mut datagram = a.tag(b"hello").to_vec();
        datagram.extend_from_slice(b"hello");
        assert_eq!(a.open(&datagram), Some(&b"hello"[..]));
        assert_eq!(b.open(&datagram), None);
        assert_eq!(a.open(&datagram[..5]), None);
        datagram[TAG_LEN] ^= 1;
        assert_eq!(a.open(&datagram), None);
    }
}
