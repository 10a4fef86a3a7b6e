//! Password hashing (Argon2id) and signed, expiring session tokens (HS256 JWT).
//!
//! # Layout
//! - [`Passwords`]: hashes and verifies passwords with the `argon2` crate.
//! - [`Tokens`]: issues and verifies session tokens with the `jsonwebtoken` crate.
//! - [`secret`]: the token signing secret, generated once and persisted under the data directory.
//!
//! Randomness comes from `rand` 0.9, whose `getrandom` madsim intercepts, so simulated runs replay.

pub mod secret;

use argon2::password_hash::{self, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
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
    memory: WorkingMemory,
}

/// Argon2's working memory (19 MiB a hash by default), kept for the next hash instead of
/// freed: what a freed buffer costs then depends on the allocator (which may keep it in the
/// arena of whichever thread ran the hash). With buffers reused, memory is bounded by the
/// hashes run at once, which the caller bounds.
#[derive(Clone, Default)]
struct WorkingMemory {
    spare: Arc<Mutex<Vec<Vec<Block>>>>,
}

impl WorkingMemory {
    /// Buffers kept for reuse at most; a caller running more hashes at once allocates the
    /// rest each time.
    const SPARE_MAX: usize = 16;

    /// Runs `f` on a buffer of at least `blocks` blocks.
    fn with<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let taken = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buffer = taken.unwrap_or_default();
        if buffer.len() < blocks {
            buffer.resize(blocks, Block::default());
        }
        let result = f(&mut buffer[..blocks]);
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < Self::SPARE_MAX {
            spare.push(buffer);
        }
        result
    }
}

impl Passwords {
    pub fn new(cost: PasswordCost) -> Result<Passwords, AuthError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut passwords = Passwords {
            argon2,
            dummy_hash: String::new(),
            memory: WorkingMemory::default(),
        };
        passwords.dummy_hash = passwords.hash("not a real password")?;
        Ok(passwords)
    }

    /// A new hash of `password` with a fresh salt, as a PHC string (`$argon2id$v=19$...`).
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        let failed = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
        let mut salt_bytes = [0u8; 16];
        rand::rng().fill(&mut salt_bytes);
        let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| failed(&e))?;
        let output = self.output(&self.argon2, password, &salt_bytes, None)?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(self.argon2.params()).map_err(|e| failed(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
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
        let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
            return false;
        };
        let mut salt_bytes = [0u8; 64];
        let (Ok(algorithm), Ok(params), Ok(salt_bytes)) = (
            Algorithm::try_from(parsed.algorithm),
            Params::try_from(&parsed),
            salt.decode_b64(&mut salt_bytes),
        ) else {
            return false;
        };
        let version = parsed
            .version
            .and_then(|v| Version::try_from(v).ok())
            .unwrap_or_default();
        let argon2 = Argon2::new(algorithm, version, params);
        match self.output(&argon2, password, salt_bytes, Some(expected.len())) {
            // `Output`'s equality is constant-time.
            Ok(output) => output == expected && exists,
            Err(_) => false,
        }
    }

    /// The raw hash, computed in reused working memory.
    fn output(
        &self,
        argon2: &Argon2<'_>,
        password: &str,
        salt: &[u8],
        len: Option<usize>,
    ) -> Result<Output, AuthError> {
        let params = argon2.params();
        let len = len
            .or(params.output_len())
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        self.memory.with(params.block_count(), |blocks| {
            Output::init_with(len, |out| {
                argon2
                    .hash_password_into_with_memory(password.as_bytes(), salt, out, blocks)
                    .map_err(password_hash::Error::from)
            })
            .map_err(|e| AuthError::Hash(e.to_string()))
        })
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

/// A verified token's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: String,
    /// Seconds since the epoch from which the token is refused.
    pub valid_until: u64,
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
        Ok(self.verify_session(token)?.user)
    }

    /// The user of a valid, unexpired token, and until when it stays valid.
    pub fn verify_session(&self, token: &str) -> Result<Verified, AuthError> {
        // jsonwebtoken checks `exp` against the system clock, which madsim simulates.
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        Ok(Verified {
            user: data.claims.sub,
            // jsonwebtoken accepts a token through its `exp` second (and the clock-skew
            // leeway): a session closed sooner could come straight back with the same token.
            valid_until: data
                .claims
                .exp
                .saturating_add(self.validation.leeway)
                .saturating_add(1),
        })
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

    /// The working memory of one hash is the next one's: however many hashes run one after
    /// another, one buffer, at the same address.
    #[test]
    fn working_memory_is_reused_not_reallocated() {
        let p = Passwords::new(PasswordCost::TESTING).unwrap();
        let spare = || {
            let spare = p.memory.spare.lock().unwrap();
            spare.iter().map(|b| b.as_ptr()).collect::<Vec<_>>()
        };
        let first = spare();
        assert_eq!(first.len(), 1, "the dummy hash's buffer is kept");
        for _ in 0..10 {
            let h = p.hash("correct horse").unwrap();
            assert!(p.verify("correct horse", Some(&h)));
        }
        assert_eq!(spare(), first);
    }

    /// Hashes are computed in reused memory, not by the crate's `PasswordHasher`: both must
    /// read each other's hashes (accounts stored before the change, and any other cost).
    #[test]
    fn hashes_agree_with_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = Passwords::new(PasswordCost::TESTING).unwrap();
        let cost = PasswordCost {
            memory_kib: 256,
            ..PasswordCost::TESTING
        };
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None).unwrap(),
        );
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let stored = theirs
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(
            ours.verify("correct horse", Some(&stored)),
            "a stored hash of another cost"
        );
        assert!(!ours.verify("wrong horse", Some(&stored)));
        let ours_hash = ours.hash("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours_hash).unwrap();
        assert!(theirs.verify_password(b"correct horse", &parsed).is_ok());
        assert!(theirs.verify_password(b"wrong horse", &parsed).is_err());
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

        // Valid through its `exp` second; `valid_until` is the first second it is refused.
        let ends_now = t.issue_with_expiry("alice", now - 100, now).unwrap();
        let session = t.verify_session(&ends_now.token).unwrap();
        assert_eq!(session.valid_until, now + 1);
        assert!(t.verify("").is_err());
    }
}
