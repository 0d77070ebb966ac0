//! The shipped deployments start. For the container image (`Dockerfile`), the Kubernetes example
//! (`deploy/kubernetes/`) and the systemd unit (`packaging/`), the environment each really gives avemint is read from
//! the shipped files themselves — the image's `ENV`, `WORKDIR` and `VOLUME`; the Deployment's `env`, `envFrom`,
//! volumes (its ConfigMap and Secret written out as files, its init containers run) and mounts; the unit's
//! `Environment=`, `EnvironmentFile=`, `LoadCredential=` and `WorkingDirectory=` with systemd's specifiers — with every
//! path that points into a mount mapped into a temporary directory holding those files. `avemint check-config` must
//! accept each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_yaml::Value;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_avemint");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

type Env = BTreeMap<String, String>;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What the shipped files leave for the operator to fill in, filled as their instructions say: the Secret's
/// `session_keys` placeholder is "replace-with-openssl-rand-base64-32" (`openssl rand -base64 32`).
fn as_the_operator_fills(value: &str) -> String {
    if value == "replace-with-openssl-rand-base64-32" {
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    } else {
        value.to_owned()
    }
}

/// Mount points (in the deployment's file system) and where the test keeps their files.
#[derive(Default)]
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn add(&mut self, at: &str, dir: PathBuf) {
        self.0.push((at.trim_end_matches('/').to_owned(), dir));
        // The longest mount point first: a path belongs to the deepest mount holding it.
        self.0.sort_by_key(|(at, _)| std::cmp::Reverse(at.len()));
    }

    /// `value` with a leading mount point replaced by the test's directory; other values as they are.
    fn map(&self, value: &str) -> String {
        for (at, dir) in &self.0 {
            if value == at {
                return dir.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(&format!("{at}/")) {
                return dir.join(rest).display().to_string();
            }
        }
        value.to_owned()
    }

    fn map_env(&self, env: &Env) -> Env {
        env.iter().map(|(k, v)| (k.clone(), self.map(v))).collect()
    }
}

/// `avemint check-config` with exactly `env` in `dir`; panics with its output unless it accepts the configuration.
fn accepted(what: &str, env: &Env, dir: &Path) -> String {
    let out = Command::new(BIN)
        .arg("check-config")
        .env_clear()
        .envs(env)
        .current_dir(dir)
        .output()
        .expect("avemint runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: avemint check-config refused the configuration (status {:?}):\n{stderr}\nenvironment: {:?}",
        out.status.code(),
        env.keys().collect::<Vec<_>>()
    );
    assert!(stdout.starts_with("avemint: configuration OK"), "{what}: {stdout}");
    assert_eq!(stdout.lines().count(), 1, "{what}: one line:\n{stdout}");
    stdout
}

/// The Dockerfile's final stage, as far as avemint's environment goes.
struct Image {
    env: Env,
    workdir: String,
    volumes: Vec<String>,
}

/// Reads `ENV`, `WORKDIR` and `VOLUME` of the Dockerfile's last stage.
fn image() -> Image {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let last_stage = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    let mut image = Image {
        env: Env::new(),
        workdir: "/".into(),
        volumes: Vec::new(),
    };
    for instruction in &instructions[last_stage..] {
        let (name, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        match name {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {pair}: not NAME=value"));
                    image.env.insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
            }
            "WORKDIR" => image.workdir = rest.trim().to_owned(),
            "VOLUME" => {
                let list: Vec<String> = serde_json::from_str(rest.trim()).expect("VOLUME [\"…\"]");
                image.volumes.extend(list);
            }
            _ => {}
        }
    }
    image
}

