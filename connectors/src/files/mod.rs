//! JSON-lines files into the embedded log (`onceflow log append`, and a source's `load`).

mod source;
#[cfg(test)]
mod tests;

pub use source::{AppendOptions, AppendReport, FilesError, append_lines, load_if_missing};
