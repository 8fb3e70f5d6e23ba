//! Prometheus metrics and the tracing/OpenTelemetry set-up.

pub mod metrics;
pub mod telemetry;
