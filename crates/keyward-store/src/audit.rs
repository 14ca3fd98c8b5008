//! The per-organization BLAKE3 hash chain over key events.

/// The result of `Store::verify_audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Events checked.
    pub events_checked: u64,
    /// Organizations checked.
    pub organizations_checked: u64,
    /// The first broken link of each organization whose chain is broken.
    pub broken: Vec<BrokenLink>,
}

/// Where a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The organization.
    pub organization_id: String,
    /// The first event whose stored hash or predecessor link is wrong.
    pub seq: i64,
    /// What is wrong, e.g. "hash does not match the event's contents".
    pub reason: String,
}