#[test]
fn the_container_image_takes_the_database_url_as_a_value_a_file_or_not_at_all() {
    let image = image();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut mounts = Mounts::default();
    for volume in &image.volumes {
        let dir = tmp.path().join("volumes").join(volume.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("volume");
        mounts.add(volume, dir);
    }
    // With no database URL the store is SQLite in the working directory, which must be on the volume: the root
    // file system is read-only.
    assert!(
        image
            .volumes
            .iter()
            .any(|v| image.workdir == *v || image.workdir.starts_with(&format!("{v}/"))),
        "the image's WORKDIR {} is on none of its volumes {:?}",
        image.workdir,
        image.volumes
    );
    let workdir = PathBuf::from(mounts.map(&image.workdir));
    std::fs::create_dir_all(&workdir).expect("workdir");
    // What `docker run` adds (the Dockerfile's header and docs/operations.md, Container image): the client, the secrets as
    // mounted files, the public URL.
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets");
    mounts.add("/run/secrets", secrets.clone());
    std::fs::write(secrets.join("client_secret"), "the-client-secret").expect("write");
    std::fs::write(
        secrets.join("session_keys"),
        as_the_operator_fills("replace-with-openssl-rand-base64-32"),
    )
    .expect("write");
    std::fs::write(
        secrets.join("database_url"),
        "postgres://avemint:pw@db.internal:5432/avemint",
    )
    .expect("write");
    let mut run = image.env.clone();
    for (k, v) in [
        ("AVE_CLIENT_ID", "app_0123456789abcdef0123456789abcdef"),
        ("AVE_CLIENT_SECRET_FILE", "/run/secrets/client_secret"),
        ("AVEMINT_SESSION_KEYS_FILE", "/run/secrets/session_keys"),
        ("AVEMINT_PUBLIC_URL", "https://app.example.com"),
    ] {
        run.insert(k.into(), v.into());
    }
    let none = accepted("image, no database URL", &mounts.map_env(&run), &workdir);
    assert!(none.contains("store sqlite://avemint.db,"), "{none}");
    for (name, value, store) in [
        (
            "AVEMINT_DATABASE_URL",
            "postgres://avemint:pw@db.internal:5432/avemint",
            "postgres://db.internal:5432/avemint",
        ),
        (
            "AVEMINT_DATABASE_URL_FILE",
            "/run/secrets/database_url",
            "postgres://db.internal:5432/avemint",
        ),
    ] {
        let mut env = run.clone();
        env.insert(name.into(), value.into());
        let out = accepted(&format!("image with {name}"), &mounts.map_env(&env), &workdir);
        assert!(out.contains(&format!("store {store},")), "{out}");
    }
}

/// Every shipped Kubernetes object, by kind and name.
fn kubernetes_objects() -> BTreeMap<(String, String), Value> {
    let mut objects = BTreeMap::new();
    let dir = Path::new(ROOT).join("deploy/kubernetes");
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let object: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = object["kind"].as_str().expect("kind").to_owned();
            let name = object["metadata"]["name"].as_str().expect("name").to_owned();
            objects.insert((kind, name), object);
        }
    }
    objects
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// A ConfigMap's `data` or a Secret's `stringData`/`data` (decoded), as the files a volume of it holds.
fn object_files(object: &Value) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    if let Some(data) = object["data"].as_mapping() {
        for (k, v) in data {
            let value = if object["kind"] == "Secret" {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(str_of(v))
                    .expect("Secret data is base64");
                String::from_utf8(bytes).expect("utf8")
            } else {
                str_of(v).to_owned()
            };
            files.insert(str_of(k).to_owned(), value);
        }
    }
    if let Some(data) = object["stringData"].as_mapping() {
        for (k, v) in data {
            files.insert(str_of(k).to_owned(), as_the_operator_fills(str_of(v)));
        }
    }
    files
}

/// `(kind, name)` of the object a `configMapRef`/`secretRef`/`configMapKeyRef`/`secretKeyRef`-style reference names.
fn referenced(kind: &str, reference: &Value) -> (String, String) {
    (kind.to_owned(), str_of(&reference["name"]).to_owned())
}

