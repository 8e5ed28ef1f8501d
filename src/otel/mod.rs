//! Span export (`tracing:` in the config): the spans of a request leave tollgate over
//! OTLP/HTTP protobuf to an OpenTelemetry Collector (or any OTLP receiver).
//!
//! Where it sits: [`layer`] opens the request's server span at the top of the request
//! path (beside the W3C trace context of `trace_context`) and keeps it *current* while
//! the layers below run, so that the steps that call out — JWKS fetches, introspection,
//! upstream token fetches, the rate-limit store, the upstream itself — open child spans
//! with [`child`] without being handed anything. A request that is not sampled, or a
//! gateway without `tracing.otlp_endpoint`, has no current span and [`child`] costs one
//! task-local lookup.
//!
//! Spans are built here as OpenTelemetry `SpanData` (ids are the ones tollgate puts in
//! `traceparent`, so what the upstream sees as its parent is exactly the exported span)
//! and handed to a bounded queue; one background task per exporter batches them and
//! sends them with `opentelemetry-otlp`'s HTTP exporter (hyper + rustls). A request
//! never waits for the collector: a full queue or a failed export drops the spans and
//! counts them (`tollgate_trace_spans_dropped_total`).
//!
//! Attributes are names, statuses and decisions; never a token, a secret or a cookie.

pub mod layer;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

/// `tracing:` as compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where spans are sent: the OTLP/HTTP traces URL (`.../v1/traces`). Without it,
    /// nothing is exported; `sample_ratio` still decides the sampled flag of new traces.
    pub endpoint: Option<http::Uri>,
    /// `service.name` of the exported spans' resource.
    pub service_name: Arc<str>,
    /// The share of new traces (no valid incoming `traceparent`) that are sampled. A
    /// continued trace keeps its caller's decision.
    pub sample_ratio: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoint: None,
            service_name: Arc::from("tollgate"),
            sample_ratio: 1.0,
        }
    }
}

/// Spans per export request, at most.
const MAX_BATCH: usize = 512;
/// Spans waiting for export, at most; beyond it new spans are dropped (and counted).
const QUEUE: usize = 4096;
/// How long a batch waits to fill before it is sent anyway.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export request, at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Export counters, kept across reloads for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
}

/// One exporter: the queue its background task drains.
#[derive(Debug)]
pub struct Pipeline {
    tx: mpsc::Sender<SpanData>,
    counters: Arc<Counters>,
    scope: InstrumentationScope,
}

impl Pipeline {
    /// Queues a finished span; never waits.
    fn send(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the request path reads per request: the ratio for new traces and the exporter.
#[derive(Debug)]
pub struct Tracer {
    pub settings: Arc<Settings>,
    pipeline: Option<Arc<Pipeline>>,
}

impl Tracer {
    pub fn sample_ratio(&self) -> f64 {
        self.settings.sample_ratio
    }

    pub fn exporting(&self) -> bool {
        self.pipeline.is_some()
    }
}

/// The gateway's tracing state: outlives reloads; [`Tracing::apply`] follows the config.
#[derive(Debug, Default)]
pub struct Tracing {
    current: ArcSwapOption<Tracer>,
    pub counters: Arc<Counters>,
    /// Serialises `apply` (a reload and a start never build two exporters at once).
    applying: Mutex<()>,
}

impl Tracing {
    /// The tracer for this request (`None`: no `tracing:` block).
    pub fn current(&self) -> Option<Arc<Tracer>> {
        self.current.load_full()
    }

    /// [`Tracing::current`] without touching the reference count (the request path;
    /// not to be held across an await).
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<Tracer>>> {
        self.current.load()
    }

    /// Follows the config's `tracing:` block: a changed endpoint or service name starts a
    /// new exporter (the old one sends what it has queued, then stops); a changed ratio
    /// applies at once. Needs a Tokio runtime for the exporter's task; without one
    /// (`tollgate explain`) nothing is exported.
    pub fn apply(&self, settings: Option<&Arc<Settings>>) {
        let _one = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let Some(settings) = settings else {
            if old.is_some() {
                tracing::info!("tracing: no `tracing:` block any more; span export stopped");
            }
            self.current.store(None);
            return;
        };
        let same_exporter = old.as_ref().is_some_and(|o| {
            o.settings.endpoint == settings.endpoint
                && o.settings.service_name == settings.service_name
        });
        let pipeline = if same_exporter {
            old.as_ref().and_then(|o| o.pipeline.clone())
        } else {
            settings
                .endpoint
                .as_ref()
                .and_then(|e| self.start(e, &settings.service_name))
        };
        self.current.store(Some(Arc::new(Tracer {
            settings: settings.clone(),
            pipeline,
        })));
    }

    fn start(&self, endpoint: &http::Uri, service_name: &Arc<str>) -> Option<Arc<Pipeline>> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return None;
        };
        let exporter = match exporter(endpoint, service_name) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(endpoint = %endpoint, error = %e, "tracing: cannot build the OTLP exporter; spans are not exported");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(export_loop(
            rx,
            exporter,
            self.counters.clone(),
            endpoint.to_string(),
        ));
        tracing::info!(endpoint = %endpoint, service_name = %service_name, "tracing: exporting spans over OTLP/HTTP");
        Some(Arc::new(Pipeline {
            tx,
            counters: self.counters.clone(),
            scope: InstrumentationScope::builder("tollgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }))
    }
}

fn exporter(
    endpoint: &http::Uri,
    service_name: &Arc<str>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
    let tls = crate::tls::client_config(None)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = opentelemetry_http::hyper::HyperClient::new(https, EXPORT_TIMEOUT, None);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.to_string())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        // A failed batch is dropped and counted at once: with the collector down,
        // retrying would only make the queue overflow later.
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|e| e.to_string())?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(service_name.to_string())
            .build(),
    );
    Ok(exporter)
}

/// Drains the queue in batches until every sender is gone (the exporter was replaced or
/// the gateway stopped), then sends what is left and ends.
async fn export_loop(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    counters: Arc<Counters>,
    endpoint: String,
) {
    let failing = AtomicBool::new(false);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let result = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await;
        match result {
            Ok(Ok(())) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
                if failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint, "tracing: the collector accepts spans again");
                }
            }
            Ok(Err(e)) => {
                counters.dropped.fetch_add(n, Ordering::Relaxed);
                if !failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint, error = %e, dropped = n,
                        "tracing: span export failed; spans are dropped (counted in tollgate_trace_spans_dropped_total) until the collector answers");
                }
            }
            Err(_) => {
                counters.dropped.fetch_add(n, Ordering::Relaxed);
                if !failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint, timeout = ?EXPORT_TIMEOUT, dropped = n,
                        "tracing: span export timed out; spans are dropped (counted in tollgate_trace_spans_dropped_total)");
                }
            }
        }
    }
}

