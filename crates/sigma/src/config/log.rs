//! `[log]`: what sigma writes besides its own diagnostics (DESIGN §8).
//! The format (human or JSON) is chosen on the command line
//! (`--log-format`, `SIGMA_LOG_FORMAT`), not here.

use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One line per request (and per WebSocket session when it ends)
    /// under the `tracing` target `sigma::access` (default `true`).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { access: true }
    }
}
