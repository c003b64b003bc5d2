//! courier's own signing keys at a provider (`client_key`): parsed from PEM once, published as
//! public JWKs at `/.well-known/jwks.json`, and used to sign `private_key_jwt` client
//! assertions (RFC 7523). The crypto is jsonwebtoken's; this module only chooses.

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The kind of a client key, which decides the algorithms it signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: PS256 when the provider lists it, else RS256.
    Rsa,
    /// An EC P-256 key: ES256.
    P256,
}

/// One private key of courier's, with its public half and its RFC 7638 thumbprint.
#[derive(Clone)]
pub struct ClientKey {
    kind: KeyKind,
    encoding: EncodingKey,
    /// The public key as a JWK, without `alg` (an RSA key may sign with either algorithm).
    public: Jwk,
    kid: String,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("ClientKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Reads a PEM private key: RSA (PKCS#1 or PKCS#8) or EC P-256 (PKCS#8). The error says
    /// what is wrong, never the key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let bytes = pem.trim().as_bytes();
        let (kind, encoding, alg) = if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
            (KeyKind::Rsa, key, Algorithm::RS256)
        } else if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
            (KeyKind::P256, key, Algorithm::ES256)
        } else {
            return Err(
                "is not a PEM private key courier can sign with (RSA, or EC P-256 in PKCS#8)"
                    .into(),
            );
        };
        let mut public = Jwk::from_encoding_key(&encoding, alg).map_err(|_| match kind {
            KeyKind::Rsa => "is not a usable RSA private key".to_owned(),
            KeyKind::P256 => "is not an EC P-256 private key (only P-256 is supported)".to_owned(),
        })?;
        public.common.key_algorithm = None;
        let kid = public
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| "has no RFC 7638 thumbprint".to_owned())?;
        let key = ClientKey {
            kind,
            encoding,
            public,
            kid,
        };
        // A key that parses but cannot sign (a mismatched curve, say) is refused here, at
        // start-up, rather than at the first login.
        key.sign(&serde_json::json!({}), false)
            .map_err(|_| "cannot sign (an unsupported key)".to_owned())?;
        Ok(key)
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The RFC 7638 SHA-256 thumbprint, which is the key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with, given whether the provider accepts PS256.
    pub fn algorithm(&self, ps256: bool) -> Algorithm {
        match self.kind {
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::Rsa if ps256 => Algorithm::PS256,
            KeyKind::Rsa => Algorithm::RS256,
        }
    }

    /// The public key as published: `kid`, `use = "sig"` and `alg` (PS256 for RSA keys, the
    /// algorithm a FAPI provider expects; RS256 is listed in `alg` of no key, as a JWK names one).
    pub fn public_jwk(&self, ps256: bool) -> Jwk {
        let mut jwk = self.public.clone();
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match self.algorithm(ps256) {
            Algorithm::ES256 => KeyAlgorithm::ES256,
            Algorithm::PS256 => KeyAlgorithm::PS256,
            _ => KeyAlgorithm::RS256,
        });
        jwk
    }

    /// Signs `claims` as a compact JWS with `kid` in the header.
    pub fn sign<T: Serialize>(&self, claims: &T, ps256: bool) -> Result<String, String> {
        let mut header = Header::new(self.algorithm(ps256));
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = include_str!("../../tests/api/keys/client_rsa.pem");
    const EC: &str = include_str!("../../tests/api/keys/client_p256.pem");

    #[test]
    fn rsa_and_p256_keys_parse_with_their_thumbprint_as_kid() {
        let rsa = ClientKey::from_pem(RSA).unwrap();
        assert_eq!(rsa.kind(), KeyKind::Rsa);
        assert_eq!(rsa.algorithm(true), Algorithm::PS256);
        assert_eq!(rsa.algorithm(false), Algorithm::RS256);
        assert_eq!(rsa.kid().len(), 43);
        let ec = ClientKey::from_pem(EC).unwrap();
        assert_eq!(ec.kind(), KeyKind::P256);
        assert_eq!(ec.algorithm(true), Algorithm::ES256);
        assert_ne!(ec.kid(), rsa.kid());
        let jwk = serde_json::to_value(ec.public_jwk(false)).unwrap();
        assert_eq!(jwk["kid"], ec.kid());
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");
        assert!(jwk.get("d").is_none());
    }

    #[test]
    fn a_signed_assertion_verifies_with_the_public_key() {
        let rsa = ClientKey::from_pem(RSA).unwrap();
        let jwt = rsa.sign(&serde_json::json!({"sub": "x"}), true).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.kid.as_deref(), Some(rsa.kid()));
        let key = jsonwebtoken::DecodingKey::from_jwk(&rsa.public_jwk(true)).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::PS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation).unwrap();
    }

    #[test]
    fn anything_else_is_refused_without_quoting_it() {
        let e =
            ClientKey::from_pem("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----")
                .unwrap_err();
        assert!(!e.contains("c2VjcmV0"));
        assert!(ClientKey::from_pem("").is_err());
    }
}