/// The sampled request whose span is current (task-local while the request is handled).
#[derive(Debug)]
pub struct Active {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub trace_state: TraceState,
    pipeline: Arc<Pipeline>,
}

impl Active {
    pub fn new(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        trace_state: TraceState,
        tracer: &Tracer,
    ) -> Option<Arc<Active>> {
        Some(Arc::new(Active {
            trace_id,
            span_id,
            trace_state,
            pipeline: tracer.pipeline.clone()?,
        }))
    }

    fn context(&self, span_id: [u8; 8], remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            remote,
            self.trace_state.clone(),
        )
    }

    /// Ends a span of this trace: builds its `SpanData` and queues it.
    #[allow(clippy::too_many_arguments)]
    pub fn end(
        &self,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        parent_is_remote: bool,
        kind: SpanKind,
        name: Cow<'static, str>,
        start: SystemTime,
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        self.pipeline.send(SpanData {
            span_context: self.context(span_id, false),
            parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: parent_is_remote,
            span_kind: kind,
            name,
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.pipeline.scope.clone(),
        });
    }
}

tokio::task_local! {
    static CURRENT: Arc<Active>;
}

/// Runs `f` with `active` current (for the synchronous `call`s of the layers below).
pub fn sync_scope<R>(active: Arc<Active>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(active, f)
}

/// `fut` with `active` current whenever it is polled.
pub fn scope<F: std::future::Future>(
    active: Arc<Active>,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Arc<Active>, F> {
    CURRENT.scope(active, fut)
}

/// A child span of the current request's server span; ended (and queued) when dropped.
/// Inert when the request is not sampled or nothing is exported.
#[must_use = "the span ends when dropped"]
pub struct Child(Option<Box<ChildSpan>>);

struct ChildSpan {
    active: Arc<Active>,
    span_id: [u8; 8],
    kind: SpanKind,
    name: &'static str,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

/// Opens a child span of the current request's span. `name` is a fixed operation name
/// (`jwks.fetch`, `introspection`, `upstream_token.fetch`, `login.token`,
/// `ratelimit.redis`, `upstream`).
pub fn child(name: &'static str, kind: SpanKind) -> Child {
    let Ok(active) = CURRENT.try_with(Arc::clone) else {
        return Child(None);
    };
    Child(Some(Box::new(ChildSpan {
        active,
        span_id: crate::trace_context::new_span_id(),
        kind,
        name,
        start: SystemTime::now(),
        attributes: Vec::with_capacity(6),
        status: Status::Unset,
    })))
}

impl Child {
    /// Whether this span is recorded (attributes that cost something to compute can be
    /// skipped otherwise).
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// Adds an attribute. Never a token, a secret or a cookie.
    pub fn attr(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        if let Some(s) = &mut self.0 {
            s.attributes.push(KeyValue::new(key, value));
        }
        self
    }

    /// The `traceparent` that names this span as the parent of the call it times, for
    /// that call's request: the server called (an identity provider's JWKS, token or
    /// introspection endpoint) continues the request's trace under it. `None` when not
    /// recorded.
    pub fn traceparent(&self) -> Option<http::HeaderValue> {
        self.0.as_ref().map(|s| {
            crate::trace_context::header(
                &s.active.trace_id,
                &s.span_id,
                crate::trace_context::SAMPLED,
            )
        })
    }

    /// Marks the operation failed, with a short description (no secrets).
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(s) = &mut self.0 {
            s.status = Status::error(description);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let s = *s;
            s.active.end(
                s.span_id,
                Some(s.active.span_id),
                false,
                s.kind,
                Cow::Borrowed(s.name),
                s.start,
                s.attributes,
                s.status,
            );
        }
    }
}
