//! Test kit for the privilege boundary: a real HTTPS JWKS server on 127.0.0.1 (rustls, a CA
//! and server certificate made by the `openssl` CLI for this test run), RSA signing keys made
//! by the test, tokens minted by the test, real users and groups (useradd/groupadd; root).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

use crate::harness::Harness;

/// An RSA signing key made for the tests.
pub struct SigningKey {
    pub kid: String,
    /// PKCS#1 DER private key.
    der: Vec<u8>,
    /// PEM public key (for the HS256-with-the-public-key attack).
    pub public_pem: Vec<u8>,
    n: String,
}

impl SigningKey {
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": self.n, "e": "AQAB"})
    }

    /// A copy of this key published under another kid.
    pub fn with_kid(&self, kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            der: self.der.clone(),
            public_pem: self.public_pem.clone(),
            n: self.n.clone(),
        }
    }
}

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    /// Three independent keys: `keys[0]` is the server's usual key. Their kids are their
    /// RFC 7638 thumbprints, as GitLab's.
    pub keys: Vec<SigningKey>,
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed by the auth tests (apt install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

static PKI: OnceLock<Pki> = OnceLock::new();
static EXTRA_SAN: OnceLock<String> = OnceLock::new();

/// Names the PKI's server certificate holds besides `IP:127.0.0.1` (`subjectAltName` syntax,
/// e.g. `IP:10.213.77.1`), for a fake served beyond loopback (the docker cluster's fake
/// GitLab). Call before anything uses [`pki`]; panics when the PKI is already made.
pub fn pki_extra_san(san: &str) {
    assert!(
        PKI.get().is_none(),
        "pki_extra_san({san:?}) after the PKI was made"
    );
    EXTRA_SAN
        .set(san.to_string())
        .expect("pki_extra_san called twice");
}

/// The test run's PKI, made once (in a directory everyone may read: a non-root service
/// account uses the CA file too).
pub fn pki() -> &'static Pki {
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("jrs-pki")
            .tempdir()
            .unwrap()
            .keep();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = |a: &[&str]| openssl(&dir, a);
        o(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=jacamar-rs test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        o(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", "/CN=127.0.0.1"]);
        let extra = EXTRA_SAN.get().map(|s| format!(",{s}")).unwrap_or_default();
        std::fs::write(
            dir.join("srv.ext"),
            format!("subjectAltName=IP:127.0.0.1{extra}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"),
        )
        .unwrap();
        o(&["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "srv.ext"]);
        let cert_der = o(&["x509", "-in", "srv.pem", "-outform", "DER"]);
        let key_der = o(&["pkcs8", "-topk8", "-nocrypt", "-in", "srv.key", "-outform", "DER"]);
        std::fs::set_permissions(dir.join("ca.pem"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let keys = (0..3)
            .map(|i| {
                let f = format!("sign{i}.pem");
                o(&["genrsa", "-out", &f, "2048"]);
                let der = o(&["rsa", "-in", &f, "-outform", "DER", "-traditional"]);
                let public_pem = o(&["rsa", "-in", &f, "-pubout"]);
                let m = String::from_utf8(o(&["rsa", "-in", &f, "-noout", "-modulus"])).unwrap();
                let hex = m.trim().trim_start_matches("Modulus=");
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|j| u8::from_str_radix(&hex[j..j + 2], 16).unwrap())
                    .collect();
                let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                // Named as GitLab names its keys: the RFC 7638 thumbprint. Another PKI's key
                // (another test run's, another fake GitLab's at the same URL) never reuses
                // this kid, which jacamar-auth's JWKS cache would map to the old key.
                let jwk = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
                let thumb = ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes());
                SigningKey {
                    kid: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(thumb.as_ref()),
                    der,
                    public_pem,
                    n,
                }
            })
            .collect();
        Pki {
            ca_pem: dir.join("ca.pem"),
            dir,
            cert_der,
            key_der,
            keys,
        }
    })
}

/// A self-signed server certificate as `openssl req -x509` makes it by default (so
/// `basicConstraints CA:TRUE`), for `subjectAltName=<san>`, alone in its PEM file `pem`.
pub struct SelfSigned {
    pub pem: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

/// A new [`SelfSigned`] certificate named `name` (unique per test run) in the PKI directory.
pub fn self_signed(name: &str, san: &str) -> SelfSigned {
    let dir = &pki().dir;
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    let ext = format!("subjectAltName={san}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            &ext,
        ],
    );
    let text = String::from_utf8(openssl(dir, &["x509", "-in", &pem, "-noout", "-text"])).unwrap();
    assert!(
        text.contains("CA:TRUE"),
        "openssl req -x509 made no CA certificate: {text}"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(&pem), std::fs::Permissions::from_mode(0o644)).unwrap();
    SelfSigned {
        pem: dir.join(&pem),
        cert_der: openssl(dir, &["x509", "-in", &pem, "-outform", "DER"]),
        key_der: openssl(
            dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER",
            ],
        ),
    }
}

/// A rustls server configuration presenting `cert_der` (DER) with its PKCS#8 key.
fn server_config(cert_der: Vec<u8>, key_der: Vec<u8>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .unwrap();
    Arc::new(cfg)
}

/// The server configuration of the test PKI's `127.0.0.1` certificate (signed by
/// `pki().ca_pem`), for other loopback TLS servers of the tests.
pub fn pki_server_config() -> Arc<rustls::ServerConfig> {
    let pki = pki();
    server_config(pki.cert_der.clone(), pki.key_der.clone())
}

/// A JWKS server: serves `/-/jwks` and `/oauth/discovery/keys`, counts the requests.
pub struct JwksServer {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    pub keys: Arc<Mutex<Vec<Value>>>,
    /// When set, `/-/jwks` answers 404 (the fallback endpoint must be used).
    pub no_dash_jwks: Arc<std::sync::atomic::AtomicBool>,
}

impl JwksServer {
    pub fn start(keys: &[&SigningKey]) -> JwksServer {
        let pki = pki();
        JwksServer::start_with(pki.cert_der.clone(), pki.key_der.clone(), keys)
    }

    /// A server presenting the self-signed certificate `cert`.
    pub fn start_self_signed(cert: &SelfSigned, keys: &[&SigningKey]) -> JwksServer {
        JwksServer::start_with(cert.cert_der.clone(), cert.key_der.clone(), keys)
    }

    fn start_with(cert_der: Vec<u8>, key_der: Vec<u8>, keys: &[&SigningKey]) -> JwksServer {
        let cfg = server_config(cert_der, key_der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let hits = Arc::new(AtomicUsize::new(0));
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()));
        let no_dash = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, k, nd) = (hits.clone(), keys.clone(), no_dash.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (cfg, h, k, nd) = (cfg.clone(), h.clone(), k.clone(), nd.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let mut first = String::new();
                    {
                        let mut reader = BufReader::new(&mut tls);
                        if reader.read_line(&mut first).is_err() {
                            return;
                        }
                        loop {
                            let mut l = String::new();
                            match reader.read_line(&mut l) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if l == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    h.fetch_add(1, Ordering::SeqCst);
                    let served = path == "/oauth/discovery/keys"
                        || (path == "/-/jwks" && !nd.load(Ordering::SeqCst));
                    let (status, body) = if served {
                        ("200 OK", json!({"keys": *k.lock().unwrap()}).to_string())
                    } else {
                        ("404 Not Found", "not found".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes());
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        JwksServer {
            url,
            hits,
            keys,
            no_dash_jwks: no_dash,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a good token for `job_id` by `login` from `server`.
pub fn claims(server: &str, job_id: u64, login: &str) -> Value {
    let t = now();
    json!({
        "iss": server, "aud": server, "sub": "project_path:group/project:ref_type:branch:ref:main",
        "iat": t - 5, "nbf": t - 5, "exp": t + 3600,
        "job_id": job_id.to_string(), "user_login": login, "user_id": "4242",
        "user_email": format!("{login}@example.com"), "project_path": "group/project",
        "project_id": "17", "pipeline_source": "push", "namespace_path": "group",
    })
}

/// An RS256 token signed with `key`.
pub fn mint(key: &SigningKey, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_der(&key.der),
    )
    .unwrap()
}

/// A token of any header, unsigned parts joined as given.
pub fn raw_token(header: &Value, claims: &Value, sig: &str) -> String {
    let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{sig}", b(header), b(claims))
}

/// HS256 signed with the RSA public key as the HMAC secret (the classic confusion attack).
pub fn hs256_with_public_key(key: &SigningKey, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&key.public_pem),
    )
    .unwrap()
}

/// The variable the kit's configurations name in `jwt_env_variable`.
pub const TOKEN_VAR: &str = "CUSTOM_ENV_SITE_ID_TOKEN";

/// A harness whose configuration verifies tokens against `server`, with `downscope`,
/// extra `[general]` lines, extra `[auth]` lines and extra tables, the audit log in a file.
pub fn harness(
    server: &JwksServer,
    downscope: &str,
    general: &str,
    auth: &str,
    tables: &str,
) -> Harness {
    server_harness(server, "jrs-auth", |tmp, data_dir| {
        let data = if general.contains("data_dir") {
            String::new()
        } else {
            format!("data_dir = \"{}\"\n", data_dir.display())
        };
        format!(
            "[general]\nexecutor = \"shell\"\n{data}{}kill_timeout = \"2s\"\n{general}\n\
             [auth]\ndownscope = \"{downscope}\"\n{auth}\n\
             [auth.logging]\nenabled = true\nlocation = \"{}\"\nlevel = \"info\"\n{tables}\n",
            server_lines(server),
            tmp.join("audit.log").display()
        )
    })
}

/// The `[general]` lines that make a configuration trust `server`: `gitlab_server`, the
/// test CA, and the id_token in `SITE_ID_TOKEN` (the kit's [`TOKEN_VAR`]).
pub fn server_lines(server: &JwksServer) -> String {
    format!(
        "gitlab_server = \"{}\"\ntls-ca-file = \"{}\"\njwt_env_variable = \"SITE_ID_TOKEN\"\n",
        server.url,
        pki().ca_pem.display()
    )
}

/// A harness in a world-readable temp dir under /tmp (`prefix`), with a 0755 `data` dir,
/// whose configuration is `config(temp dir, data dir)` and whose runner's side names
/// `server` (CI_SERVER_URL, the job response's clone URL); a JWKS cache of its own.
pub fn server_harness(
    server: &JwksServer,
    prefix: &str,
    config: impl FnOnce(&Path, &Path) -> String,
) -> Harness {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = tmp.path().join("jacamar.toml");
    std::fs::write(&config_path, config(tmp.path(), &data_dir)).unwrap();
    let mut h = Harness::with_config(tmp, data_dir, config_path);
    let cache = h.tmp.path().join("cache");
    h.set("XDG_CACHE_HOME", &cache.display().to_string());
    h.set("CUSTOM_ENV_CI_SERVER_URL", &server.url);
    h.response_server = server.url.clone();
    h
}

/// Give `h` a good token for `login` signed with the server's usual key.
pub fn give_token(h: &mut Harness, server: &JwksServer, login: &str) {
    let t = mint(&pki().keys[0], &claims(&server.url, h.job_id, login));
    h.set(TOKEN_VAR, &t);
}

/// The audit log's JSON lines.
pub fn audit_lines(h: &Harness) -> Vec<Value> {
    std::fs::read_to_string(h.tmp.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

static USERS: Mutex<()> = Mutex::new(());

fn run_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Create group `name` if missing.
pub fn ensure_group(name: &str) -> u32 {
    let _g = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if nix::unistd::Group::from_name(name).unwrap().is_none() {
        for _ in 0..20 {
            if run_ok("groupadd", &[name]) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("groupadd {name} failed (tests need root)"))
        .gid
        .as_raw()
}

/// Create user `name` (with a home, bash) in the supplementary `groups` if missing.
pub fn ensure_user(name: &str, groups: &[&str], shell: &str) -> nix::unistd::User {
    for g in groups {
        ensure_group(g);
    }
    let _g = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let mut args = vec!["-m", "-s", shell];
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["-G", joined.as_str()]);
        }
        args.push(name);
        for _ in 0..20 {
            if run_ok("useradd", &args) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("useradd {name} failed (tests need root)"))
}

/// The caps-only deployment of `h`: a copy of jacamar-auth with `setcap
/// cap_setuid,cap_setgid=ep` and `jacamar` next to it, the runner's side (its temp dir, the
/// configuration, the key cache, the audit log and the runner's job response) owned by the
/// service account `svc`, whose home is the harness's `HOME`. Returns the copy's path.
pub fn caps_service_copy(h: &mut Harness, svc: &nix::unistd::User) -> PathBuf {
    let bin = h.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let auth = bin.join("jacamar-auth");
    std::fs::copy(crate::harness::AUTH, &auth).unwrap();
    std::fs::copy(
        Path::new(crate::harness::AUTH).with_file_name("jacamar"),
        bin.join("jacamar"),
    )
    .unwrap();
    let st = Command::new("setcap")
        .arg("cap_setuid,cap_setgid=ep")
        .arg(&auth)
        .status()
        .unwrap();
    assert!(st.success(), "setcap failed on {}", auth.display());
    for p in [
        h.runner_dir.clone(),
        h.config_path.clone(),
        h.tmp.path().join("cache"),
    ] {
        if !p.exists() {
            std::fs::create_dir(&p).unwrap();
        }
        nix::unistd::chown(&p, Some(svc.uid), Some(svc.gid)).unwrap();
    }
    let audit = h.tmp.path().join("audit.log");
    std::fs::write(&audit, "").unwrap();
    nix::unistd::chown(&audit, Some(svc.uid), Some(svc.gid)).unwrap();
    h.set("HOME", &svc.dir.display().to_string());
    // The runner's job response, as the runner (the service account) writes it.
    h.write_response();
    let response = h.runner_dir.join("response.json");
    nix::unistd::chown(&response, Some(svc.uid), Some(svc.gid)).unwrap();
    auth
}

/// `auth` (a caps-only copy) with `args`, run as the service account `svc` the way the
/// runner runs a hook: `env` only, in the runner's dir, no stdin, its own process group.
pub fn svc_command(
    auth: &std::path::Path,
    svc: &nix::unistd::User,
    runner_dir: &std::path::Path,
    env: &std::collections::BTreeMap<String, String>,
    args: &[&str],
) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(auth);
    c.args(args)
        .env_clear()
        .envs(env)
        .current_dir(runner_dir)
        .stdin(std::process::Stdio::null())
        .uid(svc.uid.as_raw())
        .gid(svc.gid.as_raw())
        .process_group(0);
    c
}
