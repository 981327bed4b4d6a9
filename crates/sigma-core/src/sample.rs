//! What a destination reports on `GET /metrics`: plain samples that the
//! shell labels with the route and writes in the Prometheus text format
//! (one `# HELP` / `# TYPE` per family, whichever routes report it).
//! Read only when `/metrics` is scraped, never on the request path.

/// One sample of a counter or gauge family.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family, e.g. `sigma_broadcast_publishes_total`.
    pub name: &'static str,
    /// Its `# HELP` text (the same for every sample of the family).
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Labels besides `route`, e.g. `("op", "get")`.
    pub labels: Vec<(&'static str, &'static str)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A counter sample.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: "counter",
            labels: Vec::new(),
            value: value as f64,
        }
    }

    /// A gauge sample.
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            kind: "gauge",
            ..Self::counter(name, help, value)
        }
    }

    /// The same sample with one more label.
    pub fn with(mut self, key: &'static str, value: &'static str) -> Self {
        self.labels.push((key, value));
        self
    }
}
