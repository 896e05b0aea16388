//! How the engine opens systems that core does not know: a [`Connect`] (the Kafka
//! connector's, in `onceflow-connectors`) passed in
//! [`RunOptions::connect`](crate::engine::RunOptions::connect). A pipeline with
//! `[kafka]` needs one; the embedded log needs none.

use crate::config::{Pipeline, SourceConfig};
use crate::input::{InputError, SourceInput};
use crate::output::{CommitError, CommitTarget};

/// Opens the inputs and the commit target of a pipeline's external systems.
pub trait Connect: Send + Sync {
    /// Opens the commit target of `p` (outputs, dead letters and input offsets). Called
    /// first at every start and every recovery: opening it fences an earlier instance
    /// with the same identity, so the committed offsets it reports are final.
    fn target(&self, p: &Pipeline) -> Result<Box<dyn CommitTarget>, CommitError>;
    /// Opens source `s` of `p` (a source that is not of the embedded log), reading
    /// every partition from its first offset until the engine seeks.
    fn source(&self, p: &Pipeline, s: &SourceConfig) -> Result<Box<dyn SourceInput>, InputError>;
}
