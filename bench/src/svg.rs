//! The figure report (`report.svg`, hand-written SVG): the one-way latency
//! CDF of each (load, target) with the quantile axis in "nines", and the
//! forwarded rate against the offered forwarding rate per target.

use std::fmt::Write as _;

use crate::latency::Latency;
use crate::report::Summary;

const W: f64 = 560.0;
const H: f64 = 380.0;
const PAD_L: f64 = 70.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 40.0;
const PAD_B: f64 = 50.0;
const COLORS: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22", "#000000", "#aec7e8",
];
/// Quantile axis top: 99.999%.
const MAX_NINES: f64 = 5.0;

/// One CDF line: label and histogram.
pub struct CdfLine<'a> {
    /// Legend text.
    pub label: String,
    /// Merged histogram of the runs.
    pub latency: &'a Latency,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(1e-9).log10()).min(MAX_NINES)
}

/// The whole figure.
pub fn render(title: &str, cdf: &[CdfLine<'_>], summaries: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        2.0 * W,
        H + 30.0
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">{}</text>"#,
        esc(title)
    );
    s.push_str(&cdf_panel(cdf, 0.0, 30.0));
    s.push_str(&throughput_panel(summaries, W, 30.0));
    s.push_str("</svg>\n");
    s
}

fn frame(s: &mut String, ox: f64, oy: f64, title: &str, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        ox + PAD_L,
        oy + PAD_T,
        W - PAD_L - PAD_R,
        H - PAD_T - PAD_B
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="13">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        ox + PAD_L,
        oy + PAD_T - 20.0,
        esc(title),
        ox + PAD_L + (W - PAD_L - PAD_R) / 2.0,
        oy + H - 12.0,
        esc(xlabel),
        ox + 14.0,
        oy + PAD_T + (H - PAD_T - PAD_B) / 2.0,
        esc(ylabel)
    );
}

fn cdf_panel(lines: &[CdfLine<'_>], ox: f64, oy: f64) -> String {
    let mut s = String::new();
    frame(
        &mut s,
        ox,
        oy,
        "One-way latency CDF",
        "latency (us, log scale)",
        "quantile",
    );
    let pts: Vec<Vec<(u64, f64)>> = lines.iter().map(|l| l.latency.cdf()).collect();
    let lo = pts
        .iter()
        .flatten()
        .map(|p| p.0.max(100))
        .min()
        .unwrap_or(1000);
    let hi = pts.iter().flatten().map(|p| p.0).max().unwrap_or(1_000_000);
    let (lo_d, hi_d) = (
        (lo as f64 / 1000.0).log10().floor(),
        (hi.max(lo + 1) as f64 / 1000.0).log10().ceil(),
    );
    let hi_d = if hi_d <= lo_d { lo_d + 1.0 } else { hi_d };
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let xs = |ns: u64| -> f64 {
        let d = (ns.max(1) as f64 / 1000.0).log10().clamp(lo_d, hi_d);
        ox + PAD_L + (d - lo_d) / (hi_d - lo_d) * pw
    };
    let ys = |q: f64| -> f64 { oy + PAD_T + ph - nines(q) / MAX_NINES * ph };
    let mut d = lo_d;
    while d <= hi_d {
        let x = ox + PAD_L + (d - lo_d) / (hi_d - lo_d) * pw;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            oy + PAD_T,
            oy + PAD_T + ph,
            oy + PAD_T + ph + 14.0,
            10f64.powf(d)
        );
        d += 1.0;
    }
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (0.99999, "99.999%"),
    ] {
        let y = ys(q);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            ox + PAD_L,
            ox + PAD_L + pw,
            ox + PAD_L - 4.0,
            y + 4.0
        );
    }
    for (i, (l, p)) in lines.iter().zip(&pts).enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|&(ns, q)| format!("{:.1},{:.1}", xs(ns), ys(q)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{c}">{}</text>"#,
            path.join(" "),
            ox + PAD_L + 6.0,
            oy + PAD_T + 14.0 + 13.0 * i as f64,
            esc(&l.label)
        );
    }
    s
}

fn throughput_panel(summaries: &[Summary], ox: f64, oy: f64) -> String {
    let mut s = String::new();
    frame(
        &mut s,
        ox,
        oy,
        "Forwarded vs offered (medians)",
        "offered copies/s",
        "forwarded copies/s",
    );
    let max = summaries
        .iter()
        .flat_map(|x| [x.offered_forward_rate, x.forwarded_rate.max])
        .fold(1.0f64, f64::max)
        * 1.05;
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let xs = |v: f64| ox + PAD_L + v / max * pw;
    let ys = |v: f64| oy + PAD_T + ph - v / max * ph;
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">{:.0}k</text><text x="{}" y="{}" text-anchor="end">{:.0}k</text>"##,
            xs(v),
            oy + PAD_T + ph + 14.0,
            v / 1000.0,
            ox + PAD_L - 4.0,
            ys(v) + 4.0,
            v / 1000.0
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#bbb" stroke-dasharray="4 3"/>"##,
        xs(0.0),
        ys(0.0),
        xs(max),
        ys(max)
    );
    let mut targets: Vec<&str> = Vec::new();
    for x in summaries {
        if !targets.contains(&x.target.as_str()) {
            targets.push(&x.target);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = summaries
            .iter()
            .filter(|x| x.target == *t)
            .map(|x| (x.offered_forward_rate, x.forwarded_rate.median))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", xs(a), ys(b)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        for &(a, b) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                xs(a),
                ys(b)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{c}">{}</text>"#,
            ox + PAD_L + 6.0,
            oy + PAD_T + 14.0 + 13.0 * i as f64,
            esc(t)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_well_formed_svg() {
        let mut l = Latency::new();
        for i in 1..1000 {
            l.record(0, i * 100);
        }
        let svg = render(
            "t & <x>",
            &[CdfLine {
                label: "relay".into(),
                latency: &l,
            }],
            &[],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &amp; &lt;x&gt;"));
        assert!(svg.contains("<polyline"));
    }
}
