//! The admin token: taken from configuration, or generated once and kept in the data
//! directory (mode 0600) for the CLI to read. Compared in constant time.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// File name of the generated token inside the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// A secret bearer token. Its `Debug` output hides the value.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Wraps a configured token; `None` if it is empty.
    pub fn new(value: &str) -> Option<Self> {
        let value = value.trim();
        (!value.is_empty()).then(|| Self(value.to_owned()))
    }

    /// The token value, for sending.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate.as_bytes());
        expected.ct_eq(&given).into()
    }

    /// The token file's path in `data_dir`.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join(TOKEN_FILE)
    }

    /// Reads the token kept in `data_dir`.
    pub fn read_from(data_dir: &Path) -> io::Result<Self> {
        let path = Self::path_in(data_dir);
        let value = fs::read_to_string(&path)?;
        Self::new(&value).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            )
        })
    }

    /// Reads the token kept in `data_dir`, generating and storing one (mode 0600) if there is
    /// none. Returns the token and whether it was generated.
    pub fn load_or_generate(data_dir: &Path) -> io::Result<(Self, bool)> {
        match Self::read_from(data_dir) {
            Ok(token) => return Ok((token, false)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        fs::create_dir_all(data_dir)?;
        let token = Self(URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
        let path = Self::path_in(data_dir);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(token.0.as_bytes())?;
        file.sync_all()?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok((token, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (token, generated) = AdminToken::load_or_generate(dir.path()).unwrap();
        assert!(generated);
        let mode = fs::metadata(AdminToken::path_in(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, generated) = AdminToken::load_or_generate(dir.path()).unwrap();
        assert!(!generated);
        assert!(again.matches(token.expose()));
        assert!(token.expose().len() >= 40);
    }

    #[test]
    fn matching_is_exact() {
        let token = AdminToken::new("s3cret").unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches(""));
        assert!(AdminToken::new("  ").is_none());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }
}
