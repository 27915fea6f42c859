use super::*;
use crate::endpoint::{EndpointTarget, InvocationType};
use crate::event::Event;
use crate::retry::RetryPolicy;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/config")
}

fn load(text: &str) -> Result<(Config, Diagnostics), ConfigError> {
    Config::parse(text, |_| None)
}

#[test]
fn reference_examples_load_as_printed() {
    let text = std::fs::read_to_string(fixtures().join("reference-batching.json")).unwrap();
    let (c, d) = load(&text).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert!(c.webhooks.batching.enabled);
    assert_eq!(c.webhooks.batching.duration, Duration::from_millis(100));

    let text = std::fs::read_to_string(fixtures().join("reference-apps.json")).unwrap();
    let (c, d) = load(&text).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(c.webhooks.batching.duration, Duration::from_millis(75));
    let app = c.app("my-app-with-webhooks").unwrap();
    assert_eq!(
        (app.key.as_str(), app.secret.as_str()),
        ("app-key-wh", "app-secret-wh")
    );
    let [http, lambda] = &app.endpoints[..] else {
        panic!("two endpoints expected")
    };
    assert_eq!(
        http.target,
        EndpointTarget::Http("https://api.example.com/sockudo/events".parse().unwrap())
    );
    assert_eq!(
        http.headers,
        [("X-Custom-Auth".to_string(), "mysecrettoken".to_string())]
    );
    assert!(http.wants(&Event::channel_occupied("room")));
    assert!(!http.wants(&Event::member_added("presence-room", "u")));
    let EndpointTarget::Lambda(l) = &lambda.target else {
        panic!("lambda expected")
    };
    assert_eq!(l.function_name, "sockudoPresenceHandler");
    assert_eq!(l.region.as_deref(), Some("us-east-1"));
    assert_eq!(l.invocation_type, InvocationType::Event);
    assert!(lambda.wants(&Event::member_added("presence-room", "u")));
    assert!(!lambda.wants(&Event::member_added("private-room", "u")));
}

#[test]
fn defaults_match_the_reference() {
    let (c, _) = load("{}").unwrap();
    let b = c.webhooks.batching;
    assert!(b.enabled);
    assert_eq!(b.duration, Duration::from_millis(50));
    assert_eq!(b.size, 100);
    assert_eq!(c.webhooks.request_timeout, Duration::from_secs(10));
    assert_eq!(c.webhooks.retry, RetryPolicy::default());
    assert_eq!(c.queue.driver, QueueDriverKind::Memory);
    assert!(c.queue.redis.lease > c.webhooks.request_timeout + b.duration);
    assert!(!c.webhooks.event_ids);
}

#[test]
fn broken_fixtures_name_every_problem() {
    let dir = fixtures().join("bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("// expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no expectations",
            path.display()
        );
        let err = load(&text)
            .expect_err(&path.display().to_string())
            .to_string();
        for want in expected {
            assert!(
                err.contains(want),
                "{}: want {want:?} in:\n{err}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 6,
        "only {checked} fixtures found in {}",
        dir.display()
    );
}

#[test]
fn unknown_keys_warn_but_load() {
    let (_, d) = load(
        r#"{"webhooks": {"batching": {"duraton": 5}, "enabled": false}, "queue": {"drvier": "redis"},
            "port": 6001, "colour": 1}"#,
    )
    .unwrap();
    let mut paths: Vec<_> = d.warnings.iter().map(|w| w.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "colour",
            "queue.drvier",
            "webhooks.batching.duraton",
            "webhooks.enabled"
        ]
    );
}

