//! Password hashing (Argon2id) and signed, expiring session tokens (HS256 JWT).
//!
//! # Layout
//! - [`Passwords`]: hashes and verifies passwords with the `argon2` crate.
//! - [`Tokens`]: issues and verifies session tokens with the `jsonwebtoken` crate.
//! - [`secret`]: the token signing secret, generated once and persisted under the data directory.
//!
//! Randomness comes from `rand` 0.9, whose `getrandom` madsim intercepts, so simulated runs replay.

pub mod secret;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("token signing failed: {0}")]
    Sign(String),
    #[error("token secret: {0}")]
    Secret(String),
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl PasswordCost {
    /// OWASP's recommended minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
    pub const DEFAULT: PasswordCost = PasswordCost {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    /// Cheap hashing for simulations and tests that register hundreds of users. Never for deploys.
    pub const TESTING: PasswordCost = PasswordCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
}

/// Hashes and verifies passwords. Verification reads the cost from the stored hash, so
/// changing the cost only affects new hashes.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    /// A hash verified against when the user does not exist, so a login for an unknown user
    /// costs the same time as one with a wrong password and usernames do not leak.
    dummy_hash: String,
}

impl Passwords {
    pub fn new(cost: PasswordCost) -> Result<Passwords, AuthError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut passwords = Passwords {
            argon2,
            dummy_hash: String::new(),
        };
        passwords.dummy_hash = passwords.hash("not a real password")?;
        Ok(passwords)
    }

    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        let mut salt_bytes = [0u8; 16];
        rand::rng().fill(&mut salt_bytes);
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
        let hash = self
            .argon2
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// Whether `password` matches `stored`; `None` verifies against a dummy hash and fails.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let (stored, exists) = match stored {
            Some(s) => (s, true),
            None => (self.dummy_hash.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        self.argon2
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
            && exists
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the epoch.
    exp: u64,
    iat: u64,
}

/// Issues and verifies session tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

impl Tokens {
    /// Tokens live 24 hours unless configured otherwise.
    pub const TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);

    pub fn new(secret: &[u8], ttl: Duration) -> Tokens {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        // The gateway and app servers share one clock source; a leeway would let expired tokens in.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, username: &str) -> Result<IssuedToken, AuthError> {
        let now = chat_proto::model::now_ms() / 1000;
        self.issue_with_expiry(username, now, now + self.ttl.as_secs())
    }

    /// Issues a token with explicit times; tests use it to forge expired tokens.
    pub fn issue_with_expiry(
        &self,
        username: &str,
        iat: u64,
        exp: u64,
    ) -> Result<IssuedToken, AuthError> {
        let claims = Claims {
            sub: username.to_owned(),
            exp,
            iat,
        };
        let token = jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(|e| AuthError::Sign(e.to_string()))?;
        Ok(IssuedToken {
            token,
            expires_at: exp,
        })
    }

    /// Returns the username a valid, unexpired token was issued to.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        // jsonwebtoken checks `exp` against the system clock, which madsim simulates.
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        Ok(data.claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_the_right_one() {
        let p = Passwords::new(PasswordCost::TESTING).unwrap();
        let h = p.hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse", Some(&h)));
        assert!(!p.verify("wrong horse", Some(&h)));
        assert!(!p.verify("correct horse", None));
        assert!(!p.verify("correct horse", Some("garbage")));
        assert_ne!(h, p.hash("correct horse").unwrap(), "salts differ");
    }

    #[test]
    fn tokens_round_trip_and_reject_forgery_and_expiry() {
        let t = Tokens::new(b"secret-one", Tokens::TTL_DEFAULT);
        let issued = t.issue("alice").unwrap();
        assert_eq!(t.verify(&issued.token).unwrap(), "alice");

        let other = Tokens::new(b"secret-two", Tokens::TTL_DEFAULT);
        assert!(
            other.verify(&issued.token).is_err(),
            "signed with another secret"
        );

        let now = chat_proto::model::now_ms() / 1000;
        let expired = t.issue_with_expiry("alice", now - 100, now - 1).unwrap();
        assert!(t.verify(&expired.token).is_err());
        assert!(t.verify("not.a.token").is_err());
        assert!(t.verify("").is_err());
    }
}
