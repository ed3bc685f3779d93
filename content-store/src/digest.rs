//! Content digests. Only sha256 is accepted: it is what OCI registries use in
//! practice, and a single algorithm keeps the on-disk layout
//! (`blobs/sha256/<hex>`) unambiguous.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// The inner string is always canonical, so equality, hashing and ordering of
/// two `Digest`s agree with equality of the blobs they name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string. Uppercase hex and algorithms
    /// other than sha256 are rejected rather than normalised: a registry that
    /// sends them is either broken or hostile, and the digest doubles as a
    /// file name.
    pub fn parse(s: &str) -> Result<Digest> {
        let invalid = |reason: &'static str| Error::InvalidDigest {
            input: s.chars().take(200).collect(),
            reason,
        };
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(invalid("missing algorithm prefix"));
        };
        if algo != "sha256" {
            return Err(invalid("unsupported algorithm (only sha256)"));
        }
        if hex.len() != HEX_LEN {
            return Err(invalid("sha256 hex must be 64 characters"));
        }
        if !is_lower_hex(hex) {
            return Err(invalid("sha256 hex must be lowercase hexadecimal"));
        }
        Ok(Digest(s.to_owned()))
    }

    /// Builds a digest from a raw 32-byte sha256 output.
    pub fn from_sha256_bytes(bytes: [u8; 32]) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(bytes)))
    }

    /// Builds a digest from a 64-character lowercase hex string (the blob file
    /// name), if valid.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == HEX_LEN && is_lower_hex(hex)).then(|| Digest(format!("{PREFIX}{hex}")))
    }

    /// The sha256 digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha256_bytes(Sha256::digest(data).into())
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Always `"sha256"`.
    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64-character hex part (the blob's file name).
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl TryFrom<&str> for Digest {
    type Error = Error;
    fn try_from(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_valid() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::of(b""), d);
        assert_eq!(Digest::from_hex(d.hex()), Some(d));
    }

    #[test]
    fn parse_rejects_malformed() {
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let bad = [
            "",
            "sha256",
            "sha256:",
            &EMPTY[7..],
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            " sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            &upper,
        ];
        for s in bad {
            match Digest::parse(s) {
                Err(Error::InvalidDigest { .. }) => {}
                other => panic!("{s:?} should be invalid, got {other:?}"),
            }
        }
        assert!(Digest::from_hex("xyz").is_none());
        assert!(Digest::from_hex(&EMPTY[7..].to_uppercase()).is_none());
    }

    #[test]
    fn ordering_follows_hex() {
        let a = Digest::from_sha256_bytes([0; 32]);
        let b = Digest::from_sha256_bytes([1; 32]);
        assert!(a < b);
        assert_eq!(a.hex(), "0".repeat(64));
    }
}
