//! Signed checkpoints of the record chain, and the host key that signs them. Every
//! `central.checkpoint_interval` (and at shutdown) the writer signs the chain's head:
//! the host, the checkpoint's own number, how many records the chain holds and the
//! hash of the last one. A checkpoint proves, to whoever holds the host's public key,
//! that the chain up to that record was what the agent wrote.
use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ring::{
    rand::SystemRandom,
    signature::{self, Ed25519KeyPair, KeyPair as _},
};
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use super::chain::{Hash, Head, hex, hex_bytes, to_hash};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("host key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "host key {path} is readable or writable by others (mode {mode:o}); it must be \
         owned by root with mode 600 (chmod 600 {path})"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("host key {path} is not an Ed25519 key in PKCS#8 ({reason})")]
    Invalid { path: PathBuf, reason: String },
    #[error("generating a host key: {0}")]
    Generate(String),
}

/// The host's Ed25519 signing key, kept in the state directory (root only).
pub struct HostKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &hex(self.public()))
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// Reads the key at `path`, creating it (mode 600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io_err)?;
                }
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|e| KeyError::Generate(e.to_string()))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io_err)?;
                file.write_all(pkcs8.as_ref()).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
                tracing::info!(path = %path.display(), "created the host key that signs record checkpoints");
                Self::load(path)
            }
            Err(source) => Err(io_err(source)),
        }
    }

    /// Reads the key at `path`, refusing one that others can read or write.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(io_err)?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { pair })
    }

    /// The 32-byte public key.
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// One signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// The checkpoint's own number (1, 2, ... per host).
    pub seq: i64,
    /// When it was signed (ms since the epoch).
    pub at: i64,
    pub host: String,
    /// The records the chain held: the position of its last entry.
    pub records: i64,
    /// That entry's hash.
    #[serde(serialize_with = "hex_bytes")]
    pub head: Hash,
    #[serde(serialize_with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// Signs the chain's `head` as checkpoint `seq`.
    pub fn sign(key: &HostKey, host: &str, seq: i64, at: i64, head: Head) -> Self {
        let mut checkpoint = Self {
            seq,
            at,
            host: host.to_owned(),
            records: head.seq,
            head: head.hash,
            signature: Vec::new(),
        };
        checkpoint.signature = key.sign(&checkpoint.message());
        checkpoint
    }

    /// The bytes signed.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "tollgate-checkpoint-v1\nhost {}\ncheckpoint {}\nat {}\nrecords {}\nhead {}\n",
            self.host,
            self.seq,
            self.at,
            self.records,
            hex(&self.head)
        )
        .into_bytes()
    }

    /// Whether `public` (an Ed25519 public key) signed this checkpoint.
    pub fn is_signed_by(&self, public: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, public)
            .verify(&self.message(), &self.signature)
            .is_ok()
    }

    pub fn store(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO checkpoints (seq, at, host, records, head, signature) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            self.seq,
            self.at,
            self.host,
            self.records,
            &self.head[..],
            self.signature
        ])?;
        Ok(())
    }

    pub fn of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let head: Vec<u8> = row.get(4)?;
        Ok(Self {
            seq: row.get(0)?,
            at: row.get(1)?,
            host: row.get(2)?,
            records: row.get(3)?,
            head: to_hash(&head).unwrap_or_default(),
            signature: row.get(5)?,
        })
    }
}

/// The newest stored checkpoint.
pub fn latest(conn: &rusqlite::Connection) -> rusqlite::Result<Option<Checkpoint>> {
    conn.query_row(
        "SELECT seq, at, host, records, head, signature FROM checkpoints ORDER BY seq DESC \
         LIMIT 1",
        [],
        Checkpoint::of_row,
    )
    .optional()
}

/// Every stored checkpoint from `after` (exclusive), in order.
pub fn read(conn: &rusqlite::Connection, after: i64) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, host, records, head, signature FROM checkpoints WHERE seq > ?1 \
         ORDER BY seq",
    )?;
    stmt.query_map(params![after], Checkpoint::of_row)?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_and_not_once_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        let key = HostKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The same key on the next start.
        let again = HostKey::load_or_create(&path).unwrap();
        assert_eq!(key.public(), again.public());

        let head = Head {
            seq: 42,
            hash: [7; 32],
        };
        let cp = Checkpoint::sign(&key, "runner-1", 3, 1000, head);
        assert!(cp.is_signed_by(key.public()));
        for tampered in [
            Checkpoint {
                records: 41,
                ..cp.clone()
            },
            Checkpoint {
                host: "runner-2".into(),
                ..cp.clone()
            },
            Checkpoint {
                head: [8; 32],
                ..cp.clone()
            },
        ] {
            assert!(!tampered.is_signed_by(key.public()));
        }
        let other = HostKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(!cp.is_signed_by(other.public()));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        HostKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = HostKey::load(&path).unwrap_err();
        assert!(
            matches!(error, KeyError::Exposed { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
    }
}
