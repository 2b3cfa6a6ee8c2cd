//! Cost of authorization on the `config` stage, through the real binaries.
//!
//! * median wall time of `jacamar-auth config` with `downscope = "none"` and no token
//!   (no authorization) vs a verified id_token with a warm JWKS cache: the difference is
//!   what authorization adds per stage;
//! * with a cold cache, JWKS requests counted at the test server over a whole job
//!   (config, prepare, 3 run stages, cleanup): one per TTL, never one per stage; after the
//!   cache is aged past the TTL, exactly one more.
//!
//! Run: `cargo bench --bench auth` (needs the `openssl` CLI for the test PKI).

#[path = "../tests/integration/auth_kit.rs"]
mod auth_kit;
#[path = "../tests/integration/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use auth_kit::{give_token, harness as auth_harness, pki, JwksServer};
use harness::Harness;

const N: usize = 41;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_config(h: &mut Harness) -> Duration {
    let t = Instant::now();
    let out = h.config();
    let d = t.elapsed();
    assert!(out.status.success(), "{}", harness::show(&out));
    d
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench targets without
    // it, and must not spend its time (nor make a test PKI) here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("auth bench: skipped (run it with `cargo bench --bench auth`)");
        return;
    }
    let server = JwksServer::start(&[&pki().keys[0]]);

    let mut plain = Harness::new("");
    let mut warm = auth_harness(&server, "none", "", "", "");
    give_token(&mut warm, &server, "alice");
    time_config(&mut warm); // warms the cache
    time_config(&mut plain);

    // Interleave the two so machine noise hits both alike.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..N {
        a.push(time_config(&mut plain));
        b.push(time_config(&mut warm));
    }
    let (ma, mb) = (median(a), median(b));
    println!("config stage, downscope none, no token:       median {ma:?} over {N} runs");
    println!("config stage, verified id_token, warm cache:  median {mb:?} over {N} runs");
    println!(
        "added cost of authorization (median difference): {:.2} ms (target <= 5 ms)",
        (mb.as_secs_f64() - ma.as_secs_f64()) * 1e3
    );

    // Cold cache: one fetch for a whole job.
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = auth_harness(&server, "none", "", "", "");
    give_token(&mut h, &server, "alice");
    h.config_json();
    assert!(h.prepare().status.success());
    for stage in ["get_sources", "build_script", "after_script"] {
        assert!(h.run(stage, "true\n").status.success());
    }
    assert!(h.cleanup().status.success());
    println!(
        "cold cache, one job (6 stages): {} JWKS request(s) at the server",
        server.hits()
    );
    // Age the cache past the TTL: the next stage fetches once, the one after does not.
    let cache_dir = h.tmp.path().join("cache/jacamar-rs");
    for e in std::fs::read_dir(&cache_dir).unwrap().flatten() {
        let p = e.path();
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let t = v["fetched_at"].as_u64().unwrap();
        v["fetched_at"] = (t - jacamar::authz::jwks::TTL.as_secs() - 1).into();
        std::fs::write(&p, v.to_string()).unwrap();
    }
    let before = server.hits();
    h.config_json();
    h.config_json();
    println!(
        "after the TTL ({}s) expired: {} request(s) for 2 more stages",
        jacamar::authz::jwks::TTL.as_secs(),
        server.hits() - before
    );
}
