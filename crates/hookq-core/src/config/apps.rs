//! One app of `app_manager.array.apps` (or of a database record) and its
//! `webhooks`: targets, event types, filters, headers, per-endpoint retry,
//! timeouts and signing secrets.

use super::reader::{self, Obj};
use super::webhooks::read_retry;
use super::{Config, Diagnostics, Problem, WebhookSettings, WorkerSettings, ingest, ms};
use crate::channel::ChannelTypeFilter;
use crate::endpoint::{
    Endpoint, EndpointTarget, Filter, InvocationType, LambdaTarget, RateLimit, redact_url,
};
use crate::event::EventName;
use crate::sign::SigningSecret;
use serde_json::Value;
use std::fmt;

/// An app and its endpoints.
#[derive(Clone)]
pub struct App {
    /// `id`.
    pub id: String,
    /// `key`, sent as `X-Pusher-Key`.
    pub key: String,
    /// `secret`, signing `X-Pusher-Signature`. Never logged.
    pub secret: String,
    /// `enabled`; a disabled app's jobs are dead-lettered.
    pub enabled: bool,
    /// `webhooks`, compiled.
    pub endpoints: Vec<Endpoint>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl App {
    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

/// App settings of Sockudo that concern the WebSocket server, not webhooks.
const SOCKUDO_APP_KEYS: &[&str] = &[
    "max_connections",
    "enable_client_messages",
    "max_backend_events_per_second",
    "max_client_events_per_second",
    "max_read_requests_per_second",
    "max_presence_members_per_channel",
    "max_presence_member_size_in_kb",
    "max_channel_name_length",
    "max_event_channels_at_once",
    "max_event_name_length",
    "max_event_payload_in_kb",
    "max_event_batch_size",
    "enable_user_authentication",
    "enable_watchlist_events",
    "allowed_origins",
    "channel_delta_compression",
];

/// Compiles one app from a database record (Sockudo's applications table:
/// `id`, `key`, `secret`, `enabled` and the `webhooks` JSON), with the same
/// rules as an app of `app_manager.array.apps`. Problems come back with
/// paths such as `webhooks[1].event_types`; unknown keys are allowed, except
/// inside a `filter` (an error there too, as in the file).
pub fn app_from_record(
    id: &str,
    key: &str,
    secret: &str,
    enabled: bool,
    webhooks: &Value,
    config: &Config,
) -> Result<App, Vec<Problem>> {
    let mut d = Diagnostics::default();
    for (field, v) in [("id", id), ("key", key), ("secret", secret)] {
        if v.trim().is_empty() {
            d.error(field, "must not be empty");
        }
    }
    let items: &[Value] = match webhooks {
        Value::Null => &[],
        Value::Array(items) => items,
        other => {
            d.error(
                "webhooks",
                format!(
                    "expected an array of webhooks, found {}",
                    reader::type_name(other)
                ),
            );
            &[]
        }
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (index, value) in items.iter().enumerate() {
        let mut w = Obj::new(format!("webhooks[{index}]"), Some(value), &mut d);
        if let Some(e) = read_endpoint(&mut w, index, &config.webhooks, &config.worker, &mut d) {
            if endpoints.iter().any(|other| other.id == e.id) {
                d.error(
                    &w.at("id"),
                    format!("duplicate endpoint id {:?} in this app", e.id),
                );
            }
            endpoints.push(e);
        }
    }
    ingest::check_loops(
        &endpoints,
        &config.ingest,
        |j| format!("webhooks[{j}]"),
        &mut d,
    );
    if !d.errors.is_empty() {
        return Err(d.errors);
    }
    Ok(App {
        id: id.to_string(),
        key: key.to_string(),
        secret: secret.to_string(),
        enabled,
        endpoints,
    })
}

pub(super) fn read_app(
    a: &mut Obj,
    webhooks: &WebhookSettings,
    worker: &WorkerSettings,
    d: &mut Diagnostics,
) -> Option<App> {
    let id = a.nonempty_str("id", d);
    let key = a.nonempty_str("key", d);
    let secret = a.nonempty_str("secret", d);
    for (field, v) in [("id", &id), ("key", &key), ("secret", &secret)] {
        if v.is_none() && a.present() && a.get(field).is_none() {
            d.error(&a.at(field), "missing");
        }
    }
    a.ignore(SOCKUDO_APP_KEYS);
    let enabled = a.bool("enabled", true, d);
    let app_secrets = read_signing_secrets(a, d);
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (index, (path, value)) in a.array("webhooks", d).into_iter().enumerate() {
        let mut w = Obj::new(path, Some(value), d);
        if let Some(mut e) = read_endpoint(&mut w, index, webhooks, worker, d) {
            if e.signing_secrets.is_empty() {
                e.signing_secrets = app_secrets.clone();
            }
            if endpoints.iter().any(|other| other.id == e.id) {
                d.error(
                    &w.at("id"),
                    format!("duplicate endpoint id {:?} in this app", e.id),
                );
            }
            endpoints.push(e);
        }
        w.finish(d);
    }
    Some(App {
        id: id?,
        key: key?,
        secret: secret?,
        enabled,
        endpoints,
    })
}

pub(super) fn read_signing_secrets(o: &mut Obj, d: &mut Diagnostics) -> Vec<SigningSecret> {
    let path = o.at("signing_secret");
    o.strings("signing_secret", d)
        .iter()
        .filter_map(|s| {
            SigningSecret::parse(s)
                .map_err(|e| d.error(&path, format!("Standard Webhooks secret {e}")))
                .ok()
        })
        .collect()
}

pub(super) fn read_endpoint(
    w: &mut Obj,
    index: usize,
    webhooks: &WebhookSettings,
    worker: &WorkerSettings,
    d: &mut Diagnostics,
) -> Option<Endpoint> {
    if !w.present() {
        return None;
    }
    let url = w.str("url", d);
    let lambda_function = w.nonempty_str("lambda_function", d);
    let mut l = w.obj("lambda", d);
    let lambda = if l.present() {
        let function_name = l.nonempty_str("function_name", d);
        if function_name.is_none() && l.get("function_name").is_none() {
            d.error(&l.at("function_name"), "missing");
        }
        let invocation_type = match l.str("invocation_type", d).as_deref() {
            None | Some("Event") => InvocationType::Event,
            Some("RequestResponse") => InvocationType::RequestResponse,
            Some(other) => {
                d.error(
                    &l.at("invocation_type"),
                    format!("{other:?} is not \"Event\" or \"RequestResponse\""),
                );
                InvocationType::Event
            }
        };
        let target = LambdaTarget {
            function_name: function_name.unwrap_or_default(),
            invocation_type,
            qualifier: l.nonempty_str("qualifier", d),
            region: l.nonempty_str("region", d),
            endpoint_url: l.nonempty_str("endpoint_url", d),
        };
        if let Some(u) = &target.endpoint_url {
            check_http_url(u, &l.at("endpoint_url"), d);
        }
        Some(target)
    } else {
        None
    };
    l.finish(d);
    let targets = [url.is_some(), lambda_function.is_some(), lambda.is_some()];
    let target = match (url, lambda_function, lambda) {
        (Some(u), None, None) => check_http_url(&u, &w.at("url"), d).map(EndpointTarget::Http),
        (None, Some(f), None) => Some(EndpointTarget::Lambda(LambdaTarget {
            function_name: f,
            invocation_type: InvocationType::Event,
            qualifier: None,
            region: None,
            endpoint_url: None,
        })),
        (None, None, Some(l)) => Some(EndpointTarget::Lambda(l)),
        _ => {
            let n = targets.iter().filter(|t| **t).count();
            d.error(
                &w.path,
                format!("needs exactly one of url, lambda, lambda_function (found {n})"),
            );
            None
        }
    };

    let mut event_types = 0u8;
    let types_path = w.at("event_types");
    match w.get("event_types") {
        None => d.error(&types_path, "missing; list the events this webhook wants"),
        Some(Value::Array(items)) if items.is_empty() => {
            d.error(&types_path, "is empty; list the events this webhook wants")
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(str::parse::<EventName>) {
                    Some(Ok(n)) => event_types |= n.bit(),
                    _ => d.error(
                        &format!("{types_path}[{i}]"),
                        format!(
                            "unknown event type {item}; known: {}",
                            EventName::ALL.map(EventName::as_str).join(", ")
                        ),
                    ),
                }
            }
        }
        Some(_) => d.error(&types_path, "expected an array of event names"),
    }

    let mut f = w.obj("filter", d);
    let filter = Filter {
        channel_type: f.str("channel_type", d).and_then(|t| {
            let parsed = ChannelTypeFilter::parse(&t);
            if parsed.is_none() {
                d.error(
                    &f.at("channel_type"),
                    format!(
                        "unknown channel type {t:?}; known: {}",
                        ChannelTypeFilter::NAMES.join(", ")
                    ),
                );
            }
            parsed
        }),
        channel_prefix: f.str("channel_prefix", d),
        channel_suffix: f.str("channel_suffix", d),
        channel_pattern: f.str("channel_pattern", d).and_then(|p| {
            regex::Regex::new(&p)
                .map_err(|e| d.error(&f.at("channel_pattern"), format!("invalid regex: {e}")))
                .ok()
        }),
        channel_namespace: f.nonempty_str("channel_namespace", d),
        channel_namespaces: f.string_array("channel_namespaces", d),
    };
    // A namespace never holds `:` and is never empty, so such a value could match no channel.
    let namespaces_path = f.at("channel_namespaces");
    if let Some(ns) = &filter.channel_namespace
        && ns.contains(':')
    {
        d.error(
            &f.at("channel_namespace"),
            format!("{ns:?} cannot be a namespace: a namespace ends at the first ':'"),
        );
    }
    match &filter.channel_namespaces {
        Some(list) if list.is_empty() => d.error(
            &namespaces_path,
            "is empty; it would match no channel (leave it out to match every namespace)",
        ),
        Some(list) => {
            for (i, ns) in list.iter().enumerate() {
                if ns.trim().is_empty() || ns.contains(':') {
                    d.error(
                        &format!("{namespaces_path}[{i}]"),
                        format!("{ns:?} cannot be a namespace: it must be non-empty, without ':'"),
                    );
                }
            }
        }
        None => {}
    }
    // An ignored condition would send this endpoint events it did not ask for.
    f.finish_strict(
        "a filter condition hookq does not know would be ignored and let other channels through",
        d,
    );

    let headers_path = w.at("headers");
    let mut headers = Vec::new();
    for (name, value) in w.string_map("headers", d) {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            d.error(
                &reader::join(&headers_path, &name),
                "is not a valid header name",
            );
        } else if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            d.error(
                &reader::join(&headers_path, &name),
                "header values cannot hold line breaks",
            );
        } else {
            headers.push((name, value));
        }
    }