#[test]
fn the_kubernetes_example_starts_with_its_configmap_secret_and_signing_keys() {
    let objects = kubernetes_objects();
    let deployment = &objects[&("Deployment".to_owned(), "avemint".to_owned())];
    let pod = &deployment["spec"]["template"]["spec"];
    let tmp = tempfile::tempdir().expect("tempdir");
    let object = |key: (String, String)| {
        objects
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("{key:?} is not among the shipped objects"))
    };

    // The pod's volumes as directories.
    let mut volumes = BTreeMap::new();
    for volume in pod["volumes"].as_sequence().expect("volumes") {
        let name = str_of(&volume["name"]);
        let dir = tmp.path().join("volumes").join(name);
        std::fs::create_dir_all(&dir).expect("volume dir");
        let files = if let Some(cm) = volume.get("configMap") {
            object_files(&object(referenced("ConfigMap", cm)))
        } else if let Some(secret) = volume.get("secret") {
            let secret_name = str_of(&secret["secretName"]);
            match objects.get(&("Secret".to_owned(), secret_name.to_owned())) {
                Some(s) => object_files(s),
                // Not shipped: the signing keys, made as secret.yaml says (`avemint keys generate`, twice).
                None => {
                    assert_eq!(secret_name, "avemint-signing-keys", "an unshipped Secret");
                    support::generate_key(&dir);
                    support::generate_key(&dir);
                    BTreeMap::new()
                }
            }
        } else {
            assert!(volume.get("emptyDir").is_some(), "unknown volume kind: {volume:?}");
            BTreeMap::new()
        };
        for (file, content) in files {
            std::fs::write(dir.join(file), content).expect("write");
        }
        volumes.insert(name.to_owned(), dir);
    }
    let mounts_of = |container: &Value| {
        let mut mounts = Mounts::default();
        for m in container["volumeMounts"].as_sequence().into_iter().flatten() {
            mounts.add(str_of(&m["mountPath"]), volumes[str_of(&m["name"])].clone());
        }
        mounts
    };

    // The init containers, run as written with their mount points mapped.
    for init in pod["initContainers"].as_sequence().into_iter().flatten() {
        let command: Vec<&str> = init["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(command[..2], ["sh", "-c"], "an init container runs a shell script");
        let mounts = mounts_of(init);
        let script = command[2]
            .split(' ')
            .map(|word| mounts.map(word))
            .collect::<Vec<_>>()
            .join(" ");
        let status = Command::new("sh").args(["-c", &script]).status().expect("sh");
        assert!(status.success(), "init container {:?}: {script}", init["name"]);
    }

    // avemint's container: the image's ENV, then its own env and envFrom (Kubernetes: the container's win).
    let container = pod["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "avemint")
        .expect("the avemint container");
    assert_eq!(
        container["args"],
        serde_yaml::from_str::<Value>("[serve]").expect("yaml"),
        "the container runs `serve`, which check-config stands in for"
    );
    let mut env = image().env;
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        let files = match (from.get("configMapRef"), from.get("secretRef")) {
            (Some(r), _) => object_files(&object(referenced("ConfigMap", r))),
            (_, Some(r)) => object_files(&object(referenced("Secret", r))),
            _ => panic!("unknown envFrom: {from:?}"),
        };
        env.extend(files);
    }
    for var in container["env"].as_sequence().expect("env") {
        let name = str_of(&var["name"]).to_owned();
        let value = match (var.get("value"), var.get("valueFrom")) {
            (Some(v), _) => str_of(v).to_owned(),
            (_, Some(from)) => {
                let (kind, r) = match (from.get("configMapKeyRef"), from.get("secretKeyRef")) {
                    (Some(r), _) => ("ConfigMap", r),
                    (_, Some(r)) => ("Secret", r),
                    _ => panic!("unsupported valueFrom: {from:?}"),
                };
                object_files(&object(referenced(kind, r)))[str_of(&r["key"])].clone()
            }
            _ => panic!("{name}: neither value nor valueFrom"),
        };
        env.insert(name, value);
    }
    let mounts = mounts_of(container);
    // The working directory is the image's (on the read-only root file system here).
    let workdir = tmp.path().join("rootfs");
    std::fs::create_dir_all(&workdir).expect("workdir");
    let out = accepted("Kubernetes", &mounts.map_env(&env), &workdir);
    for part in [
        "store postgres://postgres:5432/avemint,",
        "/volumes/secrets/session_keys, reloaded on change)",
        "client secret from AVE_CLIENT_SECRET_FILE",
        ", signing)",
        "ops listen 0.0.0.0:9091",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }
}

