//! ed25519 keys, signatures and key files.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::CryptoError;

/// An ed25519 public key that has been checked to be a valid, non-weak point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

/// Most decoded keys [`PublicKey::from_bytes`] remembers (about 200 bytes
/// each).
pub const KEY_CACHE_ENTRIES: usize = 1 << 15;

/// Keys already decoded and checked, by encoding. Decoding decompresses a
/// curve point (a field exponentiation, some 10 µs), and a node decodes the
/// same keys again and again: senders and recipients of every transaction
/// it admits, validators in every message. Only keys that passed every
/// check are remembered, so the cache can change how fast a key decodes,
/// never whether it does. When full it is emptied (a bound, not an LRU).
/// Keys are of clients' choosing: the hasher is seeded (foldhash), and
/// cheaper than SipHash on 32 bytes.
fn key_cache() -> &'static Mutex<HashMap<[u8; 32], VerifyingKey>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], VerifyingKey>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl PublicKey {
    /// Parses 32 bytes, refusing invalid encodings and small-order (weak) keys,
    /// for which a signature can verify on many messages.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, CryptoError> {
        let cache = key_cache();
        // A panic elsewhere while holding the lock leaves a map of valid
        // keys: still usable.
        if let Some(k) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(bytes) {
            return Ok(PublicKey(*k));
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey {
            reason: "not a valid curve point",
        })?;
        if key.is_weak() {
            return Err(CryptoError::InvalidPublicKey {
                reason: "small-order (weak) key",
            });
        }
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= KEY_CACHE_ENTRIES {
            c.clear();
        }
        c.insert(*bytes, key);
        Ok(PublicKey(key))
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<PublicKey, CryptoError> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| CryptoError::InvalidPublicKey {
            reason: "expected 64 hex characters",
        })?;
        PublicKey::from_bytes(&b)
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Lower-case hex of the encoding.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    pub(crate) fn inner(&self) -> &VerifyingKey {
        &self.0
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.to_bytes().cmp(&other.to_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.to_bytes().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            PublicKey::from_hex(&s).map_err(de::Error::custom)
        } else {
            let b = <[u8; 32]>::deserialize(d)?;
            PublicKey::from_bytes(&b).map_err(de::Error::custom)
        }
    }
}

/// A 64-byte ed25519 signature, not yet checked against anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    pub(crate) fn inner(&self) -> ed25519_dalek::Signature {
        ed25519_dalek::Signature::from_bytes(&self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Two fixed halves: serde implements arrays only up to 32 elements,
        // and a fixed-size tuple keeps the encoding free of a length prefix.
        let (a, b) = self.0.split_at(32);
        let mut lo = [0u8; 32];
        let mut hi = [0u8; 32];
        lo.copy_from_slice(a);
        hi.copy_from_slice(b);
        (lo, hi).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (lo, hi) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&lo);
        out[32..].copy_from_slice(&hi);
        Ok(Signature(out))
    }
}

/// A signing key with its public key. Never serialised except to a key file.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<KeyPair, CryptoError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(KeyPair::from_seed(seed))
    }

    /// The key derived from a 32-byte secret seed (deterministic: tests and
    /// simulation use it for reproducible keys).
    pub fn from_seed(seed: [u8; 32]) -> KeyPair {
        let signing = SigningKey::from_bytes(&seed);
        // A key derived by clamping a hashed seed is never small-order.
        let public = PublicKey(signing.verifying_key());
        KeyPair { signing, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The 32-byte secret seed.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// Signs raw bytes. Callers sign `signing_bytes(..)`, never bare payloads.
    pub fn sign_raw(&self, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(msg).to_bytes())
    }

    /// Writes the secret seed as hex to a new file created with mode 0600.
    /// Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let io = |e: std::io::Error| CryptoError::KeyFileIo {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(f, "{}", hex::encode(self.seed())).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads a key file written by [`KeyPair::save`]. A file that group or
    /// others can read or write is refused: the key may already be known.
    pub fn load(path: &Path) -> Result<KeyPair, CryptoError> {
        let io = |e: std::io::Error| CryptoError::KeyFileIo {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::KeyFilePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() > 1024 {
            return Err(CryptoError::KeyFileFormat {
                path: path.to_path_buf(),
                reason: format!("{} bytes, expected 64 hex characters", meta.len()),
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|e| CryptoError::KeyFileFormat {
            path: path.to_path_buf(),
            reason: format!("expected 64 hex characters: {e}"),
        })?;
        Ok(KeyPair::from_seed(seed))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_a_key_twice_gives_the_same_answer_cached_or_not() {
        let k = KeyPair::from_seed([42; 32]).public();
        let b = k.to_bytes();
        assert_eq!(PublicKey::from_bytes(&b).unwrap(), k);
        assert!(key_cache().lock().unwrap().contains_key(&b));
        assert_eq!(PublicKey::from_bytes(&b).unwrap(), k);
        // Refused keys are refused every time and never remembered: the
        // identity point is small-order, and this encoding is no point.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let bad = (2u8..=255)
            .map(|i| {
                let mut b = [0u8; 32];
                b[0] = i;
                b
            })
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .unwrap();
        for b in [weak, bad] {
            for _ in 0..2 {
                assert!(PublicKey::from_bytes(&b).is_err());
            }
            assert!(!key_cache().lock().unwrap().contains_key(&b));
        }
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validator.key");
        let k = KeyPair::generate().unwrap();
        k.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(KeyPair::load(&path).unwrap().public(), k.public());
        assert!(k.save(&path).is_err(), "never overwrites a key");
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validator.key");
        KeyPair::generate().unwrap().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load(&path).unwrap_err();
        assert!(matches!(
            err,
            CryptoError::KeyFilePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validator.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"not hex")
            .unwrap();
        assert!(matches!(
            KeyPair::load(&path),
            Err(CryptoError::KeyFileFormat { .. })
        ));
    }

    #[test]
    fn public_key_hex_round_trip_and_weak_keys() {
        let k = KeyPair::from_seed([7; 32]).public();
        assert_eq!(PublicKey::from_hex(&k.to_hex()).unwrap(), k);
        // The identity point encodes as 1 followed by zeros: small order.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&ident),
            Err(CryptoError::InvalidPublicKey { .. })
        ));
    }
}
