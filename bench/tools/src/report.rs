//! The one JSON line `loadgen` prints on success (written by hand: a fixed, flat set of
//! numeric keys does not justify a serialisation dependency). Keys are the contract
//! with bench/run.py: they may be added to, never renamed.

use crate::window::Measurement;
use std::fmt::Write;

pub struct Report<'a> {
    pub mode: &'a str,
    pub conns: usize,
    pub size: usize,
    pub m: Measurement,
    /// Replies that did not answer the outstanding request (udp: late duplicates).
    pub errors: u64,
    /// udp only: datagrams not answered within the resend timeout.
    pub lost: Option<u64>,
}

/// JSON has no NaN or infinity; a quantity that cannot be computed is null.
fn num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "null".into()
    }
}

impl Report<'_> {
    pub fn to_json(&self) -> String {
        let m = &self.m;
        let mut s = format!(
            "{{\"mode\":\"{}\",\"conns\":{},\"size\":{},\"requests\":{},\"seconds\":{},\"rps\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"errors\":{}",
            self.mode,
            self.conns,
            self.size,
            m.requests,
            num(m.seconds, 6),
            num(m.requests as f64 / m.seconds, 1),
            num(m.latency.p50_us, 1),
            num(m.latency.p99_us, 1),
            num(m.latency.max_us, 1),
            self.errors
        );
        if let Some(server) = m.cpu.server_s {
            let per_req = server * 1e6 / m.requests as f64;
            _ = write!(s, ",\"server_cpu_s\":{},\"server_cpu_us_per_req\":{}", num(server, 6), num(per_req, 3));
        }
        _ = write!(
            s,
            ",\"client_cpu_s\":{},\"machine_busy_s\":{},\"others_cpu_s\":{}",
            num(m.cpu.client_s, 6),
            num(m.cpu.machine_busy_s, 3),
            num(m.cpu.others_s, 3)
        );
        if let Some(lost) = self.lost {
            _ = write!(s, ",\"lost\":{lost}");
        }
        s.push('}');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procstat::CpuUsage;
    use crate::stats::Summary;

    #[test]
    fn json_line_has_the_contract_keys() {
        let m = Measurement {
            requests: 1000,
            seconds: 2.0,
            latency: Summary { p50_us: 10.0, p99_us: 20.5, max_us: 99.0 },
            cpu: CpuUsage { server_s: Some(0.01), client_s: 0.02, machine_busy_s: 0.04, others_s: 0.01 },
        };
        let r = Report { mode: "udp", conns: 1, size: 8, m, errors: 0, lost: Some(3) };
        assert_eq!(
            r.to_json(),
            "{\"mode\":\"udp\",\"conns\":1,\"size\":8,\"requests\":1000,\"seconds\":2.000000,\"rps\":500.0,\
             \"p50_us\":10.0,\"p99_us\":20.5,\"max_us\":99.0,\"errors\":0,\"server_cpu_s\":0.010000,\
             \"server_cpu_us_per_req\":10.000,\"client_cpu_s\":0.020000,\"machine_busy_s\":0.040,\"others_cpu_s\":0.010,\"lost\":3}"
        );
        assert_eq!(num(f64::NAN, 1), "null");
    }
}
