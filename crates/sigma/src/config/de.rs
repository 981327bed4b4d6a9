//! The field deserializers of `sigma.toml`'s tables (durations, positive
//! counts): in `sigma-core`, since A's and the destinations' tables use
//! them too. Config assembly, above every stage (T → H → A → router →
//! destination).

pub use sigma_core::de::MAX_DURATION;
pub(super) use sigma_core::de::{duration, opt_duration, positive};
