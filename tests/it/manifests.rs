//! The deployment files users copy: every YAML file parses; the Kubernetes
//! worker's probes point at routes a real worker serves, on the admin port of
//! the config in the ConfigMap; grace periods outlast the shutdown timeout;
//! selectors, Service annotations and KEDA triggers match the Deployment and
//! the config; every shipped config passes `hookq check-config`; the two
//! Dockerfiles' runtime stages agree. (`make e2e-compose` runs the compose
//! file itself.)

use crate::support::process::{WorkerProcess, hookq, temp_dir};
use crate::support::redis_server::RedisServer;
use crate::support::wait::poll;
use hookq_core::Config;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every document of a YAML file, as JSON values (a document is what lies
/// between lines that are exactly `---`).
fn yaml_documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut push = |doc: &str| {
        let has_content = doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            let v: Value = serde_norway::from_str(doc).unwrap_or_else(|e| {
                panic!("{rel}: document {} is not valid YAML: {e}", docs.len() + 1)
            });
            docs.push(v);
        }
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            push(&current);
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push(&current);
    docs
}

/// The manifests of one directory (`rel`, not its subdirectories), by file name.
fn manifests_in(rel: &str) -> BTreeMap<String, Vec<Value>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let docs = yaml_documents(&format!("{rel}/{name}"));
            files.insert(name, docs);
        }
    }
    files
}

/// The Kubernetes manifests by file name.
fn kubernetes() -> BTreeMap<String, Vec<Value>> {
    let files = manifests_in("deploy/kubernetes");
    assert!(
        files.len() >= 6,
        "expected the worker's manifests, found {:?}",
        files.keys()
    );
    files
}

/// Every object of a kind, over all files.
fn objects(kind: &str) -> Vec<Value> {
    of_kind(&kubernetes(), kind)
}

fn of_kind(files: &BTreeMap<String, Vec<Value>>, kind: &str) -> Vec<Value> {
    files
        .values()
        .flatten()
        .filter(|d| d["kind"] == kind)
        .cloned()
        .collect()
}

/// The one object of a kind in `files` (the manifests of `dir`).
fn only(files: &BTreeMap<String, Vec<Value>>, kind: &str, dir: &str) -> Value {
    let mut all = of_kind(files, kind);
    assert_eq!(all.len(), 1, "expected exactly one {kind} in {dir}");
    all.remove(0)
}

fn one(kind: &str) -> Value {
    only(&kubernetes(), kind, "deploy/kubernetes")
}

/// Every document of `files` (in `dir`) has a kind, an apiVersion and, but a
/// Kustomization, a name.
fn assert_documents_named(dir: &str, files: &BTreeMap<String, Vec<Value>>) {
    for (file, docs) in files {
        assert!(!docs.is_empty(), "{dir}/{file} has no document");
        for d in docs {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{dir}/{file}: a document without kind"));
            assert!(
                d["apiVersion"].is_string(),
                "{dir}/{file}: {kind} without apiVersion"
            );
            if kind != "Kustomization" {
                assert!(
                    d["metadata"]["name"].is_string(),
                    "{dir}/{file}: {kind} without metadata.name"
                );
            }
        }
    }
}

/// The resources `files`' kustomization.yaml applies, each a file of `files`.
fn kustomization_resources(files: &BTreeMap<String, Vec<Value>>, dir: &str) -> Vec<String> {
    let kustomization = &files
        .get("kustomization.yaml")
        .unwrap_or_else(|| panic!("{dir}/kustomization.yaml"))[0];
    let resources: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for r in &resources {
        assert!(
            files.contains_key(r),
            "{dir}/kustomization.yaml lists {r}, which does not exist"
        );
    }
    resources
}

/// The element of the array `list` whose `name` is `name`.
fn named(list: &Value, name: &str) -> Option<Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

fn deployment() -> Value {
    let d = one("Deployment");
    assert_eq!(d["metadata"]["name"], "hookq-worker");
    d
}

fn container(deployment: &Value) -> Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "hookq")
        .cloned()
        .expect("a container named hookq")
}

