//! Pipeline fingerprints: named components, so a mismatch can say what changed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::stable_hash;

/// Longest component value shown as itself in messages and the manifest; longer or
/// non-text values are shown by size and digest.
const MAX_SHOWN_LEN: usize = 64;

/// What a snapshot's state depends on, as named components ("key field", "shards",
/// "aggregate", …), each a canonical encoding chosen by the caller. A snapshot is
/// only restored by a pipeline with the same fingerprint; otherwise the error names
/// the components that differ.
///
/// # Examples
///
/// ```
/// use onceflow_core::snapshot::Fingerprint;
///
/// let old = Fingerprint::new().with("key field", "account").with("shards", "4");
/// let new = Fingerprint::new().with("key field", "account").with("shards", "8");
/// let changes = new.changes_from(&old);
/// assert_eq!(changes.len(), 1);
/// assert_eq!(changes[0].to_string(), "shards (snapshot: 4, now: 8)");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    components: Vec<FingerprintComponent>,
}

/// One named component of a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintComponent {
    /// The component's name, e.g. `"aggregate"`.
    pub name: String,
    /// `hash::stable_hash` of the value.
    pub digest: u64,
    /// The value itself when it is short text, else its size and digest.
    pub shown: String,
}

impl Fingerprint {
    /// An empty fingerprint.
    pub fn new() -> Fingerprint {
        Fingerprint::default()
    }

    /// Adds (or replaces) the component `name` with the canonical bytes `value`.
    pub fn with(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Fingerprint {
        self.set(name, value);
        self
    }

    /// Adds (or replaces) the component `name` with the canonical bytes `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl AsRef<[u8]>) {
        let name = name.into();
        let value = value.as_ref();
        let digest = stable_hash(value);
        let shown = match std::str::from_utf8(value) {
            Ok(s) if s.len() <= MAX_SHOWN_LEN && !s.chars().any(char::is_control) => s.to_string(),
            _ => format!("{} bytes, digest {digest:016x}", value.len()),
        };
        let c = FingerprintComponent {
            name,
            digest,
            shown,
        };
        match self.components.iter_mut().find(|x| x.name == c.name) {
            Some(x) => *x = c,
            None => self.components.push(c),
        }
    }

    /// The components, in the order they were added.
    pub fn components(&self) -> &[FingerprintComponent] {
        &self.components
    }

    /// One digest over all components (names included, order ignored).
    pub fn digest(&self) -> u64 {
        let mut sorted: Vec<&FingerprintComponent> = self.components.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut buf = Vec::new();
        for c in sorted {
            buf.extend_from_slice(&(c.name.len() as u64).to_le_bytes());
            buf.extend_from_slice(c.name.as_bytes());
            buf.extend_from_slice(&c.digest.to_le_bytes());
        }
        stable_hash(&buf)
    }

    /// The components that differ between `snapshot` (what a snapshot was written
    /// with) and `self` (the running pipeline); empty when they match.
    pub fn changes_from(&self, snapshot: &Fingerprint) -> Vec<FingerprintChange> {
        let mut out = Vec::new();
        for c in &self.components {
            match snapshot.components.iter().find(|s| s.name == c.name) {
                Some(s) if s.digest == c.digest => {}
                Some(s) => out.push(FingerprintChange {
                    component: c.name.clone(),
                    snapshot: Some(s.shown.clone()),
                    now: Some(c.shown.clone()),
                }),
                None => out.push(FingerprintChange {
                    component: c.name.clone(),
                    snapshot: None,
                    now: Some(c.shown.clone()),
                }),
            }
        }
        for s in &snapshot.components {
            if !self.components.iter().any(|c| c.name == s.name) {
                out.push(FingerprintChange {
                    component: s.name.clone(),
                    snapshot: Some(s.shown.clone()),
                    now: None,
                });
            }
        }
        out
    }
}

/// A component that differs between a snapshot and the running pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintChange {
    /// The component's name.
    pub component: String,
    /// Its value in the snapshot (`None`: the snapshot does not have it).
    pub snapshot: Option<String>,
    /// Its value now (`None`: the pipeline no longer has it).
    pub now: Option<String>,
}

impl fmt::Display for FingerprintChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Long values are shown by digest: then "changed" says as much, more plainly.
        let short = |v: &String| !v.contains(" bytes, digest ");
        match (&self.snapshot, &self.now) {
            (Some(s), Some(n)) if short(s) && short(n) => {
                write!(f, "{} (snapshot: {s}, now: {n})", self.component)
            }
            (Some(_), Some(_)) => write!(f, "{} changed", self.component),
            (None, Some(n)) if short(n) => {
                write!(f, "{} (not in the snapshot; now: {n})", self.component)
            }
            (None, Some(_)) => write!(f, "{} added", self.component),
            (Some(s), None) if short(s) => write!(
                f,
                "{} (snapshot: {s}; not in this pipeline)",
                self.component
            ),
            (Some(_), None) => write!(f, "{} removed", self.component),
            (None, None) => write!(f, "{}", self.component),
        }
    }
}