    let mut r = w.obj("retry", d);
    let retry = read_retry(&mut r, &webhooks.retry, d);
    r.finish(d);
    let request_timeout = w
        .opt_u64("request_timeout_ms", 1, d)
        .map_or(webhooks.request_timeout, ms);
    let max_concurrency =
        w.u64("max_concurrency", worker.endpoint_concurrency as u64, 1, d) as usize;
    let circuit_breaker = super::webhooks::read_breaker(
        &mut w.obj("circuit_breaker", d),
        &webhooks.circuit_breaker,
        d,
    );
    let disable_after = super::webhooks::read_disable_after(w, webhooks.disable_after, d);
    let signing_secrets = read_signing_secrets(w, d);
    let rate_limit = read_rate_limit(w, d);
    let adaptive_concurrency = w.bool("adaptive_concurrency", webhooks.adaptive_concurrency, d);
    let explicit_id = w.nonempty_str("id", d);
    let target = target?;
    Some(Endpoint {
        id: explicit_id.unwrap_or_else(|| Endpoint::derived_id(index, &target)),
        target,
        event_types,
        filter,
        headers,
        retry,
        request_timeout,
        signing_secrets,
        max_concurrency,
        rate_limit,
        adaptive_concurrency,
        circuit_breaker,
        disable_after,
    })
}