/// The ConfigMap's config.json: its text and the config hookq reads from it.
fn configmap_config() -> (String, Config) {
    let cm = one("ConfigMap");
    let text = cm["data"]["config.json"]
        .as_str()
        .expect("the ConfigMap has data.config.json")
        .to_string();
    let (config, _) =
        Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"));
    (text, config)
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>()
        .expect("an ip:port")
        .port()
}

/// A probe's or Service's port, named or numbered, as the container's port number.
fn resolve_port(port: &Value, container: &Value) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().expect("a port number") as u16,
        Value::String(name) => container["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name:?}"))
            as u16,
        other => panic!("unexpected port {other}"),
    }
}

/// `host:port` of a `redis://[user:password@]host[:port][/db]` URL.
fn redis_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap();
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:6379")
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Seconds of a compose duration: "30s", "1m30s", "90".
fn compose_seconds(d: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    for c in d.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {d:?}"));
        number.clear();
        total += n * match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => panic!("unsupported unit in duration {d:?}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<f64>().unwrap();
    }
    total
}

/// The repository path of the config a compose service reads: its
/// `HOOKQ_CONFIG` (or `RECEIVER_CONFIG`) inside a directory it mounts.
fn compose_config_file(service: &Value) -> String {
    let env = &service["environment"];
    let inside = env["HOOKQ_CONFIG"]
        .as_str()
        .or(env["RECEIVER_CONFIG"].as_str())
        .expect("the service names its config file");
    for volume in service["volumes"].as_array().into_iter().flatten() {
        let mut parts = volume.as_str().unwrap().split(':');
        let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
        if let Some(rest) = inside.strip_prefix(&format!("{container}/")) {
            return format!("{}/{rest}", host.trim_start_matches("./"));
        }
        if inside == container {
            return host.trim_start_matches("./").to_string();
        }
    }
    panic!("no volume holds {inside}");
}

