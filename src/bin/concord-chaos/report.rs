//! The run's report: one HTML page with the verdict, a latency-over-time plot (each operation a
//! point, coloured by outcome, fault windows shaded, as Jepsen's latency-raw plot) and throughput over
//! time. Plain SVG, so it opens anywhere without scripts.

use std::fmt::Write;

use crate::history::{Point, Status};
use crate::nemesis::Fault;

const W: f64 = 1000.0;
const H: f64 = 320.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 30.0;

fn colour(s: Status) -> &'static str {
    match s {
        Status::Ok => "#1b9e77",
        Status::Fail => "#d95f02",
        Status::Info => "#7570b3",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn html(
    summary: &str,
    verdict: &serde_json::Value,
    points: &[Point],
    faults: &[Fault],
    seconds: f64,
) -> String {
    let mut out = String::new();
    let verdict = serde_json::to_string_pretty(verdict).unwrap_or_default();
    let _ = write!(
        out,
        "<!doctype html><meta charset=utf-8><title>concord-chaos</title>\
         <style>body{{font:14px sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em;overflow:auto;max-height:30em}}\
         .k span{{margin-right:1.5em}}</style>\
         <h1>concord-chaos</h1><p><code>{}</code></p>\
         <p class=k><span style=color:{}>● ok</span><span style=color:{}>● fail</span><span style=color:{}>● info (unknown)</span>\
         <span style=color:#999>▮ fault</span></p>",
        escape(summary),
        colour(Status::Ok),
        colour(Status::Fail),
        colour(Status::Info)
    );
    out.push_str("<h2>Latency</h2>");
    out.push_str(&latency(points, faults, seconds));
    out.push_str("<h2>Throughput (operations completed per second)</h2>");
    out.push_str(&throughput(points, faults, seconds));
    out.push_str("<h2>Faults</h2><ul>");
    for f in faults {
        let _ = write!(out, "<li>{:.1}–{:.1} s: {}</li>", secs(f.start), secs(f.end), escape(&f.detail));
    }
    let _ = write!(out, "</ul><h2>Verdict</h2><pre>{}</pre>", escape(&verdict));
    out
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The frame shared by both plots: axes, the fault windows, the x ticks.
fn frame(out: &mut String, faults: &[Fault], seconds: f64, y_label: &str) -> impl Fn(f64) -> f64 {
    let x = move |s: f64| LEFT + (s / seconds.max(1.0)) * (W - LEFT - 10.0);
    let _ = write!(out, "<svg width={W} height={H} xmlns='http://www.w3.org/2000/svg' font-size=11>");
    for f in faults {
        let (a, b) = (x(secs(f.start)), x(secs(f.end)));
        let _ = write!(
            out,
            "<rect x={a:.1} y=0 width={:.1} height={:.1} fill=#ddd><title>{}</title></rect>",
            (b - a).max(1.0),
            H - BOTTOM,
            escape(&f.detail)
        );
    }
    let _ = write!(out, "<line x1={LEFT} y1=0 x2={LEFT} y2={y} stroke=black />", y = H - BOTTOM);
    let _ = write!(out, "<line x1={LEFT} y1={y} x2={W} y2={y} stroke=black />", y = H - BOTTOM);
    let step = (seconds / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= seconds {
        let _ = write!(out, "<text x={:.1} y={:.1} text-anchor=middle>{t}s</text>", x(t), H - BOTTOM + 15.0);
        t += step;
    }
    let _ =
        write!(out, "<text x=12 y={:.1} transform='rotate(-90 12 {:.1})'>{y_label}</text>", H / 2.0, H / 2.0);
    x
}

fn latency(points: &[Point], faults: &[Fault], seconds: f64) -> String {
    let mut out = String::new();
    let x = frame(&mut out, faults, seconds, "latency (ms, log)");
    // Log scale from 0.1 ms to the slowest operation.
    let max_ms = points.iter().map(|p| (p.complete - p.invoke) as f64 / 1e3).fold(10.0, f64::max);
    let (lo, hi) = (0.1f64.log10(), max_ms.log10());
    let y = |ms: f64| (H - BOTTOM) * (1.0 - (ms.max(0.1).log10() - lo) / (hi - lo));
    let mut tick = 0.1;
    while tick <= max_ms {
        let _ = write!(out, "<text x={:.1} y={:.1} text-anchor=end>{tick}</text>", LEFT - 4.0, y(tick) + 4.0);
        tick *= 10.0;
    }
    for p in points {
        let ms = (p.complete - p.invoke) as f64 / 1e3;
        let _ = write!(
            out,
            "<circle cx={:.1} cy={:.1} r=1.6 fill={} fill-opacity=.6><title>{} {:?} {ms:.1} ms</title></circle>",
            x(secs(p.invoke)),
            y(ms),
            colour(p.status),
            p.f,
            p.status
        );
    }
    out.push_str("</svg>");
    out
}

fn throughput(points: &[Point], faults: &[Fault], seconds: f64) -> String {
    let mut out = String::new();
    let x = frame(&mut out, faults, seconds, "ops/s");
    let buckets = seconds.ceil().max(1.0) as usize + 1;
    let mut counts = [vec![0u32; buckets], vec![0u32; buckets], vec![0u32; buckets]];
    for p in points {
        let b = (secs(p.complete) as usize).min(buckets - 1);
        counts[p.status as usize][b] += 1;
    }
    let max = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let y = |n: f64| (H - BOTTOM) * (1.0 - n / (max * 1.1));
    let _ = write!(out, "<text x={:.1} y={:.1} text-anchor=end>{max}</text>", LEFT - 4.0, y(max) + 4.0);
    for (status, series) in [Status::Ok, Status::Fail, Status::Info].into_iter().zip(&counts) {
        let path: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(s, n)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*n as f64)))
            .collect();
        let _ = write!(out, "<polyline fill=none stroke={} points='{}' />", colour(status), path.join(" "));
    }
    out.push_str("</svg>");
    out
}
