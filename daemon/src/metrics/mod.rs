//! What berthd counts for Prometheus: every gRPC call (CRI and native API)
//! by method and status code with its latency, image pulls and layer
//! unpacks, garbage collection, and at each scrape the pods and containers
//! by state, live shims and the metadata store's size.
//!
//! One process-wide set of metrics (as Go's default registry): the code that
//! does the work counts it where it happens, whether or not the endpoint
//! (`[metrics] address`, [`http`]) is on. Label values come from a fixed set
//! or are capped, so no client can grow the set without bound. The text
//! format is Prometheus' own (0.0.4), which `promtool check metrics`, every
//! Prometheus and every other scraper parse.

pub(crate) mod grpc;
pub(crate) mod http;

use std::sync::{LazyLock, Mutex};

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// gRPC methods with their own label values at most; calls beyond (only
/// unknown paths, which a client can invent) count as `method="other"`.
const MAX_RPC_LABEL_SETS: usize = 512;

pub(crate) struct Metrics {
    registry: Registry,
    /// grpc_service, grpc_method, grpc_code.
    pub rpc_handled: IntCounterVec,
    /// grpc_service, grpc_method.
    pub rpc_seconds: HistogramVec,
    /// (service, method) label pairs in use.
    rpc_methods: Mutex<std::collections::HashSet<(String, String)>>,
    /// result: ok, error.
    pub pulls: IntCounterVec,
    pub pull_bytes: IntCounter,
    pub pull_seconds: Histogram,
    pub unpack_seconds: Histogram,
    pub layer_cache_hits: IntCounter,
    pub layer_cache_misses: IntCounter,
    pub gc_runs: IntCounter,
    pub gc_reclaimed_bytes: IntCounter,
    pub gc_snapshots_removed: IntCounter,
    /// state.
    pub pods: IntGaugeVec,
    /// state.
    pub containers: IntGaugeVec,
    pub shims: IntGauge,
    pub metadata_bytes: IntGauge,
    /// Serialises scrapes: the state gauges are set, then encoded.
    scrape: Mutex<()>,
}

/// Registers what `new` made; a name clash is a bug in this file, caught
/// by its unit test.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    if let Err(e) = r.register(Box::new(m.clone())) {
        tracing::error!(error = %e, "registering a metric");
    }
    m
}

