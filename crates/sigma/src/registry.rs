//! The registry of destinations: the router's list of factories, one line
//! per destination, in T → H → A → router → destination.
//!
//! A route's `to` goes to the first factory that matches it: config
//! accepts only a `to` some factory takes, and the route table builds the
//! route's destination with that factory. Adding a destination is one
//! module (with its `FACTORY`) plus one line here (docs/architecture.md).

use sigma_dest::factory::Factory;

/// Every destination sigma can route to.
pub static REGISTRY: &[&dyn Factory] = &[
    sigma_dest::echo::FACTORY,
    sigma_dest::broadcast::FACTORY,
    sigma_dest::db::FACTORY,
    sigma_dest::world::FACTORY,
    sigma_dest::web::FACTORY,
    sigma_dest::upstream::FACTORY,
    sigma_dest::staticfiles::FACTORY,
    #[cfg(feature = "test-destinations")]
    crate::testdest::CROSSED,
    #[cfg(feature = "test-destinations")]
    crate::testdest::INSPECT,
    #[cfg(feature = "test-destinations")]
    crate::hello::FACTORY,
];

/// The factory of the destination `to` names, if any.
pub fn find(to: &str) -> Option<&'static dyn Factory> {
    REGISTRY.iter().copied().find(|f| f.matches(to))
}
