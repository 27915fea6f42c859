//! The `HOOKQ_*` environment variables, each setting one key of config.json
//! before it is read.

use serde_json::Value;

/// Environment variables that override config keys: (variable, JSON path, is a string).
pub const ENV_OVERRIDES: &[(&str, &str, bool)] = &[
    ("HOOKQ_QUEUE_DRIVER", "queue.driver", true),
    ("HOOKQ_REDIS_URL", "queue.redis.url", true),
    ("HOOKQ_REDIS_PREFIX", "queue.redis.prefix", true),
    ("HOOKQ_SQS_QUEUE_URL", "queue.sqs.queue_url", true),
    ("HOOKQ_SQS_QUEUE_NAME", "queue.sqs.queue_name", true),
    ("HOOKQ_SQS_REGION", "queue.sqs.region", true),
    ("HOOKQ_SQS_ENDPOINT_URL", "queue.sqs.endpoint_url", true),
    ("HOOKQ_BATCHING_ENABLED", "webhooks.batching.enabled", false),
    (
        "HOOKQ_BATCHING_DURATION",
        "webhooks.batching.duration",
        false,
    ),
    ("HOOKQ_ADMIN_ADDR", "worker.admin_addr", true),
    ("HOOKQ_INGEST_ADDR", "ingest.addr", true),
    ("HOOKQ_INGEST_ENABLED", "ingest.enabled", false),
    ("HOOKQ_ADMIN_TOKEN", "worker.admin_token", true),
];

/// Sets the keys named by [`ENV_OVERRIDES`] from `env`; returns the variables applied.
pub fn apply_env(root: &mut Value, env: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
    let mut applied = Vec::new();
    for &(var, path, is_string) in ENV_OVERRIDES {
        let Some(raw) = env(var) else { continue };
        let value = if is_string {
            Value::String(raw)
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::String(raw))
        };
        let mut node = &mut *root;
        for part in path.split('.') {
            if !node.is_object() {
                *node = Value::Object(Default::default());
            }
            let Value::Object(map) = node else { break };
            node = map.entry(part).or_insert(Value::Null);
        }
        *node = value;
        applied.push(var);
    }
    applied
}