#[test]
fn environment_overrides_common_keys() {
    let env = |k: &str| match k {
        "HOOKQ_QUEUE_DRIVER" => Some("redis".to_string()),
        "HOOKQ_REDIS_URL" => Some("redis://10.0.0.1:6380/2".to_string()),
        "HOOKQ_BATCHING_ENABLED" => Some("false".to_string()),
        "HOOKQ_BATCHING_DURATION" => Some("250".to_string()),
        "HOOKQ_ADMIN_ADDR" => Some("127.0.0.1:9999".to_string()),
        _ => None,
    };
    let (c, _) = Config::parse(r#"{"queue": {"driver": "memory"}}"#, env).unwrap();
    assert_eq!(c.queue.driver, QueueDriverKind::Redis);
    assert_eq!(c.queue.redis.url, "redis://10.0.0.1:6380/2");
    assert!(!c.webhooks.batching.enabled);
    assert_eq!(c.webhooks.batching.duration, Duration::from_millis(250));
    assert_eq!(c.worker.admin_addr, "127.0.0.1:9999");

    let bad = |k: &str| (k == "HOOKQ_BATCHING_DURATION").then(|| "soon".to_string());
    let err = Config::parse("{}", bad).unwrap_err().to_string();
    assert!(err.contains("webhooks.batching.duration: expected a whole number, found a string (set by HOOKQ_BATCHING_DURATION)"), "{err}");
}

/// Issue 17: `worker.admin_token`, from the file or `HOOKQ_ADMIN_TOKEN`
/// (which wins); a short one is refused at its path without being echoed,
/// and `Debug` hides it.
#[test]
fn the_admin_token_comes_from_the_file_or_the_environment() {
    let file = r#"{"worker": {"admin_token": "file-token-0123456789"}}"#;
    let (c, _) = load(file).unwrap();
    let token = c.worker.admin_token.clone().unwrap();
    assert_eq!(token.expose(), "file-token-0123456789");
    assert!(!format!("{:?}", c.worker).contains("file-token"));
    let env = |k: &str| (k == "HOOKQ_ADMIN_TOKEN").then(|| "env-token-0123456789".to_string());
    let (c, _) = Config::parse(file, env).unwrap();
    assert_eq!(
        c.worker.admin_token.unwrap().expose(),
        "env-token-0123456789"
    );
    assert!(load("{}").unwrap().0.worker.admin_token.is_none());

    for bad in [r#""short-token""#, r#""has a space in it, 16+""#, "42"] {
        let text = format!(r#"{{"worker": {{"admin_token": {bad}}}}}"#);
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("worker.admin_token"), "{bad}: {err}");
        assert!(!err.contains("short-token"), "{err}");
    }
}

#[test]
fn sockudo_redis_settings_build_the_url() {
    let (c, _) = load(
        r#"{"database": {"redis": {"host": "redis.internal", "port": 6380, "password": "pw", "db": 3}},
            "queue": {"driver": "redis", "redis": {"prefix": "sockudo", "concurrency": 5}}}"#,
    )
    .unwrap();
    assert_eq!(c.queue.redis.url, "redis://:pw@redis.internal:6380/3");
    assert_eq!(c.queue.redis.prefix, "sockudo");
    let (c, _) = load(r#"{"database": {"redis": {"host": "h", "password": "p@ss:/w"}}}"#).unwrap();
    assert_eq!(c.queue.redis.url, "redis://:p%40ss%3A%2Fw@h:6379/0");
    let (c, _) = load(r#"{"queue": {"redis": {"url_override": "redis://h:1/0"}}}"#).unwrap();
    assert_eq!(c.queue.redis.url, "redis://h:1/0");
}

#[test]
fn endpoints_get_stable_ids_and_overrides() {
    let text = r#"{
      "webhooks": {"retry": {"max_attempts": 4}},
      "app_manager": {"array": {"apps": [{
        "id": "a", "key": "k", "secret": "s",
        "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "webhooks": [
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"]},
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"], "id": "mine",
           "retry": {"enabled": false}, "request_timeout_ms": 1500, "max_concurrency": 2,
           "filter": {"channel_type": "cache", "channel_suffix": "-x"}}
        ]}]}}
    }"#;
    let (c, _) = load(text).unwrap();
    let app = c.app("a").unwrap();
    let (a, b) = (&app.endpoints[0], &app.endpoints[1]);
    assert_ne!(a.id, b.id);
    assert_eq!(b.id, "mine");
    assert_eq!(a.retry.max_attempts, Some(4));
    assert!(!b.retry.enabled && b.retry.max_attempts == Some(4));
    assert_eq!(b.request_timeout, Duration::from_millis(1500));
    assert_eq!(b.max_concurrency, 2);
    assert_eq!(a.signing_secrets.len(), 1, "app secret inherited");
    assert!(b.wants(&Event::cache_miss("private-cache-room-x")));
    assert!(!b.wants(&Event::cache_miss("private-room-x")));
    let (again, _) = load(text).unwrap();
    assert_eq!(again.app("a").unwrap().endpoints[0].id, a.id);
}

