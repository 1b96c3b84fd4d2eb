//! `loadgen <tcp|http|udp|idle> --addr HOST:PORT [--conns N] [--size BYTES]
//! [--duration SECS] [--warmup SECS] [--requests N] [--cpu N] [--server-pid PID] [--ping]`
//!
//! The benchmark suite's client, identical for every loop measured. Prints one JSON
//! line on success (see `report`); a misbehaving server (wrong bytes, refused or reset
//! connections, no answer) ends it with a message on stderr and exit status 1. `idle`
//! opens the connections, prints `{"mode":"idle","connected":N}` and holds them until
//! its stdin reaches EOF.

use ferroloop_bench::args::Args;
use ferroloop_bench::connect::connect_all;
use ferroloop_bench::{stream_client, sys, udp_client, Config};
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: loadgen <tcp|http|udp|idle> --addr HOST:PORT [--conns N] [--size BYTES] \
                     [--duration SECS] [--warmup SECS] [--requests N] [--cpu N] [--server-pid PID] [--ping]";

fn main() {
    if let Err(e) = run() {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn seconds(args: &Args, name: &str, default: f64) -> Result<Duration, String> {
    let s: f64 = args.get(name, default)?;
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

fn run() -> Result<(), String> {
    let args = Args::parse(
        std::env::args().skip(1),
        &["addr", "conns", "size", "duration", "warmup", "requests", "cpu", "server-pid"],
        &["ping"],
    )?;
    let [mode] = args.positional.as_slice() else { return Err(USAGE.into()) };
    let addr: String = args.get_opt("addr")?.ok_or(USAGE)?;
    let addr: SocketAddr = addr.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or(format!("cannot resolve --addr {addr}"))?;
    let requests: Option<usize> = args.get_opt("requests")?;
    let cfg = Config {
        addr,
        conns: args.get("conns", 1)?,
        size: args.get("size", 1024)?,
        // A fixed request count is measured from the first request: a timed warm-up
        // would make the server's total work vary from run to run.
        warmup: if requests.is_some() { Duration::ZERO } else { seconds(&args, "warmup", 1.0)? },
        duration: seconds(&args, "duration", 5.0)?,
        requests,
        server_pid: args.get_opt("server-pid")?,
    };
    if cfg.conns == 0 || cfg.size == 0 || cfg.duration.is_zero() || cfg.requests == Some(0) {
        return Err("--conns, --size, --duration and --requests must be positive".into());
    }
    // udp too: a resent datagram (lost on loopback only under memory pressure) is
    // the only work beyond the N requests there.
    if cfg.requests.is_some() && !matches!(mode.as_str(), "tcp" | "http" | "udp") {
        return Err("--requests applies to the tcp, http and udp modes only".into());
    }
    sys::setup(args.get_opt("cpu")?)?;
    let report = match mode.as_str() {
        "tcp" => stream_client::run(&cfg, false)?,
        "http" => stream_client::run(&cfg, true)?,
        "udp" => udp_client::run(&cfg)?,
        "idle" => return idle(&cfg, args.switch("ping")),
        _ => return Err(USAGE.into()),
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", report.to_json()).and_then(|_| out.flush()).map_err(|e| e.to_string())
}

/// Holds `--conns` open connections until stdin reaches EOF (the driver measures the
/// server's memory meanwhile, then closes our stdin).
fn idle(cfg: &Config, ping: bool) -> Result<(), String> {
    let mut poll = mio::Poll::new().map_err(|e| e.to_string())?;
    let socks = connect_all(&mut poll, cfg.addr, cfg.conns, cfg.deadline(Instant::now()), ping)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{{\"mode\":\"idle\",\"connected\":{}}}", socks.len()).and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    io::copy(&mut io::stdin().lock(), &mut io::sink()).map_err(|e| format!("reading stdin: {e}"))?;
    drop(socks);
    Ok(())
}
