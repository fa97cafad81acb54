//! What this build is: the crate's version and the librdkafka it links, with the features librdkafka was
//! built with (its codecs and SASL mechanisms), for `--version` and the `build_info` metric.

use rdkafka::ClientConfig;

/// librdkafka's version and the features it was built with, as `kcat -V` prints them.
pub fn library_info() -> String {
    let (_, librdkafka, features) = library_parts();
    format!("librdkafka {librdkafka} builtin.features={features}")
}

/// (this crate's version, librdkafka's version, librdkafka's `builtin.features`).
pub fn library_parts() -> (&'static str, String, String) {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let features = ClientConfig::new()
        .create_native_config()
        .and_then(|c| c.get("builtin.features"))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    (env!("CARGO_PKG_VERSION"), version, features)
}
