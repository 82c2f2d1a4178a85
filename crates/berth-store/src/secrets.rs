//! Secrets sealed at rest with ChaCha20-Poly1305 under the hub's key. A sealed value is
//! `v1:<hex nonce><hex ciphertext>`; the key comes from `BERTH_SECRET_KEY` (64 hex characters) or
//! a key file created with mode 0600 on first start.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::StoreError;

const PREFIX: &str = "v1:";
const NONCE_BYTES: usize = 12;

/// Seals and opens secrets with one key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(<key redacted>)")
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|err| StoreError::Secret(format!("no randomness: {err}")))?;
    Ok(bytes)
}

/// Random bytes as hex, for tokens and keys.
pub fn random_hex<const N: usize>() -> Result<String, StoreError> {
    Ok(hex::encode(random_bytes::<N>()?))
}

impl SecretBox {
    /// A box over a key given as 64 hex characters.
    pub fn from_hex(key_hex: &str) -> Result<Self, StoreError> {
        let key = hex::decode(key_hex.trim())
            .ok()
            .filter(|key| key.len() == 32)
            .ok_or_else(|| {
                StoreError::Invalid(
                    "the secret key must be 64 hex characters (32 bytes)".to_owned(),
                )
            })?;
        let key = Key::try_from(key.as_slice())
            .map_err(|_| StoreError::Invalid("the secret key must be 32 bytes".to_owned()))?;
        Ok(Self {
            cipher: ChaCha20Poly1305::new(&key),
        })
    }

    /// The key from `env_key` if given, else from `file`, creating the file (mode 0600) with a new
    /// random key when it does not exist.
    pub fn load_or_create(env_key: Option<&str>, file: &Path) -> Result<Self, StoreError> {
        if let Some(key) = env_key.filter(|key| !key.trim().is_empty()) {
            return Self::from_hex(key);
        }
        match std::fs::read_to_string(file) {
            Ok(text) => Self::from_hex(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = random_hex::<32>()?;
                write_private(file, &key).map_err(|err| {
                    StoreError::Invalid(format!(
                        "cannot write the key file {}: {err}",
                        file.display()
                    ))
                })?;
                Self::from_hex(&key)
            }
            Err(err) => Err(StoreError::Invalid(format!(
                "cannot read the key file {}: {err}",
                file.display()
            ))),
        }
    }

    /// Seals `plaintext`.
    pub fn seal(&self, plaintext: &str) -> Result<String, StoreError> {
        let nonce = random_bytes::<NONCE_BYTES>()?;
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext.as_bytes())
            .map_err(|_| StoreError::Secret("sealing failed".to_owned()))?;
        Ok(format!(
            "{PREFIX}{}{}",
            hex::encode(nonce),
            hex::encode(ciphertext)
        ))
    }

    /// Opens a value made by [`SecretBox::seal`] with the same key.
    pub fn open(&self, sealed: &str) -> Result<String, StoreError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .filter(|bytes| bytes.len() > NONCE_BYTES)
            .ok_or_else(|| StoreError::Secret("not a sealed value".to_owned()))?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce =
            Nonce::try_from(nonce).map_err(|_| StoreError::Secret("bad nonce".to_owned()))?;
        let plaintext = self
            .cipher
            .decrypt(&nonce, ciphertext)
            .map_err(|_| StoreError::Secret("wrong key or damaged value".to_owned()))?;
        String::from_utf8(plaintext).map_err(|_| StoreError::Secret("not UTF-8".to_owned()))
    }
}

/// Writes `text` to a new file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key() {
        let key = random_hex::<32>().expect("key");
        let secret_box = SecretBox::from_hex(&key).expect("box");
        let sealed = secret_box.seal("hunter2").expect("seal");
        assert!(sealed.starts_with("v1:") && !sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            secret_box.seal("hunter2").expect("seal"),
            "fresh nonce each time"
        );
        assert_eq!(secret_box.open(&sealed).expect("open"), "hunter2");
        let other = SecretBox::from_hex(&random_hex::<32>().expect("key")).expect("box");
        assert!(matches!(other.open(&sealed), Err(StoreError::Secret(_))));
        assert!(SecretBox::from_hex("short").is_err());
        assert!(!format!("{secret_box:?}").contains(&key));
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let path =
            std::env::temp_dir().join(format!("berth-key-{}/secret.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = SecretBox::load_or_create(None, &path).expect("created");
        let sealed = first.seal("x").expect("seal");
        let second = SecretBox::load_or_create(None, &path).expect("read");
        assert_eq!(second.open(&sealed).expect("same key"), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::remove_dir_all(path.parent().expect("dir")).ok();
    }
}
