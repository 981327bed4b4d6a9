//! Field deserializers shared by the tables of `sigma.toml`: humantime
//! durations, counts that must be positive and CIDR lists. Below every
//! stage (T → H → A → router → destination): each stage's crate owns its
//! own config table and builds its fields with these, so that `sigma`'s
//! config assembly reads one file with one set of rules.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::net::Cidr;

/// The longest duration any key accepts (365 days): larger values make no
/// sense and could overflow `Instant` arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// An optional [`positive`] count.
pub fn opt_positive<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialOrd + fmt::Display,
{
    positive(d).map(Some)
}

/// An optional [`duration`].
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A humantime duration string, > 0 and ≤ [`MAX_DURATION`].
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"10s\" or \"500ms\"")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            let d = humantime::parse_duration(s)
                .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))?;
            if d.is_zero() {
                return Err(E::custom(format!(
                    "invalid duration {s:?}: must be greater than 0"
                )));
            }
            if d > MAX_DURATION {
                return Err(E::custom(format!(
                    "invalid duration {s:?}: must be at most 365 days"
                )));
            }
            Ok(d)
        }
    }

    d.deserialize_str(DurationVisitor)
}

/// A number that must be greater than zero.
pub fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialOrd + fmt::Display,
{
    let v = T::deserialize(d)?;
    if v <= T::default() {
        return Err(de::Error::custom(format!(
            "must be greater than 0 (got {v})"
        )));
    }
    Ok(v)
}

/// A list of [`Cidr`] networks (`["10.0.0.0/8", "::1"]`).
pub fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| Cidr::parse(s).map_err(de::Error::custom))
        .collect()
}
