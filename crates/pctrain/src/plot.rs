//! A run's chart as a small self-contained SVG: losses by step on the left axis, accuracies
//! (fractions) by step on their own axis on the right.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const SIZE: (u32, u32) = (640, 360);
const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// A named line of (step, value) points.
pub type Series<'a> = (&'a str, &'a [(f64, f64)]);

/// Draws `losses` against the left axis and `accuracies` (0 to 1) against the right one; empty
/// series are left out, points that are not finite skipped.
pub fn run_chart(losses: &[Series], accuracies: &[Series]) -> Result<String> {
    let finite = |s: &[Series]| -> Vec<(f64, f64)> {
        s.iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let (loss_points, all) = (
        finite(losses),
        [finite(losses), finite(accuracies)].concat(),
    );
    let steps = span(all.iter().map(|p| p.0));
    let loss = span(loss_points.iter().map(|p| p.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .right_y_label_area_size(if accuracies.iter().any(|s| !s.1.is_empty()) {
                56
            } else {
                0
            })
            .build_cartesian_2d(steps.clone(), loss)
            .map_err(draw)?
            .set_secondary_coord(steps, 0f64..1f64);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("step")
            .y_desc("loss")
            .y_label_formatter(&|y| format!("{y:.3}"))
            .draw()
            .map_err(draw)?;
        let shown = |s: &&Series| !s.1.is_empty();
        let mut colors = COLORS.iter().cycle();
        for (name, points) in losses.iter().filter(shown) {
            let color = *colors.next().expect("cycled");
            chart
                .draw_series(line(points, color))
                .map_err(draw)?
                .label(format!("{name} loss"))
                .legend(legend_mark(color));
        }
        if accuracies.iter().any(|s| shown(&s)) {
            chart
                .configure_secondary_axes()
                .y_desc("accuracy")
                .draw()
                .map_err(draw)?;
        }
        for (name, points) in accuracies.iter().filter(shown) {
            let color = *colors.next().expect("cycled");
            chart
                .draw_secondary_series(line(points, color))
                .map_err(draw)?
                .label(format!("{name} (right axis)"))
                .legend(legend_mark(color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// A series' line: its finite points in `color`.
fn line<DB: DrawingBackend>(points: &[(f64, f64)], color: RGBColor) -> LineSeries<DB, (f64, f64)> {
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    LineSeries::new(finite, color.stroke_width(2))
}

/// A series' mark in the legend: a short stroke in its colour.
fn legend_mark(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color)
}

/// The range the values cover, widened when they are one value (or none).
fn span(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        0.0..1.0
    } else if hi - lo < 1e-12 {
        lo - 0.5..hi + 0.5
    } else {
        lo..hi
    }
}

fn draw<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::run_chart;

    /// The y coordinates of the line drawn in the `n`th series colour.
    fn line_ys(svg: &str, n: usize) -> Vec<f64> {
        let c = super::COLORS[n];
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        let points = svg
            .lines()
            .find(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .unwrap()
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        points
            .split_whitespace()
            .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn the_curve_falls_on_the_page_as_the_loss_falls() {
        let train = [(1.0, 4.0), (2.0, 3.0), (3.0, 2.0)];
        let svg = run_chart(&[("train", &train), ("eval", &[])], &[]).unwrap();
        let ys = line_ys(&svg, 0);
        // SVG's y grows downwards: a falling loss has rising y.
        assert!(ys.windows(2).all(|w| w[1] > w[0]), "{ys:?}");
        assert!(svg.contains("train loss") && !svg.contains("eval loss"));
        assert!(
            !svg.contains("accuracy"),
            "no right axis without accuracies"
        );
    }

    #[test]
    fn accuracies_have_their_own_axis() {
        // Losses near 4, accuracies near 0.5: on one axis the accuracy would sit far below the
        // losses; on its own (0 to 1) it sits between the plot's top and bottom.
        let train = [(1.0, 4.0), (3.0, 3.0)];
        let acc = [(1.0, 0.0), (3.0, 1.0)];
        let svg = run_chart(&[("train", &train)], &[("ifeval prompt strict", &acc)]).unwrap();
        let loss = line_ys(&svg, 0);
        let accuracy = line_ys(&svg, 1);
        // Accuracy 0 at the bottom (the loss axis' 3), 1 at the top (its 4).
        assert!(
            (accuracy[0] - loss[1]).abs() <= 1.5,
            "{accuracy:?} {loss:?}"
        );
        assert!(
            (accuracy[1] - loss[0]).abs() <= 1.5,
            "{accuracy:?} {loss:?}"
        );
        assert!(svg.contains("accuracy") && svg.contains("ifeval prompt strict (right axis)"));
    }
}
