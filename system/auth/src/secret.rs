//! The token signing secret.
//!
//! Configured explicitly (all gateways and app servers of a cluster must share it), or
//! generated once and persisted under the data directory so tokens survive a restart.

use crate::AuthError;
use rand::Rng;
use std::path::Path;

/// Bytes of a generated secret (HS256 wants at least 32).
pub const SECRET_BYTES: usize = 32;
const FILE_NAME: &str = "token-secret";

/// Parses a secret given as hex (a flag, an environment variable or the persisted file):
/// at least [`SECRET_BYTES`] bytes.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, AuthError> {
    let secret =
        hex::decode(text.trim()).map_err(|e| AuthError::Secret(format!("not hex: {e}")))?;
    if secret.len() < SECRET_BYTES {
        return Err(AuthError::Secret(format!(
            "{} bytes, shorter than {SECRET_BYTES}",
            secret.len()
        )));
    }
    Ok(secret)
}

/// Reads `<dir>/token-secret` (hex), creating it with a fresh random secret if missing.
pub fn load_or_create(dir: &Path) -> Result<Vec<u8>, AuthError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            parse_hex(&text).map_err(|e| AuthError::Secret(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; SECRET_BYTES];
            rand::rng().fill(&mut secret[..]);
            write_private(&path, &hex::encode(&secret))
                .map_err(|e| AuthError::Secret(format!("{}: {e}", path.display())))?;
            Ok(secret)
        }
        Err(e) => Err(AuthError::Secret(format!("{}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    // Rename so a crash never leaves a half-written secret that would lock every user out.
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is synced: a power loss could otherwise
    // bring back no secret, and a new one would sign everyone out.
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_persists() {
        let dir = std::env::temp_dir().join(format!("chat-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = super::load_or_create(&dir).unwrap();
        let b = super::load_or_create(&dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), super::SECRET_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
