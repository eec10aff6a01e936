use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of the publish side, for /metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct DispatcherStats {
    pub published_reliable: u64,
    pub published_ephemeral: u64,
    pub duplicates: u64,
    pub commits: u64,
    pub commit_failures: u64,
    /// Channels taken over (sealed and read) under a new lease fence.
    pub claims: u64,
    /// Writes not acknowledged because the lease ended while they were in flight.
    pub fenced: u64,
    pub trimmed: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    published_reliable: AtomicU64,
    published_ephemeral: AtomicU64,
    duplicates: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    claims: AtomicU64,
    fenced: AtomicU64,
    trimmed: AtomicU64,
}

impl Counters {
    pub fn add_reliable(&self, n: u64) {
        self.published_reliable.fetch_add(n, Relaxed);
    }
    pub fn add_ephemeral(&self, n: u64) {
        self.published_ephemeral.fetch_add(n, Relaxed);
    }
    pub fn add_duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Relaxed);
    }
    pub fn add_commit(&self) {
        self.commits.fetch_add(1, Relaxed);
    }
    pub fn add_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
    }
    pub fn add_claims(&self, n: u64) {
        self.claims.fetch_add(n, Relaxed);
    }
    pub fn add_fenced(&self) {
        self.fenced.fetch_add(1, Relaxed);
    }
    pub fn add_trimmed(&self, n: u64) {
        self.trimmed.fetch_add(n, Relaxed);
    }
    pub fn snapshot(&self) -> DispatcherStats {
        DispatcherStats {
            published_reliable: self.published_reliable.load(Relaxed),
            published_ephemeral: self.published_ephemeral.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            commits: self.commits.load(Relaxed),
            commit_failures: self.commit_failures.load(Relaxed),
            claims: self.claims.load(Relaxed),
            fenced: self.fenced.load(Relaxed),
            trimmed: self.trimmed.load(Relaxed),
        }
    }
}
