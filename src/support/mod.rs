//! Shell leaves that the stage and the tools share and that know nothing of either: the wall clock,
//! secrets kept out of logs, logging, signals and the Prometheus registry.

pub mod build_info;
pub mod clock;
pub mod metrics;
pub mod secret;
pub(crate) mod shutdown;
pub(crate) mod telemetry;