/// A webhook's `rate_limit` (`{"per_second": 20, "burst": 5}`): none when
/// absent; `per_second` is required and must be a positive number.
fn read_rate_limit(w: &mut Obj, d: &mut Diagnostics) -> Option<RateLimit> {
    let mut r = w.obj("rate_limit", d);
    if !r.present() {
        return None;
    }
    let path = r.at("per_second");
    let per_second = match r.get("per_second") {
        None => {
            d.error(&path, "missing: the requests per second the endpoint takes");
            None
        }
        Some(v) => match v.as_f64() {
            Some(n) if n > 0.0 && n.is_finite() => Some(n),
            Some(n) => {
                d.error(&path, format!("must be more than 0, found {n}"));
                None
            }
            None => {
                d.error(
                    &path,
                    format!("expected a number, found {}", reader::type_name(v)),
                );
                None
            }
        },
    };
    let burst = r.u64("burst", 1, 1, d).min(u32::MAX as u64) as u32;
    r.finish(d);
    Some(RateLimit {
        per_second: per_second?,
        burst,
    })
}

pub(super) fn check_http_url(u: &str, path: &str, d: &mut Diagnostics) -> Option<url::Url> {
    match url::Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) => {
            let shown = redact_url(u);
            d.error(path, format!("{shown:?} is not an absolute http(s) URL"));
            None
        }
        Err(e) => {
            let shown = redact_url(u);
            d.error(
                path,
                format!("{shown:?} is not an absolute http(s) URL ({e})"),
            );
            None
        }
    }
}
