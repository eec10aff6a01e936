//! How hard the property tests of untrusted input push.

/// Cases per property: `HERALD_FUZZ_CASES` (the CI fuzz step runs many), else `default`.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("HERALD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
