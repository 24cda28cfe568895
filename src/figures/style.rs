//! The look every figure shares: embedded fonts (no system fonts needed), the colour-blind-safe Okabe–Ito
//! palette with one fixed colour and marker per method, sizes, the diverging map for perturbations, and
//! the PNG + SVG rendering of one drawing function into both files, each written atomically.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{CovfError, Result};
use crate::run::checkpoint::atomic_write;
use crate::train::method::by_label;

/// Pixel size of one panel; SVG uses the same units.
pub const SIZE: (u32, u32) = (720, 480);
pub const FONT: &str = "sans-serif";
pub const TITLE_PT: u32 = 24;
pub const LABEL_PT: u32 = 20;
pub const TICK_PT: u32 = 16;
pub const LINE_WIDTH: u32 = 3;
pub const MARKER: u32 = 5;

/// Titles never shrink below this.
const MIN_TITLE_PT: u32 = 12;

/// The largest title size, at most `TITLE_PT`, at which `title` fits `area`'s width with a margin: a long run
/// name shrinks the title instead of running off both edges of the figure.
pub fn title_pt<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str) -> u32 {
    let room = area.dim_in_pixel().0.saturating_sub(40);
    (MIN_TITLE_PT..=TITLE_PT)
        .rev()
        .find(|&pt| {
            area.estimate_text_size(title, &TextStyle::from((FONT, pt).into_font()))
                .is_ok_and(|(w, _)| w <= room)
        })
        .unwrap_or(MIN_TITLE_PT)
}

static FONTS: Once = Once::new();

