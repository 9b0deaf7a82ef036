//! The deployment files parse and say what the issue asks: a multi-stage, non-root Dockerfile
//! with the data volume; Kubernetes manifests on current API versions with the token from a
//! Secret and a 10G body size at the ingress; a systemd unit. (Docker and a cluster are not
//! available to the tests; this checks structure, not a deployment.)

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{} has no kind", path.display()));
            out.insert(kind.to_owned(), doc);
        }
    }
    out
}

#[test]
fn kubernetes_manifests_use_current_api_versions() {
    let m = manifests();
    let versions: BTreeMap<&str, &str> = m
        .iter()
        .map(|(k, v)| (k.as_str(), v["apiVersion"].as_str().unwrap()))
        .collect();
    assert_eq!(
        versions,
        BTreeMap::from([
            ("Deployment", "apps/v1"),
            ("Ingress", "networking.k8s.io/v1"),
            ("PersistentVolumeClaim", "v1"),
            ("Secret", "v1"),
            ("Service", "v1"),
        ])
    );
    let ingress = &m["Ingress"];
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"],
        "10G"
    );
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        m["Service"]["metadata"]["name"]
    );

    let deploy = &m["Deployment"];
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let secret = &env["SSB_WRITE_TOKEN"]["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"], m["Secret"]["metadata"]["name"]);
    assert!(
        m["Secret"]["stringData"]
            .get(secret["key"].as_str().unwrap())
            .is_some()
    );
    for var in ["ALLOW_OVERWRITES", "ALLOW_DELETES", "DEBUG", "SSB_INDEX"] {
        assert!(env.contains_key(var), "{var} missing");
    }
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/var/www/simplestreams"
    );
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        m["PersistentVolumeClaim"]["metadata"]["name"]
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The selector matches the pod labels and the Service's selector.
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deploy["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&m["Service"]["spec"]["selector"], labels);
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_the_volume() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    // Logical lines: comments dropped, `\` continuations joined.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(t);
            lines.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "a continuation runs off the end");
    let mut instrs = Vec::new();
    for l in &lines {
        let word = l.split_whitespace().next().unwrap().to_ascii_uppercase();
        assert!(
            KNOWN.contains(&word.as_str()),
            "unknown instruction in {l:?}"
        );
        instrs.push((word, l.clone()));
    }
    assert_eq!(instrs[0].0, "FROM");
    let froms: Vec<_> = instrs.iter().filter(|(w, _)| w == "FROM").collect();
    assert!(froms.len() >= 2, "not multi-stage");
    assert!(
        instrs
            .iter()
            .any(|(w, l)| w == "COPY" && l.contains("--from=build")),
        "the runtime stage does not copy the binary from the build stage"
    );
    let last_from = instrs.iter().rposition(|(w, _)| w == "FROM").unwrap();
    let runtime = &instrs[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(w, _)| w == "USER")
        .expect("no USER in the runtime stage");
    assert!(
        !user.1.contains("root") && !user.1.ends_with(" 0"),
        "{}",
        user.1
    );
    assert!(
        runtime
            .iter()
            .any(|(w, l)| w == "VOLUME" && l.contains("/var/www/simplestreams")),
        "no volume at /var/www/simplestreams"
    );
    for var in [
        "ALLOW_OVERWRITES",
        "ALLOW_DELETES",
        "DEBUG",
        "SSB_WRITE_TOKEN",
        "SSB_CACHE_DIR",
    ] {
        assert!(
            text.contains(var),
            "{var} is not documented in the Dockerfile"
        );
    }
}

#[test]
fn systemd_unit_has_the_usual_sections() {
    let text = std::fs::read_to_string(root().join("deploy/systemd/simplestreams-builder.service"))
        .unwrap();
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        let section = current.clone().expect("a key before any section");
        sections
            .get_mut(&section)
            .unwrap()
            .push((k.to_owned(), v.to_owned()));
    }
    assert_eq!(
        sections.keys().collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    let exec = sections["Service"]
        .iter()
        .find(|(k, _)| k == "ExecStart")
        .expect("no ExecStart");
    assert!(exec.1.contains("simplestreams-builder serve"), "{}", exec.1);
    // DynamicUser gets HOME=/ on a read-only system: the hash caches need a folder of their own.
    assert!(
        sections["Service"]
            .iter()
            .any(|(k, v)| k == "CacheDirectory" && !v.is_empty()),
        "no CacheDirectory for the hash caches"
    );
}
