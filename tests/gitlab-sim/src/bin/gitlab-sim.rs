//! Run the GitLab API simulator on its own, for manual experiments:
//! `gitlab-sim [--listen ADDR] [--latency-ms N] [--runners N] [--expired N]`.
//! It prints the URL, an admin access token and one config.toml block per runner it seeded.

use std::time::Duration;

use gitlab_sim::{NewRunner, Options, Simulator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let latency = Duration::from_millis(
        arg("--latency-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let count: usize = arg("--runners").and_then(|v| v.parse().ok()).unwrap_or(1);
    let expired: usize = arg("--expired").and_then(|v| v.parse().ok()).unwrap_or(0);
    let sim = Simulator::start_on(
        listen.parse().expect("--listen takes HOST:PORT"),
        Options {
            latency,
            ..Options::default()
        },
    )
    .expect("start simulator");
    let url = sim.url();
    let admin = sim.state().add_pat(&["api"], true, None);
    println!("# gitlab-sim at {url}\n# admin token: {admin}\n");
    for i in 0..count {
        let (id, token) = sim.state().add_runner(NewRunner {
            description: format!("runner-{i}"),
            ..NewRunner::default()
        });
        if i < expired {
            sim.state().expire_token(id);
        }
        println!("[[runners]]\n  name = \"runner-{i}\"\n  url = \"{url}\"\n  id = {id}\n  token = \"{token}\"\n  executor = \"shell\"\n");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
