//! CLI side: is the project's supervisor there, and if it died, bring it back.

/// Set by the CLI in a respawned supervisor's environment: which command started it.
pub const RESPAWNED_BY_ENV: &str = "BERTH_RESPAWNED_BY";
