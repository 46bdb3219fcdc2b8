//! The incremental top-level `model` scanner (SPEC.md §4). CONTRACT STUB: the scanner helper
//! replaces the bodies, keeping the public API.

/// Why a body carries no usable model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Not one valid JSON object (syntax, trailing data, invalid UTF-8, empty body).
    InvalidJson { offset: u64, reason: &'static str },
    /// No top-level `model`, or `null`.
    MissingModel,
    /// Top-level `model` is not a string.
    InvalidModel,
    /// Top-level `model` given twice.
    DuplicateModel,
}

/// Push scanner: feed the body block by block, then `finish`.
#[derive(Debug, Default)]
pub struct ModelScanner {}

impl ModelScanner {
    pub fn new() -> ModelScanner {
        ModelScanner {}
    }
    /// Feeds the next bytes of the body. An error is final (later calls repeat it).
    pub fn feed(&mut self, _chunk: &[u8]) -> Result<(), ScanError> {
        Ok(())
    }
    /// Ends the body: the unescaped top-level model, or why there is none.
    pub fn finish(&mut self) -> Result<&str, ScanError> {
        Err(ScanError::MissingModel)
    }
}