fn buckets(start: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, 2.0, count).unwrap_or_default()
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        // The names go-grpc-prometheus (containerd's) gives the RPC
        // metrics, so dashboards written for containerd work.
        let m = Metrics {
            rpc_handled: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "grpc_server_handled_total",
                        "gRPC calls completed on the server, by service, method and status code",
                    ),
                    &["grpc_service", "grpc_method", "grpc_code"],
                )?,
            ),
            rpc_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "grpc_server_handling_seconds",
                        "Time from a gRPC call's arrival to its last response byte",
                    )
                    // 0.5 ms .. ~16 s.
                    .buckets(buckets(0.0005, 16)),
                    &["grpc_service", "grpc_method"],
                )?,
            ),
            rpc_methods: Mutex::new(Default::default()),
            pulls: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "berth_image_pulls_total",
                        "Image pulls, by result (ok, error)",
                    ),
                    &["result"],
                )?,
            ),
            pull_bytes: register(
                &r,
                IntCounter::new(
                    "berth_image_pull_bytes_total",
                    "Bytes downloaded from registries (layers, configs, manifests)",
                )?,
            ),
            pull_seconds: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "berth_image_pull_duration_seconds",
                        "Duration of successful image pulls, download and unpack",
                    )
                    // 0.1 s .. ~55 min.
                    .buckets(buckets(0.1, 16)),
                )?,
            ),
            unpack_seconds: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "berth_layer_unpack_duration_seconds",
                        "Duration of unpacking one layer into a snapshot",
                    )
                    // 10 ms .. ~5.5 min.
                    .buckets(buckets(0.01, 16)),
                )?,
            ),
            layer_cache_hits: register(
                &r,
                IntCounter::new(
                    "berth_layer_cache_hits_total",
                    "Layers a pull found already unpacked",
                )?,
            ),
            layer_cache_misses: register(
                &r,
                IntCounter::new(
                    "berth_layer_cache_misses_total",
                    "Layers a pull had to unpack",
                )?,
            ),
            gc_runs: register(
                &r,
                IntCounter::new("berth_gc_runs_total", "Garbage collection passes")?,
            ),
            gc_reclaimed_bytes: register(
                &r,
                IntCounter::new(
                    "berth_gc_reclaimed_bytes_total",
                    "Bytes of content (blobs) garbage collection removed",
                )?,
            ),
            gc_snapshots_removed: register(
                &r,
                IntCounter::new(
                    "berth_gc_snapshots_removed_total",
                    "Snapshots garbage collection removed",
                )?,
            ),
            pods: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("berth_pods", "CRI pod sandboxes by state"),
                    &["state"],
                )?,
            ),
            containers: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("berth_containers", "CRI containers by state"),
                    &["state"],
                )?,
            ),
            shims: register(&r, IntGauge::new("berth_shims", "Live shim processes")?),
            metadata_bytes: register(
                &r,
                IntGauge::new(
                    "berth_metadata_size_bytes",
                    "Size of the metadata database on disk",
                )?,
            ),
            scrape: Mutex::new(()),
            registry: r,
        };
        let build = register(
            &m.registry,
            IntGaugeVec::new(
                Opts::new("berth_build_info", "berthd's version (always 1)"),
                &["version", "revision"],
            )?,
        );
        build
            .with_label_values(&[crate::VERSION, option_env!("BERTH_REVISION").unwrap_or("")])
            .set(1);
        Ok(m)
    }

    /// One finished call; a method past the cap counts as `other`.
    pub(crate) fn observe_rpc(&self, service: &str, method: &str, code: &str, seconds: f64) {
        let known = {
            let mut methods = berth_sysutil::lock(&self.rpc_methods);
            let key = (service.to_string(), method.to_string());
            methods.contains(&key) || (methods.len() < MAX_RPC_LABEL_SETS && methods.insert(key))
        };
        let (service, method) = if known {
            (service, method)
        } else {
            ("other", "other")
        };
        self.rpc_handled
            .with_label_values(&[service, method, code])
            .inc();
        self.rpc_seconds
            .with_label_values(&[service, method])
            .observe(seconds);
    }

    /// Sets the state gauges with `refresh`, then encodes everything in the
    /// Prometheus text format.
    pub(crate) fn scrape(&self, refresh: impl FnOnce(&Metrics)) -> String {
        let _one = berth_sysutil::lock(&self.scrape);
        refresh(self);
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"))
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // Only a bad name or label set, fixed above, can fail.
    #[allow(clippy::expect_used)]
    Metrics::new().expect("berthd's metric definitions are valid")
});

/// The process's metrics.
pub(crate) fn global() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_and_caps_invented_methods() {
        let m = Metrics::new().unwrap();
        m.observe_rpc("runtime.v1.RuntimeService", "Version", "OK", 0.001);
        m.observe_rpc("runtime.v1.RuntimeService", "Version", "OK", 0.002);
        m.observe_rpc("runtime.v1.RuntimeService", "Version", "NotFound", 0.002);
        for i in 0..(MAX_RPC_LABEL_SETS + 100) {
            m.observe_rpc("x.Bogus", &format!("M{i}"), "Unimplemented", 0.0);
        }
        assert_eq!(
            berth_sysutil::lock(&m.rpc_methods).len(),
            MAX_RPC_LABEL_SETS
        );
        let text = m.scrape(|m| {
            m.shims.set(3);
        });
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Version\",grpc_service=\"runtime.v1.RuntimeService\"} 2"
        ), "{text}");
        // Version took one of the slots: 101 invented methods had none.
        assert!(
            text.contains(
                "{grpc_code=\"Unimplemented\",grpc_method=\"other\",grpc_service=\"other\"} 101"
            ),
            "{text}"
        );
        assert!(text.contains("berth_shims 3"), "{text}");
        assert!(text.contains("berth_build_info{revision=\""), "{text}");
        assert!(
            text.contains("# TYPE grpc_server_handled_total counter"),
            "{text}"
        );
    }
}