/// Registers DejaVu Sans (compiled in) under the family name the figures use.
pub fn register_fonts() {
    FONTS.call_once(|| {
        // The fonts are the crate's own bytes: registering them cannot fail on user input, and if it did the
        // text would simply be missing from the PNG, never a panic.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Okabe & Ito (2008): distinguishable with every common colour-vision deficiency. Yellow is left out:
/// it vanishes on white.
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
];

/// Grey of reference lines (random baseline, zero).
pub const REFERENCE: RGBColor = RGBColor(110, 110, 110);

/// Palette slots that methods hold by declaration (`Method::COLOUR`), so a method has the same colour and
/// marker in every figure; other methods take the slots after these by first appearance.
const FIXED_SLOTS: usize = 7;

/// The display name of a method label (`pgd10` → `PGD-10`), as the method's file declares it.
pub fn display_name(method: &str) -> String {
    by_label(method).map_or_else(|| method.to_string(), |(_, name)| name)
}

/// Index into the palette and marker set: a method's declared slot, then by first appearance. When two
/// labels of one method appear together (`pgd7`, `pgd10`), the first in `others` keeps the slot.
pub fn method_index(method: &str, others: &[String]) -> usize {
    let declared = |m: &str| by_label(m).and_then(|(def, _)| def.colour());
    let owned = |m: &str| {
        declared(m).filter(|&s| {
            others
                .iter()
                .find(|o| declared(o) == Some(s))
                .is_none_or(|first| first == m)
        })
    };
    if let Some(s) = owned(method) {
        return s;
    }
    let extra = others
        .iter()
        .filter(|m| owned(m).is_none())
        .position(|m| m == method)
        .unwrap_or(0);
    FIXED_SLOTS + extra
}

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Diverging blue–white–vermillion map for a perturbation value v in [−1, 1] (δ/ε).
pub fn diverging(v: f64) -> RGBColor {
    let v = if v.is_finite() { v.clamp(-1.0, 1.0) } else { 0.0 };
    let (end, t) = if v < 0.0 { (PALETTE[0], -v) } else { (PALETTE[1], v) };
    let mix = |c: u8| (255.0 + (f64::from(c) - 255.0) * t).round() as u8;
    RGBColor(mix(end.0), mix(end.1), mix(end.2))
}

/// Grey level for a pixel in [0, 1].
pub fn grey(v: f64) -> RGBColor {
    let g = (255.0 * if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }).round() as u8;
    RGBColor(g, g, g)
}

pub fn plot_err(what: &Path, e: impl std::fmt::Display) -> CovfError {
    CovfError::data(what, format!("could not draw the figure: {e}"))
}

/// Draws one figure into `dir/<name>.png` and `dir/<name>.svg`, each written atomically, and returns both
/// paths. The same generic drawing function is passed twice (see `both!`), instantiated once per backend.
pub fn render(
    dir: &Path,
    name: &str,
    size: (u32, u32),
    png: &dyn Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
    svg: &dyn Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    register_fonts();
    std::fs::create_dir_all(dir).map_err(|e| CovfError::io(dir, e))?;
    let png_path = dir.join(format!("{name}.png"));
    // The bitmap backend writes its file itself: draw into a temporary name (git-ignored), then rename.
    let tmp = dir.join(format!("{name}.tmp-{}.png", std::process::id()));
    let drawn = (|| {
        let area = BitMapBackend::new(&tmp, size).into_drawing_area();
        area.fill(&WHITE).map_err(|e| plot_err(&png_path, e))?;
        png(&area)?;
        area.present().map_err(|e| plot_err(&png_path, e))
    })();
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn?;
    std::fs::rename(&tmp, &png_path).map_err(|e| CovfError::io(&png_path, e))?;
    let svg_path = dir.join(format!("{name}.svg"));
    let mut text = String::new();
    {
        let area = SVGBackend::with_string(&mut text, size).into_drawing_area();
        area.fill(&WHITE).map_err(|e| plot_err(&svg_path, e))?;
        svg(&area)?;
        area.present().map_err(|e| plot_err(&svg_path, e))?;
    }
    atomic_write(&svg_path, text.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_renders_from_the_embedded_font_alone() {
        register_fonts();
        let (w, h) = (200u32, 60u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            area.draw_text("Epoch 12", &(FONT, LABEL_PT).into_font().color(&BLACK), (5, 5))
                .unwrap();
            area.present().unwrap();
        }
        let dark = buf.chunks(3).filter(|p| p.iter().all(|&c| c < 128)).count();
        // Eight glyphs at 20 px: hundreds of dark pixels, none without a font.
        assert!(dark > 100, "{dark} dark pixels");
    }

    #[test]
    fn a_long_title_shrinks_to_fit_and_a_short_one_keeps_its_size() {
        register_fonts();
        let mut buf = vec![255u8; (SIZE.0 * SIZE.1 * 3) as usize];
        let area = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        assert_eq!(title_pt(&area, "Figure 3"), TITLE_PT);
        let long = "Transfer strength on pgd10-fmnist-preact-tiny-eps0.15-s0 epoch 4 (FGSM on each run's checkpoints)";
        let pt = title_pt(&area, long);
        assert!((MIN_TITLE_PT..TITLE_PT).contains(&pt), "{pt}");
        let (w, _) = area
            .estimate_text_size(long, &TextStyle::from((FONT, pt).into_font()))
            .unwrap();
        assert!(w <= SIZE.0 - 40, "{w} px at {pt} pt");
    }

    #[test]
    fn methods_keep_their_colour_and_names_read_like_the_paper() {
        let others = vec!["gradalign".to_string(), "nfgsm".to_string()];
        assert_eq!(method_index("fgsm", &others), 0);
        assert_eq!(method_index("apart", &others), 2);
        assert_eq!(method_index("nfgsm", &others), FIXED_SLOTS + 1);
        let pgds = vec!["pgd10".to_string(), "pgd7".to_string()];
        assert_eq!(method_index("pgd10", &pgds), 1);
        assert_eq!(method_index("pgd7", &pgds), FIXED_SLOTS);
        assert_eq!(display_name("pgd10"), "PGD-10");
        assert_eq!(display_name("free8"), "Free-8");
        assert_eq!(display_name("atta10"), "ATTA-10");
        assert_eq!(display_name("apart-simple"), "APART-Simple");
        assert_eq!(display_name("pgdx"), "pgdx");
    }

    #[test]
    fn the_diverging_map_is_white_at_zero_and_saturates_at_eps() {
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(-1.0), PALETTE[0]);
        assert_eq!(diverging(1.0), PALETTE[1]);
        assert_eq!(diverging(7.0), PALETTE[1]);
        assert_eq!(diverging(f64::NAN), RGBColor(255, 255, 255));
        assert_eq!(grey(0.0), RGBColor(0, 0, 0));
        assert_eq!(grey(1.0), RGBColor(255, 255, 255));
    }
}
