//! Draws the side-by-side benchmark as a PNG: for every workload, each server's result relative to etcd
//! 3.5.1 (higher is better; for memory and disk rows the ratio is inverted so that higher is still better).
//!
//! Input (JSON, written by scripts/compare-etcd):
//! `{"servers": [...], "rows": [{"name": "...", "lower_is_better": false, "values": {"concord": 1.0, ...}}]}`
//!
//! Usage: `bench-chart INPUT.json OUTPUT.png FONT.ttf`

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    servers: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    lower_is_better: bool,
    values: BTreeMap<String, f64>,
}

const BASELINE: &str = "etcd-3.5.1";
const COLORS: [RGBColor; 4] = [
    RGBColor(0x2b, 0x8c, 0xbe),
    RGBColor(0x99, 0x99, 0x99),
    RGBColor(0xcc, 0xcc, 0xcc),
    RGBColor(0x66, 0x66, 0x66),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, font] = args.as_slice() else {
        bail!("usage: bench-chart INPUT.json OUTPUT.png FONT.ttf")
    };
    let font_bytes: &'static [u8] =
        Box::leak(std::fs::read(font).with_context(|| format!("font {font}"))?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font_bytes)
        .map_err(|_| anyhow::anyhow!("bad font {font}"))?;
    let data: Input = serde_json::from_slice(&std::fs::read(input).with_context(|| input.clone())?)?;

    let rows: Vec<(String, Vec<f64>)> = data
        .rows
        .iter()
        .filter_map(|r| {
            let base = *r.values.get(BASELINE)?;
            let ratios = data
                .servers
                .iter()
                .map(|s| match r.values.get(s) {
                    Some(v) if *v > 0.0 && base > 0.0 => {
                        if r.lower_is_better {
                            base / v
                        } else {
                            v / base
                        }
                    }
                    _ => 0.0,
                })
                .collect();
            Some((r.name.clone(), ratios))
        })
        .collect();
    let max = rows.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0f64, f64::max) * 1.15;

    let root = BitMapBackend::new(output, (1400, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Relative to {BASELINE} (higher is better; memory and disk inverted)"),
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(200)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..rows.len() as f64, 0.0..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ratio")
        .y_label_style(("sans-serif", 16))
        .draw()?;
    let n = data.servers.len() as f64;
    for (si, server) in data.servers.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        chart
            .draw_series(rows.iter().enumerate().map(|(ri, (_, ratios))| {
                let x0 = ri as f64 + 0.1 + 0.8 * si as f64 / n;
                Rectangle::new([(x0, 0.0), (x0 + 0.8 / n, ratios[si])], color.filled())
            }))?
            .label(server.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(0.0, 1.0), (rows.len() as f64, 1.0)], BLACK)))?;
    for (ri, (name, _)) in rows.iter().enumerate() {
        let pos = chart.backend_coord(&(ri as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            name.clone(),
            (pos.0 - 10, pos.1 + 8),
            ("sans-serif", 15).into_font().transform(FontTransform::Rotate90),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