#[test]
fn summary_lists_apps_endpoints_and_settings() {
    let text = std::fs::read_to_string(fixtures().join("reference-apps.json")).unwrap();
    let (c, _) = load(&text).unwrap();
    let s = c.to_string();
    for want in [
        "queue: memory",
        "batching: on, window 75 ms",
        "my-app-with-webhooks (key app-key-wh): 2 endpoint(s)",
        "https://api.example.com/sockudo/events",
        "events: channel_occupied, channel_vacated",
        "lambda:sockudoPresenceHandler",
        "filter: prefix \"presence-\"",
        "headers: X-Custom-Auth",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
    assert!(
        !s.contains("app-secret-wh"),
        "the summary must not show secrets"
    );
}

#[test]
fn database_app_managers_read_sockudos_settings() {
    let (c, _) = load("{}").unwrap();
    assert_eq!(c.app_manager, AppManagerSettings::Memory);

    for driver in ["pgsql", "postgres"] {
        let text = format!(
            r#"{{"app_manager": {{"driver": "{driver}"}},
                "database": {{"postgres": {{"host": "db", "username": "u", "password": "p",
                  "database": "d", "connection_pool_size": 3, "cache_ttl": 7,
                  "cache_cleanup_interval": 60, "cache_max_capacity": 100}}}}}}"#
        );
        let (c, d) = load(&text).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let AppManagerSettings::Postgres(s) = &c.app_manager else {
            panic!("{driver}: {:?}", c.app_manager)
        };
        assert_eq!(c.app_manager.driver(), "postgres");
        assert_eq!(
            (s.host.as_str(), s.port, s.username.as_str()),
            ("db", 5432, "u")
        );
        assert_eq!(
            (s.database.as_str(), s.table_name.as_str()),
            ("d", "applications")
        );
        assert_eq!(s.password.as_deref(), Some("p"));
        assert_eq!(s.connection_pool_size, 3);
        assert_eq!(s.cache_ttl, Duration::from_secs(7));
        assert!(!format!("{s:?}").contains("\"p\""), "password in Debug");
    }

    // `user` is accepted for `username`; app_manager.cache.ttl is the fallback TTL.
    let (c, _) = load(
        r#"{"app_manager": {"driver": "mysql", "cache": {"enabled": true, "ttl": 42}},
            "database": {"mysql": {"user": "hook", "table_name": "apps"}}}"#,
    )
    .unwrap();
    let AppManagerSettings::Mysql(s) = &c.app_manager else {
        panic!("{:?}", c.app_manager)
    };
    assert_eq!(
        (s.port, s.username.as_str(), s.table_name.as_str()),
        (3306, "hook", "apps")
    );
    assert_eq!(s.cache_ttl, Duration::from_secs(42));
    assert_eq!(s.password, None);

    let (c, _) = load(
        r#"{"app_manager": {"driver": "dynamodb", "cache": {"enabled": false}},
            "database": {"dynamodb": {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:4566"}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.app_manager,
        AppManagerSettings::DynamoDb(DynamoDbAppsSettings {
            table_name: "sockudo-applications".into(),
            region: "eu-west-1".into(),
            endpoint_url: Some("http://127.0.0.1:4566".into()),
            webhooks_attribute: "webhooks".into(),
            cache_ttl: Duration::ZERO,
        })
    );
}

#[test]
fn database_settings_problems_have_paths() {
    let err = load(
        r#"{"app_manager": {"driver": "postgres", "cache": {"ttl": "x"}},
            "database": {"postgres": {"port": 70000, "table_name": "apps; drop table x",
              "username": "a", "user": "b", "webhooks_column": "w; x"},
              "dynamodb": {"endpoint_url": "localhost:8000"}}}"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "app_manager.cache.ttl: expected a whole number",
        "database.postgres.port: 70000 is not a port",
        "database.postgres.table_name: \"apps; drop table x\" is not a plain table name",
        "database.postgres.user: \"b\" differs from username \"a\"",
        "database.postgres.webhooks_column: \"w; x\" is not a plain column name",
        "database.dynamodb.endpoint_url:",
    ] {
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}

#[test]
fn a_database_record_compiles_with_the_config_files_rules() {
    let (c, _) = load("{}").unwrap();
    let webhooks = serde_json::json!([
        {"url": "https://example.com/hook", "event_types": ["channel_occupied"],
         "filter": {"channel_prefix": "private-"}},
        {"lambda_function": "f", "event_types": ["member_added"]}
    ]);
    let app = app_from_record("a", "k", "s", false, &webhooks, &c).unwrap();
    assert!(!app.enabled);
    assert_eq!(app.endpoints.len(), 2);
    assert!(app.endpoints[0].wants(&Event::channel_occupied("private-x")));
    assert!(!app.endpoints[0].wants(&Event::channel_occupied("public")));

    let none = app_from_record("a", "k", "s", true, &Value::Null, &c).unwrap();
    assert!(none.endpoints.is_empty());

    let bad = serde_json::json!([
        {"url": "https://example.com/hook", "event_types": ["channel_occupied"]},
        {"url": "https://example.com/hook2", "event_types": ["nope"]},
        {"url": "ftp://x", "event_types": ["channel_vacated"], "filter": {"channel_pattern": "("}}
    ]);
    let problems: Vec<String> = app_from_record("a", "k", "s", true, &bad, &c)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let text = problems.join("\n");
    assert!(
        text.contains("webhooks[1].event_types[0]: unknown event type"),
        "{text}"
    );
    assert!(text.contains("webhooks[2].url:"), "{text}");
    assert!(
        text.contains("webhooks[2].filter.channel_pattern: invalid regex"),
        "{text}"
    );

    let err =
        app_from_record("a", "k", "", true, &serde_json::json!({"url": "x"}), &c).unwrap_err();
    let text: Vec<String> = err.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with("secret: must not be empty")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.starts_with("webhooks: expected an array")),
        "{text:?}"
    );
}

/// One app with one webhook whose `filter` is `filter`.
fn with_filter(filter: &str) -> String {
    format!(
        r#"{{"app_manager": {{"array": {{"apps": [{{"id": "a", "key": "k", "secret": "s",
            "webhooks": [{{"url": "https://example.com/h", "event_types": ["channel_occupied"],
              "filter": {filter}}}]}}]}}}}}}"#
    )
}

fn error_text(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn an_unknown_filter_key_is_an_error_with_its_path() {
    let err = error_text(&with_filter(
        r#"{"channel_prefix": "private-", "foo": "x"}"#,
    ));
    assert!(
        err.contains("app_manager.array.apps[0].webhooks[0].filter.foo: unknown key;"),
        "{err}"
    );
    assert!(
        err.contains("channel_namespaces"),
        "the known keys are listed: {err}"
    );
    // A misspelt condition too: ignoring it would let every channel through.
    let err = error_text(&with_filter(r#"{"channel_prefx": "private-"}"#));
    assert!(
        err.contains("app_manager.array.apps[0].webhooks[0].filter.channel_prefx: unknown key"),
        "{err}"
    );
    // Unknown keys elsewhere in a webhook still only warn.
    let (_, d) = load(
        r#"{"app_manager": {"array": {"apps": [{"id": "a", "key": "k", "secret": "s",
            "webhooks": [{"url": "https://example.com/h", "event_types": ["channel_occupied"], "colour": 1}]}]}}}"#,
    )
    .unwrap();
    assert_eq!(
        d.warnings[0].path,
        "app_manager.array.apps[0].webhooks[0].colour"
    );
}

