//! What `hookq check-config` prints of a loaded config: the queue, batching,
//! retry, app manager and ingest settings, and every app with its endpoints.
//! Secrets and passwords are never printed; URLs go through [`redact_url`].

use super::{AppManagerSettings, Config, QueueDriverKind};
use crate::endpoint::redact_url;
use std::fmt;

impl fmt::Display for Config {
    /// The summary `hookq check-config` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.webhooks.batching;
        writeln!(f, "queue: {}", self.queue.driver.as_str())?;
        match self.queue.driver {
            QueueDriverKind::Memory => {}
            QueueDriverKind::Redis => writeln!(
                f,
                "  redis prefix {:?}, lease {} ms",
                self.queue.redis.prefix,
                self.queue.redis.lease.as_millis()
            )?,
            QueueDriverKind::Sqs => writeln!(
                f,
                "  sqs {} in {}, visibility {} s",
                self.queue
                    .sqs
                    .queue_url
                    .as_deref()
                    .unwrap_or(&self.queue.sqs.queue_name),
                self.queue.sqs.region,
                self.queue.sqs.visibility_timeout.as_secs()
            )?,
        }
        if b.enabled {
            writeln!(
                f,
                "batching: on, window {} ms, up to {} events / {} bytes",
                b.duration.as_millis(),
                b.size,
                b.max_bytes
            )?;
        } else {
            writeln!(f, "batching: off (one event per request)")?;
        }
        let r = &self.webhooks.retry;
        writeln!(
            f,
            "retry: {}, backoff {}..{} ms, budget {} ms, attempts {}",
            if r.enabled { "on" } else { "off" },
            r.initial_backoff.as_millis(),
            r.max_backoff.as_millis(),
            r.max_elapsed.as_millis(),
            r.max_attempts
                .map_or("unlimited".to_string(), |n| n.to_string())
        )?;
        let cb = &self.webhooks.circuit_breaker;
        if cb.enabled {
            writeln!(
                f,
                "circuit breaker: on, opens at {} % of at least {} requests in {} ms, for {} ms",
                cb.failure_ratio * 100.0,
                cb.min_requests,
                cb.window.as_millis(),
                cb.open.as_millis()
            )?;
        } else {
            writeln!(f, "circuit breaker: off")?;
        }
        if let Some(after) = self.webhooks.disable_after {
            writeln!(
                f,
                "endpoints disabled after {} ms of failures{}",
                after.as_millis(),
                self.webhooks
                    .notify
                    .as_ref()
                    .map_or(String::new(), |n| format!(
                        ", notifying {}",
                        crate::endpoint::redact_url(&n.url)
                    ))
            )?;
        }
        match &self.app_manager {
            AppManagerSettings::Memory => {}
            AppManagerSettings::Postgres(s) | AppManagerSettings::Mysql(s) => writeln!(
                f,
                "app manager: {}, table {:?} in {}@{}:{}/{}, cache {} s",
                self.app_manager.driver(),
                s.table_name,
                s.username,
                s.host,
                s.port,
                s.database,
                s.cache_ttl.as_secs()
            )?,
            AppManagerSettings::DynamoDb(s) => writeln!(
                f,
                "app manager: dynamodb, table {:?} in {}{}, cache {} s",
                s.table_name,
                s.region,
                s.endpoint_url
                    .as_deref()
                    .map(|u| format!(" at {}", redact_url(u)))
                    .unwrap_or_default(),
                s.cache_ttl.as_secs()
            )?,
        }
        if self.ingest.enabled {
            writeln!(f, "ingest: on in the worker, {}", self.ingest.addr)?;
        }
        writeln!(f, "apps: {}", self.apps.len())?;
        for app in &self.apps {
            let state = if app.enabled { "" } else { " (disabled)" };
            writeln!(
                f,
                "  {} (key {}){state}: {} endpoint(s)",
                app.id,
                app.key,
                app.endpoints.len()
            )?;
            for e in &app.endpoints {
                writeln!(f, "    [{}] {}", e.id, e.target.describe())?;
                let names: Vec<_> = e.event_names().iter().map(|n| n.as_str()).collect();
                writeln!(f, "      events: {}", names.join(", "))?;
                let ft = &e.filter;
                if !ft.is_empty() {
                    let mut parts = Vec::new();
                    if let Some(t) = ft.channel_type {
                        parts.push(format!("type {}", t.name()));
                    }
                    if let Some(p) = &ft.channel_prefix {
                        parts.push(format!("prefix {p:?}"));
                    }
                    if let Some(s) = &ft.channel_suffix {
                        parts.push(format!("suffix {s:?}"));
                    }
                    if let Some(p) = &ft.channel_pattern {
                        parts.push(format!("pattern {:?}", p.as_str()));
                    }
                    if let Some(ns) = &ft.channel_namespace {
                        parts.push(format!("namespace {ns:?}"));
                    }
                    if let Some(list) = &ft.channel_namespaces {
                        parts.push(format!("namespaces {list:?}"));
                    }
                    writeln!(f, "      filter: {}", parts.join(", "))?;
                }
                if !e.headers.is_empty() {
                    let names: Vec<_> = e.headers.iter().map(|(k, _)| k.as_str()).collect();
                    writeln!(f, "      headers: {}", names.join(", "))?;
                }
            }
        }
        Ok(())
    }
}