/// `hookq check-config` on a config text; panics with its output when it fails.
fn check_config(label: &str, text: &str) {
    let dir = temp_dir("manifests");
    let path = dir.join(format!("{label}.json"));
    std::fs::write(&path, text).unwrap();
    let (ok, out, err) = hookq(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(ok, "{label}: hookq check-config failed:\n{out}{err}");
    assert!(out.contains("is valid"), "{label}: {out}");
}

/// The paths of the container's probes, each an `httpGet` on `admin_port`
/// to one of the admin routes it may check; the startup probe may be left
/// out where `startup_optional`.
fn probe_paths(c: &Value, admin_port: u16, startup_optional: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (probe, paths) in [
        ("readinessProbe", &["/ready"][..]),
        ("livenessProbe", &["/health"][..]),
        ("startupProbe", &["/health", "/ready"][..]),
    ] {
        let p = &c[probe];
        if probe == "startupProbe" && startup_optional && p.is_null() {
            continue;
        }
        let get = &p["httpGet"];
        assert!(get.is_object(), "{probe} is an httpGet probe");
        let path = get["path"].as_str().unwrap();
        assert!(
            paths.contains(&path),
            "{probe} checks {path}, expected one of {paths:?}"
        );
        assert_eq!(
            resolve_port(&get["port"], c),
            admin_port,
            "{probe} is on the admin port, worker.admin_addr's"
        );
        out.push(path.to_string());
    }
    out
}

/// The container's port numbers.
fn container_ports(c: &Value) -> Vec<u16> {
    c["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        .collect()
}

/// The Deployment `d`'s container `c` (`who`) reads the ConfigMap's
/// config.json: HOOKQ_CONFIG names it in the mount of a volume of the ConfigMap.
fn assert_reads_the_configmap(d: &Value, c: &Value, who: &str) {
    let mount = named(&c["volumeMounts"], "config")
        .unwrap_or_else(|| panic!("{who}: the config is mounted"));
    let env_config =
        named(&c["env"], "HOOKQ_CONFIG").unwrap_or_else(|| panic!("{who}: HOOKQ_CONFIG is set"));
    assert_eq!(
        env_config["value"].as_str().unwrap(),
        format!("{}/config.json", mount["mountPath"].as_str().unwrap()),
        "{who}: HOOKQ_CONFIG names the mounted config.json"
    );
    let volume = named(&d["spec"]["template"]["spec"]["volumes"], "config")
        .unwrap_or_else(|| panic!("{who}: a config volume"));
    assert_eq!(
        volume["configMap"]["name"],
        one("ConfigMap")["metadata"]["name"],
        "{who} reads the workers' ConfigMap"
    );
}

/// The container asks for CPU and memory and has a memory limit; it and its
/// pod `pod` run as a non-root user that cannot escalate, on a read-only root.
fn assert_sized_and_locked_down(pod: &Value, c: &Value) {
    for r in ["cpu", "memory"] {
        assert!(
            c["resources"]["requests"][r].is_string(),
            "resources.requests.{r}"
        );
    }
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "a memory limit"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
}

/// The PodDisruptionBudget `pdb` (`who`'s) selects pods labelled `labels` and sets a budget.
fn assert_pdb_selects(pdb: &Value, labels: &Value, who: &str) {
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert!(
        labels_match(&pdb["spec"]["selector"]["matchLabels"], labels),
        "the PDB selects the {who} pods"
    );
    assert!(
        pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number(),
        "the {who} PDB sets a budget"
    );
}

/// The config file a compose service reads, and the config hookq reads from it.
fn compose_config(service: &Value) -> (String, Config) {
    let file = compose_config_file(service);
    let (config, _) =
        Config::parse(&read(&file), |_| None).unwrap_or_else(|e| panic!("{file}: {e}"));
    (file, config)
}

/// The compose service `service` (`who`) gets more time to stop than its
/// config's shutdown timeout.
fn assert_compose_grace(service: &Value, who: &str) {
    let (file, config) = compose_config(service);
    let stop = compose_seconds(
        service["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    );
    assert!(
        stop > config.worker.shutdown_timeout.as_secs_f64(),
        "compose: the {who}'s stop_grace_period {stop} s must exceed {file}'s shutdown timeout"
    );
}

#[test]
fn every_yaml_file_parses_and_every_manifest_names_its_kind() {
    assert_documents_named("deploy/kubernetes", &kubernetes());
    for rel in [
        "docker-compose.yml",
        "deploy/prometheus.yml",
        "deploy/prometheus-alerts.yml",
    ] {
        assert_eq!(yaml_documents(rel).len(), 1, "{rel}: one document");
    }
    let kinds: Vec<String> = kubernetes()
        .into_values()
        .flatten()
        .filter_map(|d| d["kind"].as_str().map(String::from))
        .collect();
    for kind in [
        "Deployment",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} in deploy/kubernetes"
        );
    }
}

#[test]
fn every_shipped_config_passes_check_config() {
    let (text, _) = configmap_config();
    check_config("configmap", &text);
    for entry in std::fs::read_dir(root().join("deploy/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let label = path.file_stem().unwrap().to_string_lossy().into_owned();
            check_config(&label, &std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn probes_use_the_admin_routes_on_the_configmap_admin_port() {
    let d = deployment();
    let c = container(&d);
    let (_, config) = configmap_config();
    let admin_port = port_of(&config.worker.admin_addr);
    probe_paths(&c, admin_port, true);
    assert_eq!(
        container_ports(&c),
        vec![admin_port],
        "the container exposes the admin port"
    );
    assert_reads_the_configmap(&d, &c, "the worker");
}

/// The probe paths, and the Service's metrics path, answer 200 on a real
/// worker started with the ConfigMap's config (its Redis swapped for the
/// suite's, its endpoints for a closed local port), and every metric the
/// alert rules use exists once a request was tried and a job dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_the_configmap_config_serves_the_probe_routes() {
    let d = deployment();
    let c = container(&d);
    let service = one("Service");
    let (text, parsed) = configmap_config();
    let redis = RedisServer::start();
    let mut config: Value = serde_json::from_str(&hookq_core::jsonc::strip(&text)).unwrap();
    config["queue"]["redis"]["url"] = json!(redis.url());
    let closed = format!("http://127.0.0.1:{}/", crate::support::process::free_port());
    for app in config["app_manager"]["array"]["apps"]
        .as_array_mut()
        .unwrap()
    {
        for hook in app["webhooks"].as_array_mut().unwrap() {
            if hook.get("url").is_some() {
                hook["url"] = json!(closed);
            }
        }
    }
    let dir = temp_dir("manifests-worker");
    let mut w = WorkerProcess::start(&dir, "configmap", &config).await;
    let mut paths = probe_paths(&c, port_of(&parsed.worker.admin_addr), true);
    paths.push(
        service["metadata"]["annotations"]["prometheus.io/path"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let start = std::time::Instant::now();
    let every = Duration::from_millis(100);
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    w.wait_ok(&paths, Duration::from_secs(15), every).await;
    // Labelled families appear once they have a sample: one malformed job
    // (dead-lettered) and one event for every app (a refused connection, retried).
    let ready = hookq_queue::redis::ready_key(&parsed.queue.redis.prefix);
    redis
        .command(&["LPUSH", &ready, "this is not a job"])
        .unwrap();
    for app in &parsed.apps {
        let job = json!({"v": 1, "kind": "event", "id": format!("probe-{}", app.id), "app_id": app.id,
            "event": {"name": "channel_occupied", "channel": "private-room"}});
        redis.command(&["LPUSH", &ready, &job.to_string()]).unwrap();
    }
    let limit = Duration::from_secs(20).saturating_sub(start.elapsed());
    let metrics = poll("a dead letter and a request", limit, every, async || {
        let (_, metrics) = w.get("/metrics").await.unwrap();
        if metrics.contains("hookq_dead_lettered_total{")
            && metrics.contains("hookq_requests_total{")
        {
            Ok(metrics)
        } else {
            Err(format!("no dead letter or request counted:\n{metrics}"))
        }
    })
    .await;
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let rules = read("deploy/prometheus-alerts.yml");
    let mut used: Vec<&str> = rules
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|t| t.starts_with("hookq_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(!used.is_empty());
    for name in used {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.contains(&family),
            "alert rules use {name}, but /metrics has no {family}: {families:?}"
        );
    }
    assert!(w.terminate(Duration::from_secs(30)).success());
}

#[test]
fn termination_grace_outlasts_the_shutdown_timeout() {
    let d = deployment();
    let (_, config) = configmap_config();
    let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds is set");
    let shutdown = config.worker.shutdown_timeout;
    assert!(
        Duration::from_secs(grace) > shutdown,
        "terminationGracePeriodSeconds {grace} s must exceed worker.shutdown_timeout_ms {shutdown:?}"
    );

    let compose = &yaml_documents("docker-compose.yml")[0];
    assert_compose_grace(&compose["services"]["worker"], "worker");
}

#[test]
fn the_deployment_has_resources_and_runs_as_the_image_user() {
    let d = deployment();
    let c = container(&d);
    let pod = &d["spec"]["template"]["spec"];
    assert_sized_and_locked_down(pod, &c);
    let dockerfile = read("deploy/Dockerfile");
    let uid: u64 = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG HOOKQ_UID="))
        .expect("ARG HOOKQ_UID in deploy/Dockerfile")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_u64(),
        Some(uid),
        "runAsUser = the image's user"
    );
    assert!(labels_match(
        &d["spec"]["selector"]["matchLabels"],
        &d["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "rolling upgrades keep capacity"
    );
}

#[test]
fn the_service_and_the_pdb_select_the_worker_pods() {
    let d = deployment();
    let c = container(&d);
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    let (_, config) = configmap_config();
    let admin_port = port_of(&config.worker.admin_addr);

    let s = one("Service");
    assert!(
        labels_match(&s["spec"]["selector"], pod_labels),
        "the Service selects the worker pods"
    );
    let annotations = &s["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        admin_port.to_string(),
        "scrape port = admin port"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let ports = s["spec"]["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| resolve_port(&p["targetPort"], &c) == admin_port),
        "the Service targets the admin port"
    );

    assert_pdb_selects(&one("PodDisruptionBudget"), pod_labels, "worker");
}

#[test]
fn keda_scales_the_worker_on_the_redis_list_and_on_the_sqs_queue() {
    let (_, config) = configmap_config();
    let scaled = objects("ScaledObject");
    let trigger_of = |kind: &str| -> (Value, Value) {
        let so = scaled
            .iter()
            .find(|so| {
                so["spec"]["triggers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["type"] == kind)
            })
            .unwrap_or_else(|| panic!("a ScaledObject with a {kind} trigger"))
            .clone();
        assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(
            so["spec"]["scaleTargetRef"]["name"], "hookq-worker",
            "{kind}: scales the worker Deployment"
        );
        let min = so["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
        let max = so["spec"]["maxReplicaCount"]
            .as_u64()
            .expect("maxReplicaCount");
        assert!(min <= max);
        let t = so["spec"]["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == kind)
            .unwrap()
            .clone();
        (so, t)
    };

    let (so, redis) = trigger_of("redis");
    assert!(
        so["spec"]["minReplicaCount"].as_u64().unwrap_or(0) >= 1,
        "Redis needs a worker to move due retries"
    );
    let m = &redis["metadata"];
    assert_eq!(
        m["listName"].as_str().unwrap(),
        hookq_queue::redis::ready_key(&config.queue.redis.prefix),
        "the scaler watches the ready list of the ConfigMap's prefix"
    );
    let address = redis_address(&config.queue.redis.url);
    assert_eq!(
        m["address"].as_str().unwrap(),
        address,
        "the scaler reads the workers' Redis"
    );
    assert!(
        m["listLength"].as_str().unwrap().parse::<u64>().unwrap() > 0,
        "listLength is a positive string"
    );
    if let Some(auth) = redis["authenticationRef"]["name"].as_str() {
        assert!(
            objects("TriggerAuthentication")
                .iter()
                .any(|a| a["metadata"]["name"] == auth)
        );
    }

    let (_, sqs) = trigger_of("aws-sqs-queue");
    let m = &sqs["metadata"];
    assert!(
        m["queueURL"].as_str().unwrap().starts_with("https://sqs."),
        "queueURL"
    );
    assert!(m["awsRegion"].is_string(), "awsRegion");
    assert!(
        m["queueLength"].as_str().unwrap().parse::<u64>().unwrap() > 0,
        "queueLength is a positive string"
    );
    let auth = sqs["authenticationRef"]["name"]
        .as_str()
        .expect("the SQS trigger authenticates");
    assert!(
        objects("TriggerAuthentication")
            .iter()
            .any(|a| a["metadata"]["name"] == auth)
    );

    // One ScaledObject per Deployment: the kustomization applies exactly one,
    // and names files that exist.
    let files = kubernetes();
    let resources = kustomization_resources(&files, "deploy/kubernetes");
    let applied = resources
        .iter()
        .filter(|r| files[*r].iter().any(|d| d["kind"] == "ScaledObject"))
        .count();
    assert_eq!(
        applied, 1,
        "kustomization.yaml applies exactly one ScaledObject"
    );
}

#[test]
fn the_compose_file_runs_redis_durably_and_workers_from_variables() {
    let compose = &yaml_documents("docker-compose.yml")[0];
    let services = &compose["services"];
    let redis = &services["redis"];
    let command: Vec<&str> = redis["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |name: &str| {
        command
            .iter()
            .position(|a| *a == name)
            .map(|i| command[i + 1])
    };
    assert_eq!(arg("--appendonly"), Some("yes"), "Redis persists with AOF");
    assert_eq!(
        arg("--maxmemory-policy"),
        Some("noeviction"),
        "Redis never evicts jobs"
    );
    for (service, var) in [
        ("redis", "REDIS_IMAGE"),
        ("worker", "HOOKQ_IMAGE"),
        ("receiver", "RECEIVER_IMAGE"),
    ] {
        let image = services[service]["image"].as_str().unwrap();
        assert!(
            image.starts_with(&format!("${{{var}:-")),
            "{service}'s image comes from ${var} with a default: {image}"
        );
    }
    for (name, s) in services.as_object().unwrap() {
        for p in s["ports"].as_array().into_iter().flatten() {
            assert!(
                p.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name} publishes {p} beyond 127.0.0.1"
            );
        }
    }
    let (file, config) = compose_config(&services["worker"]);
    assert_eq!(
        compose_config_file(&services["receiver"]),
        file,
        "the receiver reads the workers' config"
    );
    assert!(
        config.webhooks.event_ids,
        "the compose config sends event ids (the receiver de-duplicates on them)"
    );
    assert!(
        read("deploy/Dockerfile").contains("HEALTHCHECK"),
        "the image has a HEALTHCHECK"
    );
    assert_eq!(
        port_of(&config.worker.admin_addr),
        9090,
        "the image's HEALTHCHECK URL uses port 9090"
    );
}

/// deploy/Dockerfile.build's runtime stage is deploy/Dockerfile's, but for
/// where the binary comes from.
#[test]
fn the_two_dockerfiles_build_the_same_runtime_image() {
    fn runtime_stage(text: &str) -> Vec<String> {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .collect();
        let last_from = lines
            .iter()
            .rposition(|l| l.starts_with("FROM "))
            .expect("a FROM");
        lines[last_from..]
            .iter()
            .filter(|l| !l.starts_with("COPY "))
            .map(|l| l.to_string())
            .collect()
    }
    let plain = read("deploy/Dockerfile");
    let multi = read("deploy/Dockerfile.build");
    assert_eq!(runtime_stage(&plain), runtime_stage(&multi));
    for text in [&plain, &multi] {
        assert!(
            text.contains("ARG BASE_IMAGE="),
            "the base image is a build argument"
        );
        assert!(text.contains("FROM ${BASE_IMAGE}"));
        assert!(
            text.lines()
                .any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0"))
        );
        assert!(
            text.lines()
                .any(|l| l.contains("HEALTHCHECK") || l.contains("/health"))
        );
        assert!(text.contains("ca-certificates"));
    }
}

// ===========================================================================
// The ingest's deployment files: deploy/kubernetes/ingest/ (a kustomization
// of its own, applied beside the workers') and the compose `ingest` service.
// Everything below this line is about the ingest only.
// ===========================================================================

const INGEST_DIR: &str = "deploy/kubernetes/ingest";

/// The manifests parse and match the ConfigMap's config (ports, probes, the
/// grace period, `ingest.urls` naming the Service), the worker's objects and
/// the ingest's select only their own pods, the compose `ingest` service
/// runs the workers' image and config; and a real `hookq ingest` on the
/// ConfigMap's config serves the probe routes and takes a signed webhook
/// into the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_manifests_match_the_config_and_a_real_ingest_serves_them() {
    let files = manifests_in(INGEST_DIR);
    assert_documents_named(INGEST_DIR, &files);
    // The kustomization applies every manifest of the directory.
    let resources = kustomization_resources(&files, INGEST_DIR);
    for file in files.keys().filter(|f| *f != "kustomization.yaml") {
        assert!(
            resources.contains(file),
            "kustomization.yaml does not apply {file}"
        );
    }

    let (text, config) = configmap_config();
    let admin_port = port_of(&config.worker.admin_addr);
    let ingest_port = config.ingest.addr.port();
    let worker = deployment();
    let d = only(&files, "Deployment", INGEST_DIR);
    assert_eq!(d["metadata"]["name"], "hookq-ingest");
    let c = container(&d);
    assert_eq!(
        c["image"],
        container(&worker)["image"],
        "the ingest runs the workers' image"
    );
    assert_eq!(
        c["args"],
        json!(["ingest"]),
        "the container runs `hookq ingest`"
    );

    // Ports and probes.
    let mut ports = container_ports(&c);
    ports.sort_unstable();
    let mut wanted = vec![ingest_port, admin_port];
    wanted.sort_unstable();
    assert_eq!(
        ports, wanted,
        "the container exposes ingest.addr's and worker.admin_addr's ports"
    );
    let mut probe_paths = probe_paths(&c, admin_port, false);

    // Config, grace period, security, rollout.
    assert_reads_the_configmap(&d, &c, "the ingest");
    let pod = &d["spec"]["template"]["spec"];
    let pre_stop = &c["lifecycle"]["preStop"];
    let pause = if let Some(s) = pre_stop["sleep"]["seconds"].as_u64() {
        s
    } else if let Some(cmd) = pre_stop["exec"]["command"].as_array() {
        assert_eq!(cmd[0], "sleep", "preStop pauses: {cmd:?}");
        cmd[1].as_str().unwrap().parse().expect("sleep seconds")
    } else {
        0
    };
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > config.worker.shutdown_timeout + Duration::from_secs(pause),
        "terminationGracePeriodSeconds {grace} s must exceed the preStop pause ({pause} s) plus \
         worker.shutdown_timeout_ms ({:?})",
        config.worker.shutdown_timeout
    );
    assert_sized_and_locked_down(pod, &c);
    assert_eq!(
        pod["securityContext"]["runAsUser"],
        worker["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        "the ingest runs as the image's user, like the workers"
    );
    assert!(
        d["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "two replicas or more"
    );
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let account = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    assert!(
        objects("ServiceAccount")
            .iter()
            .any(|a| a["metadata"]["name"] == account),
        "the ServiceAccount {account} is in deploy/kubernetes"
    );

    // Selectors: each object takes its own pods only.
    let ingest_labels = &d["spec"]["template"]["metadata"]["labels"];
    let worker_labels = &worker["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(
        &d["spec"]["selector"]["matchLabels"],
        ingest_labels
    ));
    assert!(!labels_match(
        &d["spec"]["selector"]["matchLabels"],
        worker_labels
    ));
    assert!(
        !labels_match(&worker["spec"]["selector"]["matchLabels"], ingest_labels),
        "the worker Deployment must not adopt ingest pods"
    );
    for kind in ["Service", "PodDisruptionBudget"] {
        let w = one(kind);
        let selector = if kind == "Service" {
            &w["spec"]["selector"]
        } else {
            &w["spec"]["selector"]["matchLabels"]
        };
        assert!(
            !labels_match(selector, ingest_labels),
            "the worker {kind} must not select ingest pods"
        );
    }
    let service = only(&files, "Service", INGEST_DIR);
    assert!(
        labels_match(&service["spec"]["selector"], ingest_labels),
        "the Service selects ingest pods"
    );
    assert!(!labels_match(&service["spec"]["selector"], worker_labels));
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| resolve_port(&p["targetPort"], &c) == ingest_port)
        .and_then(|p| p["port"].as_u64())
        .expect("the Service targets the ingest port") as u16;
    if let Some(port) = service["metadata"]["annotations"]["prometheus.io/port"].as_str() {
        assert_eq!(
            port,
            admin_port.to_string(),
            "metrics are scraped on the admin port"
        );
    }
    let pdb = only(&files, "PodDisruptionBudget", INGEST_DIR);
    assert_pdb_selects(&pdb, ingest_labels, "ingest");

    // ingest.urls names the Service, however a sender in the cluster spells it:
    // an endpoint there would be refused as a loop.
    let name = service["metadata"]["name"].as_str().unwrap();
    for host in [
        name.to_string(),
        format!("{name}.hookq"),
        format!("{name}.hookq.svc"),
        format!("{name}.hookq.svc.cluster.local"),
    ] {
        let url = reqwest::Url::parse(&format!(
            "http://{host}:{service_port}{}",
            hookq_core::config::INGEST_ROUTE
        ))
        .unwrap();
        assert!(
            config.ingest.is_ingest_url(&url),
            "ingest.urls of the ConfigMap lacks {url}"
        );
    }
    check_config("configmap-ingest", &text);

    // The compose `ingest` service.
    let compose = &yaml_documents("docker-compose.yml")[0];
    let services = &compose["services"];
    let ci = &services["ingest"];
    assert_eq!(
        ci["image"], services["worker"]["image"],
        "compose: the ingest runs the workers' image"
    );
    assert_eq!(
        ci["command"],
        json!(["ingest"]),
        "compose: the service runs `hookq ingest`"
    );
    let (file, compose_config) = compose_config(ci);
    assert_eq!(
        file,
        compose_config_file(&services["worker"]),
        "compose: the workers' config"
    );
    let compose_ingest_port = compose_config.ingest.addr.port();
    assert_compose_grace(ci, "ingest");
    let health: Vec<&str> = ci["healthcheck"]["test"]
        .as_array()
        .expect("compose: the ingest has a healthcheck")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        health.contains(&"hookq") && health.contains(&"healthcheck"),
        "{health:?}"
    );
    assert_eq!(
        port_of(&compose_config.worker.admin_addr),
        9090,
        "the HEALTHCHECK URL's port"
    );
    assert!(
        ci["ports"]
            .as_array()
            .expect("compose: the ingest is published")
            .iter()
            .all(|p| p
                .as_str()
                .unwrap()
                .ends_with(&format!(":{compose_ingest_port}"))),
        "compose: the ingest publishes ingest.addr's port"
    );
    let dns = reqwest::Url::parse(&format!(
        "http://ingest:{compose_ingest_port}{}",
        hookq_core::config::INGEST_ROUTE
    ))
    .unwrap();
    assert!(
        compose_config.ingest.is_ingest_url(&dns),
        "{file}: ingest.urls lacks {dns}"
    );

    // A real ingest on the ConfigMap's config (its Redis swapped for the
    // suite's): the probe routes answer, a signed webhook becomes a job, a
    // badly signed one is refused, SIGTERM stops it cleanly.
    let redis = RedisServer::start();
    let mut live: Value = serde_json::from_str(&hookq_core::jsonc::strip(&text)).unwrap();
    live["queue"]["redis"]["url"] = json!(redis.url());
    let dir = temp_dir("manifests-ingest");
    let mut ingest = WorkerProcess::start_ingest(&dir, "ingest", &live).await;
    probe_paths.push(
        service["metadata"]["annotations"]["prometheus.io/path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_string(),
    );
    let probe_paths: Vec<&str> = probe_paths.iter().map(String::as_str).collect();
    ingest
        .wait_ok(
            &probe_paths,
            Duration::from_secs(15),
            Duration::from_millis(100),
        )
        .await;
    let app = config
        .apps
        .iter()
        .find(|a| {
            let e = hookq_core::Event::channel_occupied("room-1");
            a.enabled && a.endpoints.iter().any(|ep| ep.wants(&e))
        })
        .expect("an app of the ConfigMap wants channel_occupied");
    let sender = crate::support::sender::Sender::new();
    let webhook =
        crate::support::sender::body(&[json!({"name": "channel_occupied", "channel": "room-1"})]);
    let ok = sender
        .post(&ingest.ingest_url(), &app.key, &app.secret, &webhook)
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "a signed webhook: {}", ok.body);
    let bad = sender
        .post(&ingest.ingest_url(), &app.key, "not-the-secret", &webhook)
        .await
        .unwrap();
    assert_eq!(bad.status, 401, "a badly signed webhook: {}", bad.body);
    let ready = hookq_queue::redis::ready_key(&config.queue.redis.prefix);
    let queued = redis.command(&["LLEN", &ready]).unwrap();
    assert_eq!(
        queued,
        crate::support::redis_server::Reply::Int(1),
        "one job in {ready}"
    );
    let (_, metrics) = ingest.get("/metrics").await.unwrap();
    assert!(metrics.contains("hookq_ingest_requests_total"), "{metrics}");
    assert!(ingest.terminate(Duration::from_secs(30)).success());
}
