//! The per-plugin memory cap, which also remembers that it refused growth so
//! a crash can be reported as "memory limit reached" rather than a bare trap.

use wasmtime::ResourceLimiter;

/// Table elements are small; this bounds them without getting in the way.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

#[derive(Debug)]
pub struct MemoryCap {
    limit: usize,
    used: usize,
    refused: bool,
}

impl MemoryCap {
    pub fn new(limit: u64) -> MemoryCap {
        MemoryCap {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            refused: false,
        }
    }

    /// Bytes of linear memory the plugin holds now.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a growth was refused since the last call; clears the flag.
    pub fn take_refused(&mut self) -> bool {
        std::mem::take(&mut self.refused)
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
