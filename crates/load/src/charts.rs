//! SVG charts of a run (RPS, and p50/p99 latency, against VUs), drawn with plotters.

use super::stage::StageRow;
use plotters::coord::combinators::IntoLogRange;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Writes rps_vs_vus.svg and latency_vs_vus.svg into `dir`.
pub fn write(dir: &Path, rows: &[StageRow], title: &str) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let rps: Vec<(f64, f64)> = rows.iter().map(|r| (r.vus as f64, r.rps)).collect();
    let p50: Vec<(f64, f64)> = rows.iter().map(|r| (r.vus as f64, r.p50_ms)).collect();
    let p99: Vec<(f64, f64)> = rows.iter().map(|r| (r.vus as f64, r.p99_ms)).collect();
    chart(
        &dir.join("rps_vs_vus.svg"),
        &format!("{title}: requests/s"),
        "req/s",
        false,
        &[("RPS", &rps, BLUE)],
        fmt_count,
    )
    .map_err(|e| format!("rps_vs_vus.svg: {e}"))?;
    chart(
        &dir.join("latency_vs_vus.svg"),
        &format!("{title}: latency"),
        "ms (log)",
        true,
        &[("p50", &p50, GREEN), ("p99", &p99, RED)],
        fmt_ms,
    )
    .map_err(|e| format!("latency_vs_vus.svg: {e}"))
}

/// One line on a chart: its legend name, its points, its colour.
type Series<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

/// A count on an axis: whole numbers, `12k` and `1.5M` when long (VUs, requests/s).
fn fmt_count(v: &f64) -> String {
    let v = v.round();
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Milliseconds on an axis, with the digits that matter below 1 ms.
fn fmt_ms(v: &f64) -> String {
    match *v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v if v >= 0.01 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    log_y: bool,
    series: &[Series],
    y_fmt: fn(&f64) -> String,
) -> DrawResult {
    let points = series.iter().flat_map(|s| s.1.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::MAX, 0.0f64, 0.0f64);
    let mut y_min = f64::MAX;
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
        if y > 0.0 {
            y_min = y_min.min(y);
        }
    }
    let x_min = x_min.max(1.0);
    let x_max = x_max.max(x_min * 1.5);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70);
    let x_range = (x_min * 0.9..x_max * 1.1).log_scale();
    if log_y {
        let y_lo = if y_min == f64::MAX { 0.01 } else { y_min * 0.8 };
        let y_hi = (y_max * 1.25).max(y_lo * 10.0);
        let c = builder.build_cartesian_2d(x_range, (y_lo..y_hi).log_scale())?;
        draw(c, y_label, series, y_fmt)?;
    } else {
        let c = builder.build_cartesian_2d(x_range, 0.0..(y_max * 1.15).max(1.0))?;
        draw(c, y_label, series, y_fmt)?;
    }
    root.present()?;
    Ok(())
}

/// Mesh, lines, points and legend, whatever the axes' scales.
fn draw<'a, X, Y>(
    mut c: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    y_label: &str,
    series: &[Series],
    y_fmt: fn(&f64) -> String,
) -> DrawResult
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    // Few labels, formatted by hand: plotters' defaults on log axes ran into each other
    // (`90.0100.0`) and wrote VUs as fractions.
    c.configure_mesh()
        .x_desc("virtual users (log)")
        .y_desc(y_label)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&fmt_count)
        .y_label_formatter(&y_fmt)
        .draw()?;
    for &(name, data, color) in series {
        c.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        c.draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short_and_whole_where_they_count() {
        assert_eq!(fmt_count(&99.6), "100");
        assert_eq!(fmt_count(&15_000.0), "15k");
        assert_eq!(fmt_count(&2_500_000.0), "2.5M");
        assert_eq!(fmt_ms(&250.4), "250");
        assert_eq!(fmt_ms(&2.54), "2.5");
        assert_eq!(fmt_ms(&0.254), "0.25");
        assert_eq!(fmt_ms(&0.0042), "0.004");
    }
}