#[test]
fn an_unknown_filter_key_in_a_database_record_is_an_error() {
    let (c, _) = load("{}").unwrap();
    let webhooks = serde_json::json!([
        {"url": "https://example.com/h", "event_types": ["channel_occupied"]},
        {"url": "https://example.com/h", "event_types": ["channel_occupied"],
         "filter": {"channel_namespace": "chat", "channel_typ": "private"}}
    ]);
    let problems = app_from_record("a", "k", "s", true, &webhooks, &c).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, "webhooks[1].filter.channel_typ");
    assert!(
        problems[0].message.starts_with("unknown key;"),
        "{problems:?}"
    );
    // Other unknown keys of a record's webhook are still allowed.
    let webhooks = serde_json::json!([
        {"url": "https://example.com/h", "event_types": ["channel_occupied"], "colour": 1}
    ]);
    assert!(app_from_record("a", "k", "s", true, &webhooks, &c).is_ok());
}

#[test]
fn namespace_filters_are_read_and_matched() {
    let (c, d) = load(&with_filter(
        r#"{"channel_namespace": "chat", "channel_namespaces": ["chat", "orders"], "channel_prefix": "private-"}"#,
    ))
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let e = &c.app("a").unwrap().endpoints[0];
    assert_eq!(e.filter.channel_namespace.as_deref(), Some("chat"));
    assert_eq!(
        e.filter.channel_namespaces.as_deref(),
        Some(&["chat".to_string(), "orders".to_string()][..])
    );
    assert!(e.wants(&Event::channel_occupied("private-chat:room-1")));
    assert!(!e.wants(&Event::channel_occupied("chat:room-1")), "prefix");
    assert!(
        !e.wants(&Event::channel_occupied("private-orders:1")),
        "namespace"
    );
    assert!(
        !e.wants(&Event::channel_occupied("private-chat")),
        "no namespace"
    );
    let s = c.to_string();
    assert!(
        s.contains(r#"filter: prefix "private-", namespace "chat", namespaces ["chat", "orders"]"#),
        "{s}"
    );

    let err = error_text(&with_filter(
        r#"{"channel_namespace": "", "channel_namespaces": "chat"}"#,
    ));
    for want in [
        "webhooks[0].filter.channel_namespace: must not be empty",
        "webhooks[0].filter.channel_namespaces: expected an array of strings, found a string",
    ] {
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
    let err = error_text(&with_filter(
        r#"{"channel_namespace": "chat:x", "channel_namespaces": ["ok", "", "a:b"]}"#,
    ));
    for want in [
        "webhooks[0].filter.channel_namespace: \"chat:x\" cannot be a namespace",
        "webhooks[0].filter.channel_namespaces[1]: \"\" cannot be a namespace",
        "webhooks[0].filter.channel_namespaces[2]: \"a:b\" cannot be a namespace",
    ] {
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
    let err = error_text(&with_filter(r#"{"channel_namespaces": ["ok", 3]}"#));
    assert!(
        err.contains("webhooks[0].filter.channel_namespaces[1]: expected a string, found a number"),
        "{err}"
    );
    let err = error_text(&with_filter(r#"{"channel_namespaces": []}"#));
    assert!(
        err.contains("webhooks[0].filter.channel_namespaces: is empty; it would match no channel"),
        "{err}"
    );
}

/// Sockudo's `WebhookRetryPolicy` keys and `request_timeout_ms`, per webhook, over `webhooks.retry`.
#[test]
fn per_webhook_retry_uses_sockudos_keys_over_the_global_ones() {
    let (c, d) = load(
        r#"{"webhooks": {"request_timeout_ms": 2000,
              "retry": {"enabled": true, "max_attempts": 3, "max_elapsed_time_ms": 60000,
                        "initial_backoff_ms": 500, "max_backoff_ms": 8000}},
            "app_manager": {"array": {"apps": [{"id": "a", "key": "k", "secret": "s", "webhooks": [
              {"url": "https://example.com/1", "event_types": ["channel_occupied"]},
              {"url": "https://example.com/2", "event_types": ["channel_occupied"],
               "request_timeout_ms": 700,
               "retry": {"enabled": false, "max_attempts": 9, "max_elapsed_time_ms": 1000,
                         "initial_backoff_ms": 100, "max_backoff_ms": 200}}]}]}}}"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let app = c.app("a").unwrap();
    let (a, b) = (&app.endpoints[0], &app.endpoints[1]);
    assert_eq!(
        a.retry,
        RetryPolicy {
            enabled: true,
            max_attempts: Some(3),
            max_elapsed: Duration::from_millis(60_000),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_millis(8_000),
        }
    );
    assert_eq!(a.request_timeout, Duration::from_millis(2000));
    assert_eq!(
        b.retry,
        RetryPolicy {
            enabled: false,
            max_attempts: Some(9),
            max_elapsed: Duration::from_millis(1000),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
        }
    );
    assert_eq!(b.request_timeout, Duration::from_millis(700));
}

#[test]
fn batching_size_is_read() {
    let (c, _) = load(r#"{"webhooks": {"batching": {"size": 7}}}"#).unwrap();
    assert_eq!(c.webhooks.batching.size, 7);
}

/// Every `queue.driver` value of Sockudo: hookq's three are used, the others refused with a reason.
#[test]
fn sockudos_queue_drivers_are_used_or_refused_with_a_reason() {
    for (driver, kind) in [
        ("memory", QueueDriverKind::Memory),
        ("redis", QueueDriverKind::Redis),
        ("redis-cluster", QueueDriverKind::Redis),
        ("sqs", QueueDriverKind::Sqs),
    ] {
        let (c, _) = load(&format!(r#"{{"queue": {{"driver": "{driver}"}}}}"#)).unwrap();
        assert_eq!(c.queue.driver, kind);
    }
    for (driver, want) in [
        (
            "none",
            "Sockudo's \"none\" (no queue) leaves hookq nothing to read",
        ),
        (
            "kafka",
            "Sockudo's queue driver \"kafka\" is not one hookq has",
        ),
        (
            "nats",
            "Sockudo's queue driver \"nats\" is not one hookq has",
        ),
        ("pulsar", "is not one hookq has"),
        ("rabbitmq", "is not one hookq has"),
        ("google-pubsub", "is not one hookq has"),
        ("iggy", "is not one hookq has"),
        ("sns", "is not one hookq has"),
        ("rabbit", "unknown queue driver \"rabbit\""),
        ("Redis", "unknown queue driver \"Redis\""),
    ] {
        let err = error_text(&format!(r#"{{"queue": {{"driver": "{driver}"}}}}"#));
        assert!(err.contains("queue.driver: "), "{driver}: {err}");
        assert!(err.contains(want), "{driver}: want {want:?} in:\n{err}");
    }
}

/// Every key of Sockudo's `queue` section loads; the ones hookq cannot honour warn or, when
/// ignoring them would connect somewhere else, refuse.
#[test]
fn sockudos_queue_keys_are_accepted() {
    let text = r#"{
      "queue": {
        "driver": "redis",
        "reliability": {"max_attempts": 5, "lease_duration_ms": 30000},
        "redis": {"concurrency": 5, "prefix": "sockudo_queue:", "url_override": "redis://q:6379/2",
                  "cluster_mode": false, "response_timeout_ms": 5000},
        "redis_cluster": {"concurrency": 5, "prefix": "sockudo_queue:", "nodes": ["redis://127.0.0.1:7000"],
                          "request_timeout_ms": 5000},
        "nats": {}, "pulsar": {}, "rabbitmq": {}, "google_pubsub": {}, "kafka": {}, "iggy": {},
        "sqs": {"region": "eu-west-1", "queue_url_prefix": "https://sqs.eu-west-1.amazonaws.com/1", "visibility_timeout": 90,
                "endpoint_url": "http://127.0.0.1:4566", "max_messages": 10, "wait_time_seconds": 5,
                "concurrency": 5, "fifo": false, "message_group_id": "default"},
        "sns": {"region": "us-east-1", "topic_arn": "arn:aws:sns:us-east-1:1:t", "endpoint_url": null}
      }
    }"#;
    let (c, d) = load(text).unwrap();
    assert_eq!(c.queue.redis.url, "redis://q:6379/2");
    assert_eq!(c.queue.redis.prefix, "sockudo_queue:");
    assert_eq!(c.queue.redis.concurrency, 5);
    assert_eq!(c.queue.sqs.region, "eu-west-1");
    assert_eq!(c.queue.sqs.visibility_timeout, Duration::from_secs(90));
    assert_eq!(c.queue.sqs.wait_time_seconds, 5);
    assert_eq!(c.queue.sqs.concurrency, 5);
    assert_eq!(c.queue.sqs.message_group_id.as_deref(), Some("default"));
    let mut warned: Vec<_> = d.warnings.iter().map(|w| w.path.as_str()).collect();
    warned.sort();
    assert_eq!(
        warned,
        [
            "queue.redis.concurrency",
            "queue.redis.response_timeout_ms",
            "queue.reliability"
        ],
        "{:?}",
        d.warnings
    );
    assert!(
        d.warnings.iter().all(|w| w.message.contains("not used")),
        "{:?}",
        d.warnings
    );

    let (c, _) =
        load(r#"{"queue": {"driver": "redis", "redis": {"cluster_mode": true}}}"#).unwrap();
    assert_eq!(
        c.queue.redis.cluster.as_deref(),
        Some(&["redis://127.0.0.1:6379".to_string()][..])
    );
}

#[test]
fn database_redis_reads_sockudos_connection_keys() {
    // The host may carry the scheme, as in Sockudo.
    let (c, _) =
        load(r#"{"database": {"redis": {"host": "rediss://r.internal", "port": 6380}}}"#).unwrap();
    assert_eq!(c.queue.redis.url, "rediss://r.internal:6380/0");
    let (_, d) = load(
        r#"{"database": {"redis": {"host": "h", "sentinel_password": "x", "key_prefix": "sockudo:",
            "name": "mymaster", "cluster": {"nodes": []}, "cluster_nodes": []}},
            "database_pooling": {"enabled": true}}"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    // Sockudo's Sentinel keys: the primary is asked of the sentinels.
    let (c, d) = load(
        r#"{"queue": {"driver": "redis"},
        "database": {"redis": {"host": "h", "password": "pw", "db": 2, "name": "primary",
            "sentinel_password": "sp", "sentinels": [{"host": "s1", "port": 26380}, {"host": "s2"}]}}}"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let s = c.queue.redis.sentinel.as_ref().expect("sentinel settings");
    assert_eq!(
        s.sentinels,
        vec![("s1".to_string(), 26380), ("s2".to_string(), 26379)]
    );
    assert_eq!(s.master, "primary");
    assert_eq!(s.password.as_deref(), Some("sp"));
    // The URL still carries the master's password and database.
    assert_eq!(c.queue.redis.url, "redis://:pw@h:6379/2");
    assert!(!format!("{:?}", c.queue.redis).contains("sp\""));
    // Without a host, and without a name (Sockudo's default master name).
    let (c, _) =
        load(r#"{"database": {"redis": {"sentinels": [{"host": "s1", "port": 26379}]}}}"#).unwrap();
    assert_eq!(c.queue.redis.sentinel.unwrap().master, "mymaster");
    // hookq's own keys, which win over database.redis.
    let (c, d) = load(
        r#"{"queue": {"driver": "redis", "redis": {"url": "redis://:pw@x:1/3",
            "sentinels": [{"host": "q1", "port": 5000}], "sentinel_master": "m2"}},
        "database": {"redis": {"name": "primary", "sentinels": [{"host": "s1", "port": 26379}]}}}"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let s = c.queue.redis.sentinel.unwrap();
    assert_eq!(s.sentinels, vec![("q1".to_string(), 5000)]);
    assert_eq!(s.master, "m2");
    assert_eq!(c.queue.redis.url, "redis://:pw@x:1/3");
    // An explicit URL without queue.redis.sentinels connects to it directly, as before.
    let (c, _) = load(
        r#"{"queue": {"driver": "redis", "redis": {"url": "redis://m:6379"}},
        "database": {"redis": {"sentinels": [{"host": "s1", "port": 26379}]}}}"#,
    )
    .unwrap();
    assert!(c.queue.redis.sentinel.is_none());
    // A sentinel without a host, and a port out of range, are errors.
    let bad = r#"{"queue": {"redis": {"sentinels": [{"port": 1}, {"host": "a", "port": 70000}]}}}"#;
    let err = error_text(bad);
    assert!(err.contains("queue.redis.sentinels[0].host"), "{err}");
    assert!(err.contains("queue.redis.sentinels[1].port"), "{err}");
    // The master name alone does nothing: said.
    let (_, d) = load(r#"{"queue": {"redis": {"sentinel_master": "m"}}}"#).unwrap();
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    // Sockudo's pool bounds of a SQL app manager are accepted.
    let (_, d) = load(r#"{"database": {"postgres": {"pool_min": 1, "pool_max": 5}}}"#).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn the_summary_hides_secrets_in_urls_and_passwords() {
    let text = r#"{
      "app_manager": {"driver": "pgsql", "array": {"apps": [{"id": "a", "key": "k", "secret": "app-s3cret",
        "webhooks": [
          {"url": "https://hook-user:hook-pass@api.example.com/hook?token=tok3n&v=2", "event_types": ["channel_occupied"]},
          {"url": "https://api.example.com/other?key=k3y", "event_types": ["channel_occupied"]}
        ]}]}},
      "database": {"postgres": {"username": "pg", "password": "pg-pa55"},
                   "dynamodb": {"endpoint_url": "http://dyn:dyn-pa55@127.0.0.1:8000/?x=y"},
                   "redis": {"host": "r", "password": "redis-pa55"}},
      "queue": {"driver": "redis"}
    }"#;
    let (c, _) = load(text).unwrap();
    let s = c.to_string();
    for secret in [
        "hook-user",
        "hook-pass",
        "tok3n",
        "k3y",
        "app-s3cret",
        "pg-pa55",
        "redis-pa55",
    ] {
        assert!(!s.contains(secret), "{secret:?} in the summary:\n{s}");
    }
    assert!(
        s.contains("https://***@api.example.com/hook?token=***&v=***"),
        "{s}"
    );
    assert!(s.contains("https://api.example.com/other?key=***"), "{s}");
    assert!(
        s.contains("table \"applications\" in pg@localhost:5432/sockudo"),
        "{s}"
    );
    // Debug output of the settings hides the Redis password too.
    let debug = format!("{c:?}");
    assert!(!debug.contains("redis-pa55"), "{debug}");
    assert!(!debug.contains("pg-pa55"), "{debug}");

    let (c, _) = load(
        r#"{"app_manager": {"driver": "dynamodb"},
            "database": {"dynamodb": {"endpoint_url": "http://dyn:dyn-pa55@127.0.0.1:8000/?x=y"}}}"#,
    )
    .unwrap();
    let s = c.to_string();
    assert!(s.contains("at http://***@127.0.0.1:8000/?x=***"), "{s}");
}

#[test]
fn url_errors_do_not_echo_secrets() {
    let err = error_text(
        r#"{"app_manager": {"array": {"apps": [{"id": "a", "key": "k", "secret": "s", "webhooks": [
            {"url": "ftp://u:pw@example.com/x?token=t0k", "event_types": ["channel_occupied"]},
            {"url": "example.com/x?token=t0k", "event_types": ["channel_occupied"]}]}]}}}"#,
    );
    assert!(!err.contains("t0k") && !err.contains("pw"), "{err}");
    assert!(
        err.contains(
            "webhooks[0].url: \"ftp://***@example.com/x?token=***\" is not an absolute http(s) URL"
        ),
        "{err}"
    );
    assert!(
        err.contains("webhooks[1].url: \"example.com/x?token=***\" is not an absolute http(s) URL"),
        "{err}"
    );
}

#[test]
fn sqs_settings_past_sqs_limits_are_refused() {
    let (c, _) = load("{}").unwrap();
    assert_eq!(c.queue.sqs.wait_time_seconds, sqs_limits::MAX_WAIT_SECONDS);
    assert_eq!(c.queue.sqs.max_messages, sqs_limits::MAX_RECEIVE_MESSAGES);
    let at_limits = r#"{"queue": {"driver": "sqs", "sqs":
        {"wait_time_seconds": 20, "max_messages": 10, "visibility_timeout": 43200}}}"#;
    load(at_limits).unwrap();
    let err = error_text(
        r#"{"queue": {"sqs": {"wait_time_seconds": 21, "max_messages": 11, "visibility_timeout": 43201}}}"#,
    );
    for want in [
        "queue.sqs.wait_time_seconds: must be 20 or less (SQS's limit)",
        "queue.sqs.max_messages: must be 10 or less (SQS's limit)",
        "queue.sqs.visibility_timeout: must be 43200 seconds or less (SQS's limit)",
    ] {
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}

#[test]
fn event_limits_read_sockudos_payload_size() {
    let (c, d) = load(
        r#"{"event_limits": {"max_payload_in_kb": 64, "max_channels_at_once": 100,
        "max_name_length": 200, "max_batch_size": 10}}"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(c.event_limits.max_payload_bytes, 64 * 1024);
    assert_eq!(
        load("{}").unwrap().0.event_limits.max_payload_bytes,
        100 * 1024
    );
    let err = load(r#"{"event_limits": {"max_payload_in_kb": 0}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("event_limits.max_payload_in_kb"), "{err}");
}

/// `queue.max_receives` (issue 14, item 3): the worker's rule on every
/// driver, and SQS's redrive one receive later by default, so the worker
/// dead-letters a job with its reason before SQS would move it silently.
#[test]
fn max_receives_defaults_to_ten_and_sqs_redrives_one_later() {
    let (c, d) = load("{}").unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(c.queue.max_receives, 10);
    assert_eq!(c.queue.sqs.max_receive_count, 11);

    let (c, d) = load(r#"{"queue": {"driver": "sqs", "max_receives": 3}}"#).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(
        (c.queue.max_receives, c.queue.sqs.max_receive_count),
        (3, 4)
    );
    let (c, d) = load(r#"{"queue": {"driver": "redis", "max_receives": 1}}"#).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(c.queue.max_receives, 1);

    // A redrive at or before the worker's rule takes the reason away: a warning.
    let (c, d) =
        load(r#"{"queue": {"driver": "sqs", "max_receives": 5, "sqs": {"max_receive_count": 5}}}"#)
            .unwrap();
    assert_eq!(c.queue.sqs.max_receive_count, 5);
    let [w] = &d.warnings[..] else {
        panic!("one warning: {:?}", d.warnings)
    };
    assert_eq!(w.path, "queue.sqs.max_receive_count");
    assert!(
        w.message.contains("queue.max_receives (5)"),
        "{}",
        w.message
    );
    let (_, d) = load(r#"{"queue": {"driver": "sqs", "sqs": {"max_receive_count": 20}}}"#).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);

    let err = error_text(r#"{"queue": {"max_receives": 0}}"#);
    assert!(
        err.contains("queue.max_receives: must be at least 1, found 0"),
        "{err}"
    );
}

/// On SQS a failed batch's retry job carries its events in one message of
/// at most 256 KiB: an unset `batching.max_bytes` is held below it, one set
/// above it is refused at its path. Redis and memory keep 256 KiB.
#[test]
fn on_sqs_batching_max_bytes_leaves_room_for_the_retry_job() {
    let most = sqs_max_batch_bytes(100);
    assert_eq!(most, 262_144 - 2048 - 100 * 64);
    let (c, _) = load(r#"{"queue": {"driver": "sqs"}}"#).unwrap();
    assert_eq!(c.webhooks.batching.max_bytes, most);
    assert!(
        c.to_string()
            .contains(&format!("up to 100 events / {most} bytes"))
    );
    let (c, _) = load(
        r#"{"queue": {"driver": "sqs"}, "webhooks": {"batching": {"size": 20, "max_bytes": 131072}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.webhooks.batching.max_bytes, 131_072,
        "a value that fits is kept"
    );
    let (c, _) =
        load(r#"{"queue": {"driver": "sqs"}, "webhooks": {"batching": {"size": 10}}}"#).unwrap();
    assert_eq!(c.webhooks.batching.max_bytes, sqs_max_batch_bytes(10));
    for driver in ["memory", "redis"] {
        let (c, _) = load(&format!(
            r#"{{"queue": {{"driver": "{driver}"}}, "webhooks": {{"batching": {{"max_bytes": 1048576}}}}}}"#
        ))
        .unwrap();
        assert_eq!(c.webhooks.batching.max_bytes, 1_048_576, "{driver}");
        let (c, _) = load(&format!(r#"{{"queue": {{"driver": "{driver}"}}}}"#)).unwrap();
        assert_eq!(c.webhooks.batching.max_bytes, 262_144, "{driver}");
    }

    let err = error_text(
        r#"{"queue": {"driver": "sqs"}, "webhooks": {"batching": {"max_bytes": 262144}}}"#,
    );
    assert!(
        err.contains(&format!(
            "webhooks.batching.max_bytes: 262144 is too large on SQS: the retry job of a failed batch carries its events and must fit one SQS message (262144 bytes); with batching.size 100 it is at most {most}"
        )),
        "{err}"
    );
    let err =
        error_text(r#"{"queue": {"driver": "sqs"}, "webhooks": {"batching": {"size": 5000}}}"#);
    assert!(
        err.contains("webhooks.batching.size: 5000 events is too many on SQS"),
        "{err}"
    );
    // The driver set from the environment counts too.
    let err = Config::parse(
        r#"{"webhooks": {"batching": {"max_bytes": 262144}}}"#,
        |k| (k == "HOOKQ_QUEUE_DRIVER").then(|| "sqs".to_string()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("webhooks.batching.max_bytes: 262144 is too large on SQS"),
        "{err}"
    );
}

/// Issue 16: `rate_limit`, `adaptive_concurrency` and `webhooks.vacate_delay_ms`
/// are read with their defaults, and their problems are named at their paths.
#[test]
fn endpoint_limits_are_read_and_their_problems_have_paths() {
    let text = r#"{
      "webhooks": {"vacate_delay_ms": 3000, "adaptive_concurrency": true},
      "app_manager": {"array": {"apps": [{
        "id": "a", "key": "k", "secret": "s",
        "webhooks": [
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"],
           "rate_limit": {"per_second": 2.5}},
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"],
           "rate_limit": {"per_second": 20, "burst": 5}, "adaptive_concurrency": false}
        ]}]}}
    }"#;
    let (c, _) = load(text).unwrap();
    assert_eq!(c.webhooks.vacate_delay, Some(Duration::from_secs(3)));
    let eps = &c.app("a").unwrap().endpoints;
    let rl = |i: usize| eps[i].rate_limit.map(|r| (r.per_second, r.burst));
    assert_eq!((rl(0), eps[0].adaptive_concurrency), (Some((2.5, 1)), true));
    assert_eq!(
        (rl(1), eps[1].adaptive_concurrency),
        (Some((20.0, 5)), false)
    );
    let (plain, _) = load(
        r#"{"app_manager": {"array": {"apps": [{"id": "a", "key": "k", "secret": "s",
        "webhooks": [{"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"]}]}]}}}"#,
    )
    .unwrap();
    let ep = &plain.app("a").unwrap().endpoints[0];
    assert_eq!((ep.rate_limit, ep.adaptive_concurrency), (None, false));
    assert_eq!(plain.webhooks.vacate_delay, None, "off by default");

    let bad = error_text(
        r#"{
      "webhooks": {"vacate_delay_ms": 900001},
      "app_manager": {"array": {"apps": [{
        "id": "a", "key": "k", "secret": "s",
        "webhooks": [
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"], "rate_limit": {"burst": 0}},
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"], "rate_limit": {"per_second": 0}},
          {"url": "http://127.0.0.1:1/h", "event_types": ["cache_miss"], "rate_limit": {"per_second": "9", "bursts": 2}}
        ]}]}}
    }"#,
    );
    for want in [
        "webhooks.vacate_delay_ms: 900001 is more than 900000",
        "apps[0].webhooks[0].rate_limit.per_second: missing",
        "apps[0].webhooks[0].rate_limit.burst: must be at least 1",
        "apps[0].webhooks[1].rate_limit.per_second: must be more than 0",
        "apps[0].webhooks[2].rate_limit.per_second: expected a number, found a string",
    ] {
        assert!(bad.contains(want), "{want:?} not in:\n{bad}");
    }
}

/// Redis Cluster: `queue.redis.cluster_mode` seeds with the URL, Sockudo's
/// "redis-cluster" driver with `queue.redis_cluster.nodes` and its prefix;
/// shards default to 16 on a cluster and 1 on one server.
#[test]
fn redis_cluster_keys_are_read() {
    let (c, _) = load(
        r#"{"queue": {"driver": "redis", "redis": {"url": "redis://n1:7000", "cluster_mode": true}}}"#,
    )
    .unwrap();
    let r = &c.queue.redis;
    assert_eq!(
        r.cluster.as_deref(),
        Some(&["redis://n1:7000".to_string()][..])
    );
    assert_eq!((r.shards, r.replicas_ack), (16, 0));

    let (c, _) = load(
        r#"{"queue": {"driver": "redis-cluster", "redis_cluster": {"nodes": ["redis://a:7000", "redis://b:7001"],
            "prefix": "sq", "concurrency": 5, "request_timeout_ms": 5000}, "redis": {"shards": 4}}}"#,
    )
    .unwrap();
    let r = &c.queue.redis;
    assert_eq!(c.queue.driver, QueueDriverKind::Redis);
    assert_eq!(
        r.cluster.as_deref(),
        Some(&["redis://a:7000".to_string(), "redis://b:7001".to_string()][..])
    );
    assert_eq!((r.prefix.as_str(), r.shards), ("sq", 4));

    let (c, _) = load(r#"{"queue": {"driver": "redis"}}"#).unwrap();
    assert_eq!(
        (c.queue.redis.cluster.is_none(), c.queue.redis.shards),
        (true, 1)
    );

    let (c, _) = load(
        r#"{"queue": {"driver": "redis", "redis": {"replicas_ack": 1, "replicas_ack_timeout_ms": 250}}}"#,
    )
    .unwrap();
    assert_eq!(c.queue.redis.replicas_ack, 1);
    assert_eq!(
        c.queue.redis.replicas_ack_timeout,
        Duration::from_millis(250)
    );

    for (text, want) in [
        (
            r#"{"queue": {"driver": "redis", "redis": {"shards": 0}}}"#,
            "queue.redis.shards: must be at least 1",
        ),
        (
            r#"{"queue": {"driver": "redis", "redis": {"shards": 5000}}}"#,
            "queue.redis.shards: must be at most 1024",
        ),
        (
            r#"{"queue": {"driver": "redis-cluster", "redis_cluster": {"nodes": ["10.0.0.1:7000"]}}}"#,
            "queue.redis_cluster.nodes[0]: must start with redis://",
        ),
        (
            r#"{"queue": {"driver": "redis", "redis": {"cluster_mode": true,
                "sentinels": [{"host": "s", "port": 26379}]}}}"#,
            "queue.redis.sentinels: a Redis Cluster has no sentinels",
        ),
    ] {
        let err = error_text(text);
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}
