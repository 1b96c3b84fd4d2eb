//! `echo-server --mode tcp|http|udp [--port 0] [--host 127.0.0.1] [--cpu N]`
//!
//! The pure-Rust ceiling of the benchmark suite (see `server`). Prints `PORT <n>` once
//! listening, then serves until SIGTERM or SIGINT kills it.

use ferroloop_bench::args::Args;
use ferroloop_bench::server::{self, Mode};
use ferroloop_bench::sys;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};

const USAGE: &str = "usage: echo-server --mode tcp|http|udp [--port 0] [--host 127.0.0.1] [--cpu N]";

fn main() {
    if let Err(e) = run() {
        eprintln!("echo-server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse(std::env::args().skip(1), &["mode", "port", "host", "cpu"], &[])?;
    if !args.positional.is_empty() {
        return Err(USAGE.into());
    }
    let mode = match args.get_opt::<String>("mode")?.as_deref() {
        Some("tcp") => Mode::Tcp,
        Some("http") => Mode::Http,
        Some("udp") => Mode::Udp,
        _ => return Err(USAGE.into()),
    };
    let host: IpAddr = args.get("host", IpAddr::from([127, 0, 0, 1]))?;
    let addr = SocketAddr::new(host, args.get("port", 0)?);
    sys::setup(args.get_opt("cpu")?)?;
    server::run(mode, addr, |bound| {
        let mut out = io::stdout().lock();
        _ = writeln!(out, "PORT {}", bound.port()).and_then(|_| out.flush());
    })
    .map_err(|e| format!("{addr}: {e}"))
}