/// `(section, key, value)` of a systemd unit file, in order.
fn unit_lines(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            lines.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    lines
}

/// `NAME=value` assignments of an `Environment=` line (double-quoted ones may hold spaces).
fn assignments(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (word, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            (&quoted[..end], &quoted[end + 1..])
        } else {
            rest.split_once(' ').unwrap_or((rest, ""))
        };
        let (k, v) = word.split_once('=').expect("NAME=value");
        out.push((k.to_owned(), v.to_owned()));
        rest = tail.trim_start();
    }
    out
}

/// The environment and working directory the systemd unit (with `drop_ins`) gives avemint, with `%S` (the state
/// directory root) and `%d` (`$CREDENTIALS_DIRECTORY`) under `tmp`, each `LoadCredential=` made as the install
/// steps say, and the `EnvironmentFile=` read from `packaging/` (the file the unit's header says to install there).
fn systemd(tmp: &Path, drop_ins: &[&str]) -> (Env, PathBuf) {
    let state = tmp.join("state");
    let credentials = tmp.join("credentials");
    std::fs::create_dir_all(&credentials).expect("credentials");
    let specifiers = |v: &str| {
        v.replace("%S", &state.display().to_string())
            .replace("%d", &credentials.display().to_string())
            .replace("%%", "%")
    };
    let mut env = Env::new();
    let mut env_files = Vec::new();
    let mut workdir = None;
    let mut files = vec![read("packaging/avemint.service")];
    files.extend(drop_ins.iter().map(|d| read(d)));
    for text in &files {
        for (section, key, value) in unit_lines(text) {
            if section != "Service" {
                continue;
            }
            match key.as_str() {
                "Environment" => {
                    for (k, v) in assignments(&value) {
                        env.insert(k, specifiers(&v));
                    }
                }
                "EnvironmentFile" => env_files.push(value.trim_start_matches('-').to_owned()),
                "WorkingDirectory" => workdir = Some(PathBuf::from(specifiers(&value))),
                "StateDirectory" => std::fs::create_dir_all(state.join(&value)).expect("state directory"),
                "LoadCredential" => {
                    let (name, _) = value.split_once(':').expect("name:path");
                    let content = match name {
                        "client_secret" => "the-client-secret".to_owned(),
                        "session_keys" => as_the_operator_fills("replace-with-openssl-rand-base64-32"),
                        "database_url" => "postgres://avemint:pw@db.internal:5432/avemint".to_owned(),
                        other => panic!("no install step makes the credential {other}"),
                    };
                    std::fs::write(credentials.join(name), content).expect("credential");
                }
                _ => {}
            }
        }
    }
    // systemd: what the environment files set overrides `Environment=`.
    for installed in env_files {
        let name = Path::new(&installed)
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        for line in read(&format!("packaging/{name}")).lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{name}: {line}"));
            env.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        }
    }
    (env, workdir.expect("WorkingDirectory="))
}

#[test]
fn the_systemd_unit_starts_on_sqlite_and_with_the_postgresql_drop_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (env, workdir) = systemd(tmp.path(), &[]);
    let out = accepted("systemd", &env, &workdir);
    assert!(out.contains("store sqlite://avemint.db,"), "{out}");
    assert!(
        workdir.ends_with("state/avemint"),
        "the SQLite file is in the state directory: {}",
        workdir.display()
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let (env, workdir) = systemd(tmp.path(), &["packaging/avemint.service.d/postgresql.conf"]);
    let out = accepted("systemd with the PostgreSQL drop-in", &env, &workdir);
    assert!(out.contains("store postgres://db.internal:5432/avemint,"), "{out}");
}
