//! The Compose → Kubernetes mapping, field by field, and the golden export of an example.

use serde_json::{json, Value};

use super::{dns_label, export, Options};
use crate::compose::{load, LoadOptions, Project};
use crate::export::{lint::lint, Level, Report};

fn project_in(yaml: &str, dir: &std::path::Path) -> Project {
    let o = LoadOptions {
        files: vec!["-".into()],
        stdin: Some(yaml.into()),
        project_name: Some("demo".into()),
        working_dir: dir.to_path_buf(),
        interpolate: true,
        resolve_env_files: true,
        ..Default::default()
    };
    load(&o).unwrap_or_else(|e| panic!("{e}"))
}

fn project(yaml: &str) -> Project {
    project_in(yaml, &std::env::temp_dir())
}

/// Export with default options; the output must pass berth's lint when there is no error.
fn k8s(yaml: &str) -> (Vec<Value>, Report) {
    k8s_with(yaml, &Options::default())
}

fn k8s_with(yaml: &str, o: &Options) -> (Vec<Value>, Report) {
    let (docs, r) = export(&project(yaml), o);
    if !r.has(Level::Error) {
        assert_eq!(lint(&docs), Vec::<String>::new(), "{docs:#?}");
    }
    (docs, r)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {docs:#?}"))
}

fn has(docs: &[Value], kind: &str, name: &str) -> bool {
    docs.iter()
        .any(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn container(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn update_config_maps_to_max_surge_and_max_unavailable() {
    let (docs, r) = k8s(r#"
services:
  a: {image: nginx, deploy: {replicas: 4, update_config: {parallelism: 2, order: start-first, monitor: 10s}}}
  b: {image: nginx, deploy: {update_config: {parallelism: 3}}}
  c: {image: nginx, deploy: {update_config: {parallelism: 0, order: stop-first, delay: 5s, failure_action: rollback}}}
"#);
    let a = &find(&docs, "Deployment", "a")["spec"];
    assert_eq!(a["replicas"], 4);
    assert_eq!(
        a["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}})
    );
    assert_eq!(a["minReadySeconds"], 10);
    let b = &find(&docs, "Deployment", "b")["spec"];
    assert_eq!(
        b["strategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": 3})
    );
    let c = &find(&docs, "Deployment", "c")["spec"];
    assert_eq!(
        c["strategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": "100%"})
    );
    // What Kubernetes cannot do is reported, by service and field.
    assert!(r.names(Level::Unmapped, Some("c"), "deploy.update_config.delay"));
    assert!(r.names(
        Level::Unmapped,
        Some("c"),
        "deploy.update_config.failure_action"
    ));
    assert!(!r.names(Level::Unmapped, Some("a"), "deploy.update_config.monitor"));
}

#[test]
fn healthcheck_maps_to_readiness_liveness_and_startup_probes() {
    let (docs, _) = k8s(r#"
services:
  db:
    image: postgres
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U $$USER"]
      interval: 5s
      timeout: 1500ms
      retries: 4
      start_period: 30s
      start_interval: 2s
  web:
    image: nginx
    healthcheck: {test: ["CMD", "curl", "-f", "http://localhost"]}
  off:
    image: nginx
    healthcheck: {disable: true}
"#);
    let c = container(find(&docs, "Deployment", "db"));
    let probe = json!({"exec": {"command": ["/bin/sh", "-c", "pg_isready -U $USER"]},
        "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 4});
    assert_eq!(c["readinessProbe"], probe);
    assert_eq!(c["livenessProbe"], probe);
    // 30 s of start period at 2 s, then the 4 retries.
    assert_eq!(c["startupProbe"]["periodSeconds"], 2);
    assert_eq!(c["startupProbe"]["failureThreshold"], 15 + 4);
    let w = container(find(&docs, "Deployment", "web"));
    assert_eq!(
        w["readinessProbe"]["exec"]["command"],
        json!(["curl", "-f", "http://localhost"])
    );
    // Compose's defaults: 30 s interval and timeout, 3 retries; no start period, no startupProbe.
    assert_eq!(w["livenessProbe"]["periodSeconds"], 30);
    assert_eq!(w["livenessProbe"]["failureThreshold"], 3);
    assert!(w["startupProbe"].is_null());
    assert!(container(find(&docs, "Deployment", "off"))["readinessProbe"].is_null());
}

#[test]
fn one_shots_become_jobs_and_long_runners_deployments() {
    let (docs, r) = k8s(r#"
services:
  migrate: {image: app, restart: "no", command: ["migrate"]}
  retry: {image: app, restart: "on-failure:3"}
  seed: {image: app}
  web:
    image: app
    restart: always
    depends_on:
      migrate: {condition: service_completed_successfully}
      seed: {condition: service_completed_successfully}
  node: {image: agent, deploy: {mode: global}}
"#);
    let m = find(&docs, "Job", "migrate");
    assert_eq!(m["apiVersion"], "batch/v1");
    assert_eq!(m["spec"]["backoffLimit"], 0);
    assert_eq!(m["spec"]["template"]["spec"]["restartPolicy"], "Never");
    // on-failure is a long-running service that Kubernetes restarts on any exit: reported.
    assert!(has(&docs, "Deployment", "retry"));
    assert!(r.names(Level::Unmapped, Some("retry"), "restart"));
    // A one-shot that a dependant waits for, retried on failure: a Job with a backoff limit.
    let (jobs, _) = k8s(
        "services: {m: {image: x, restart: \"on-failure:3\"}, w: {image: y, depends_on: {m: {condition: service_completed_successfully}}}}",
    );
    let rt = find(&jobs, "Job", "m");
    assert_eq!(rt["spec"]["backoffLimit"], 3);
    assert_eq!(rt["spec"]["template"]["spec"]["restartPolicy"], "OnFailure");
    // No restart key, but a dependant waits for its completion: a Job too.
    assert!(has(&docs, "Job", "seed"));
    assert!(r.names(Level::Note, Some("seed"), "restart"));
    assert!(has(&docs, "Deployment", "web"));
    assert!(has(&docs, "DaemonSet", "node"));
    assert!(find(&docs, "DaemonSet", "node")["spec"]["replicas"].is_null());
    // Waiting for a Job's completion cannot be expressed: reported, never silent.
    assert!(r.names(Level::Unmapped, Some("web"), "depends_on.migrate.condition"));
    // Nor can waiting for a Job to have started (it may be gone already).
    let (docs, r) =
        k8s("services: {once: {image: x, restart: \"no\"}, app: {image: y, depends_on: [once]}}");
    assert!(r.names(Level::Unmapped, Some("app"), "depends_on.once.condition"));
    assert!(
        find(&docs, "Deployment", "app")["spec"]["template"]["spec"]["initContainers"].is_null()
    );
    assert!(!docs
        .iter()
        .any(|d| d["spec"]["template"]["spec"]["initContainers"].is_array()));
}

#[test]
fn depends_on_waits_in_init_containers_for_the_dependency_service() {
    let (docs, r) = k8s(r#"
services:
  db: {image: postgres, expose: ["5432"], healthcheck: {test: ["CMD", "pg_isready"]}}
  cache: {image: redis}
  web:
    image: nginx
    ports: ["8080:80"]
    depends_on:
      db: {condition: service_healthy}
      cache: {condition: service_started}
"#);
    let pod = &find(&docs, "Deployment", "web")["spec"]["template"]["spec"];
    let inits = pod["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    let init = |n: &str| {
        inits
            .iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(
        init("wait-for-db")["command"][2],
        "until nc -z -w 2 db 5432; do echo waiting for db; sleep 2; done"
    );
    assert!(init("wait-for-cache")["command"][2]
        .as_str()
        .unwrap()
        .contains("nslookup cache"));
    // Every service another one can reach has a Service; a port-less one is headless.
    assert_eq!(
        find(&docs, "Service", "db")["spec"]["ports"],
        json!([{"port": 5432, "targetPort": 5432, "protocol": "TCP"}])
    );
    assert_eq!(find(&docs, "Service", "cache")["spec"]["clusterIP"], "None");
    let web = &find(&docs, "Service", "web")["spec"];
    assert_eq!(web["type"], "NodePort");
    assert_eq!(
        web["ports"][0],
        json!({"port": 8080, "targetPort": 80, "protocol": "TCP"})
    );
    assert!(!r.has(Level::Unmapped), "{:?}", r.items);
    // LoadBalancer by flag.
    let o = Options {
        publish: super::PublishType::LoadBalancer,
        ..Default::default()
    };
    let (docs, _) = k8s_with(
        "services: {web: {image: nginx, ports: [\"80:80\", \"443:443\"]}}",
        &o,
    );
    let web = &find(&docs, "Service", "web")["spec"];
    assert_eq!(web["type"], "LoadBalancer");
    assert_eq!(web["ports"][1]["name"], "tcp-443");
}

#[test]
fn volumes_map_to_pvcs_statefulsets_emptydirs_and_reported_binds() {
    let yaml = r#"
services:
  db:
    image: postgres
    volumes: ["data:/var/lib/postgresql/data", "./init.sql:/docker-entrypoint-initdb.d/init.sql:ro"]
    tmpfs: ["/run:size=64m"]
  cluster:
    image: etcd
    deploy: {replicas: 3}
    volumes: ["state:/state"]
  a: {image: x, volumes: ["shared:/s", {type: tmpfs, target: /t, tmpfs: {size: 1048576}}]}
  b: {image: x, volumes: ["shared:/s:ro"]}
volumes: {data: {}, state: {}, shared: {}}
"#;
    let (docs, r) = k8s(yaml);
    let pvc = find(&docs, "PersistentVolumeClaim", "data");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let db = find(&docs, "Deployment", "db");
    assert_eq!(db["spec"]["strategy"]["type"], "Recreate");
    let c = container(db);
    assert_eq!(
        c["volumeMounts"][0],
        json!({"name": "data", "mountPath": "/var/lib/postgresql/data"})
    );
    assert!(r.names(Level::Unmapped, Some("db"), "volumes.1"));
    let pod = &db["spec"]["template"]["spec"];
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["emptyDir"] == json!({"medium": "Memory", "sizeLimit": "64Mi"})));
    // A replicated service with a named volume: a StatefulSet with a claim per replica.
    let st = find(&docs, "StatefulSet", "cluster");
    assert_eq!(st["spec"]["replicas"], 3);
    assert_eq!(st["spec"]["serviceName"], "cluster");
    assert_eq!(
        st["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );
    assert!(!has(&docs, "PersistentVolumeClaim", "state"));
    assert!(has(&docs, "Service", "cluster"));
    // Shared by two services: ReadWriteMany, with a note.
    assert_eq!(
        find(&docs, "PersistentVolumeClaim", "shared")["spec"]["accessModes"],
        json!(["ReadWriteMany"])
    );
    let b = container(find(&docs, "Deployment", "b"));
    assert_eq!(b["volumeMounts"][0]["readOnly"], true);
    let a = &find(&docs, "Deployment", "a")["spec"]["template"]["spec"];
    assert_eq!(
        a["volumes"][1]["emptyDir"],
        json!({"medium": "Memory", "sizeLimit": "1048576"})
    );
    // With --allow-hostpath the bind mount is a hostPath volume.
    let o = Options {
        allow_hostpath: true,
        ..Default::default()
    };
    let (docs, r) = k8s_with(yaml, &o);
    let pod = &find(&docs, "Deployment", "db")["spec"]["template"]["spec"];
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["hostPath"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/init.sql"))));
    assert!(!r.names(Level::Unmapped, Some("db"), "volumes.1"));
}

#[test]
fn network_policies_follow_internal_and_disjoint_networks() {
    // One network for everyone: no policies (Kubernetes' default already allows it).
    let (docs, _) = k8s("services: {a: {image: x}, b: {image: x}}");
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
    let (docs, _) = k8s(r#"
services:
  proxy: {image: nginx, ports: ["80:80"], networks: [front]}
  app: {image: app, networks: [front, back]}
  db: {image: postgres, expose: ["5432"], networks: [back]}
networks:
  front: {}
  back: {internal: true}
"#);
    let peers = |d: &Value, i: usize| {
        d["spec"]["ingress"][i]["from"][0]["podSelector"]["matchExpressions"][0]["values"].clone()
    };
    let proxy = find(&docs, "NetworkPolicy", "proxy");
    assert_eq!(peers(proxy, 0), json!(["app"]));
    // Its published port is open to everyone.
    assert_eq!(
        proxy["spec"]["ingress"][1],
        json!({"ports": [{"port": 80, "protocol": "TCP"}]})
    );
    assert_eq!(proxy["spec"]["policyTypes"], json!(["Ingress"]));
    let db = find(&docs, "NetworkPolicy", "db");
    assert_eq!(peers(db, 0), json!(["app"]));
    // Only on an internal network: egress to its peers and DNS only.
    assert_eq!(db["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        db["spec"]["egress"][0]["to"][0]["podSelector"]["matchExpressions"][0]["values"],
        json!(["app"])
    );
    assert_eq!(
        db["spec"]["egress"][1]["ports"][0],
        json!({"port": 53, "protocol": "UDP"})
    );
    let app = find(&docs, "NetworkPolicy", "app");
    assert_eq!(peers(app, 0), json!(["db", "proxy"]));
    assert!(app["spec"]["egress"].is_null());
}

#[test]
fn bad_input_is_a_per_field_error() {
    let (_, r) = k8s(r#"
services:
  host: {image: nginx, network_mode: host}
  built: {build: .}
  local: {image: localhost:5000/app}
  mine: {image: myapp, build: .}
  never: {image: nginx, pull_policy: never}
"#);
    for (svc, field) in [
        ("host", "network_mode"),
        ("built", "build"),
        ("local", "image"),
        ("mine", "image"),
        ("never", "pull_policy"),
    ] {
        assert!(
            r.names(Level::Error, Some(svc), field),
            "{svc}.{field}: {:#?}",
            r.items
        );
    }
    assert_eq!(r.count(Level::Error), 5, "{:#?}", r.items);
    // With a registry, built images are renamed into it (and must be pushed).
    let o = Options {
        registry: Some("reg.example.com/team".into()),
        ..Default::default()
    };
    let (docs, r) = k8s_with(
        "services: {built: {build: .}, mine: {image: myapp, build: .}}",
        &o,
    );
    assert!(!r.has(Level::Error));
    assert_eq!(
        container(find(&docs, "Deployment", "built"))["image"],
        "reg.example.com/team/demo-built"
    );
    assert_eq!(
        container(find(&docs, "Deployment", "mine"))["image"],
        "reg.example.com/team/myapp"
    );
    assert!(r.names(Level::Note, Some("mine"), "build"));
}

#[test]
fn names_are_made_rfc1123_with_a_note_and_collisions_fail() {
    assert_eq!(dns_label("My_App"), "my-app");
    assert_eq!(dns_label("1db"), "s-1db");
    assert_eq!(dns_label("a..b__c"), "a-b-c");
    assert_eq!(dns_label(&"x".repeat(80)).len(), 63);
    let (docs, r) = k8s("services: {My_App: {image: x, expose: [\"80\"]}}");
    assert!(has(&docs, "Deployment", "my-app") && has(&docs, "Service", "my-app"));
    assert!(r.names(Level::Note, Some("My_App"), "name"));
    let (_, r) = k8s("services: {a_b: {image: x}, a-b: {image: x}}");
    assert!(r.has(Level::Error));
}

#[test]
fn container_fields_security_and_resources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw.txt"), "s3cret").unwrap();
    std::fs::write(dir.path().join("app.conf"), "key=value\n").unwrap();
    let p = project_in(
        r#"
services:
  app:
    image: app:1
    entrypoint: ["/bin/app"]
    command: ["--greeting", "$$(not expanded)"]
    environment: {A: "1", PRICE: "$$5"}
    user: "1000:2000"
    working_dir: /srv
    read_only: true
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    cpus: 0.5
    mem_limit: 256m
    mem_reservation: 128m
    stop_grace_period: 1m30s
    stop_signal: SIGINT
    container_name: app-1
    init: true
    extra_hosts: ["db.local=10.0.0.5"]
    secrets: [{source: pw, target: db_password, mode: 0440}]
    configs: [{source: conf, target: /etc/app.conf}]
secrets: {pw: {file: ./pw.txt}}
configs: {conf: {file: ./app.conf}}
"#,
        dir.path(),
    );
    let (docs, r) = export(&p, &Options::default());
    assert_eq!(lint(&docs), Vec::<String>::new());
    let d = find(&docs, "Deployment", "app");
    let c = container(d);
    assert_eq!(c["command"], json!(["/bin/app"]));
    // Kubernetes would expand $(...) and read $$ as $: escaped.
    assert_eq!(c["args"], json!(["--greeting", "$$(not expanded)"]));
    assert_eq!(
        c["env"],
        json!([{"name": "A", "value": "1"}, {"name": "PRICE", "value": "$$5"}])
    );
    assert_eq!(c["workingDir"], "/srv");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 1000);
    assert_eq!(sc["runAsGroup"], 2000);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(
        sc["capabilities"],
        json!({"add": ["NET_ADMIN"], "drop": ["ALL"]})
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        c["resources"],
        json!({"limits": {"cpu": "500m", "memory": "268435456"}, "requests": {"memory": "134217728"}})
    );
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 90);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["shareProcessNamespace"], true);
    assert_eq!(
        pod["hostAliases"],
        json!([{"ip": "10.0.0.5", "hostnames": ["db.local"]}])
    );
    // The secret: a Secret with the file's content, mounted with its mode at /run/secrets/.
    let s = find(&docs, "Secret", "pw");
    assert_eq!(s["data"]["pw"], crate::export::base64(b"s3cret"));
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"].is_object())
        .unwrap();
    assert_eq!(
        vol["secret"]["items"][0],
        json!({"key": "pw", "path": "pw", "mode": 0o440})
    );
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/run/secrets/db_password" && m["subPath"] == "pw"));
    assert_eq!(
        find(&docs, "ConfigMap", "conf")["data"]["conf"],
        "key=value\n"
    );
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/etc/app.conf"));
    // No Kubernetes meaning: reported once each, nothing else unmapped.
    let unmapped: Vec<&str> = r
        .items
        .iter()
        .filter(|i| i.level == Level::Unmapped)
        .map(|i| i.field.as_str())
        .collect();
    assert_eq!(
        unmapped,
        ["container_name", "stop_signal"],
        "{:#?}",
        r.items
    );
}

#[test]
fn every_set_field_is_either_mapped_or_reported() {
    // Fields with no Kubernetes meaning, spread over the model: each one is named.
    let (_, r) = k8s(r#"
services:
  x:
    image: x
    ulimits: {nofile: 1024}
    logging: {driver: syslog}
    devices: ["/dev/fuse"]
    cgroup_parent: p
    oom_score_adj: 10
    mac_address: "02:42:ac:11:00:02"
    ports: [{target: 80, published: "8080", host_ip: 127.0.0.1}]
    networks: {default: {aliases: [web]}}
    healthcheck: {test: ["CMD", "true"], start_interval: 1s}
    deploy: {resources: {limits: {pids: 100}}, restart_policy: {condition: any, delay: 5s}}
"#);
    for f in [
        "ulimits",
        "logging",
        "devices",
        "cgroup_parent",
        "oom_score_adj",
        "mac_address",
        "ports.0.host_ip",
        "networks.default.aliases",
        "deploy.resources.limits.pids",
        "deploy.restart_policy.delay",
    ] {
        assert!(
            r.names(Level::Unmapped, Some("x"), f),
            "{f}: {:#?}",
            r.items
        );
    }
}

#[test]
fn namespace_and_version() {
    let o = Options {
        namespace: Some("shop".into()),
        ..Default::default()
    };
    let (docs, _) = k8s_with("services: {a: {image: x, expose: [\"80\"]}}", &o);
    assert_eq!(docs[0]["kind"], "Namespace");
    assert!(docs[1..]
        .iter()
        .all(|d| d["metadata"]["namespace"] == "shop"));
    let o = Options {
        k8s_version: "1.20".into(),
        ..Default::default()
    };
    let (_, r) = k8s_with("services: {a: {image: x}}", &o);
    assert!(r.names(Level::Error, None, "--k8s-version"));
}

/// The example app's export, byte for byte (`BERTH_UPDATE_GOLDEN=1` rewrites it).
#[test]
fn golden_pagecount() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("examples/pagecount/compose.yaml");
    let o = LoadOptions {
        files: vec![file.clone()],
        working_dir: file.parent().unwrap().to_path_buf(),
        interpolate: true,
        resolve_env_files: true,
        ..Default::default()
    };
    let p = load(&o).unwrap();
    let (docs, r) = export(&p, &Options::default());
    let mut text = crate::export::yaml_stream(&docs);
    text.push_str("# report:\n");
    for it in &r.items {
        text.push_str(&format!("# {it}\n"));
    }
    let golden = root.join("src/export/testdata/pagecount.k8s.yaml");
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(text, want);
}
