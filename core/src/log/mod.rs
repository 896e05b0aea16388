//! Embedded append-only log (being written).
