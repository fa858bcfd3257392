//! Tree-model parsers (XGBoost JSON and UBJSON, LightGBM text) never panic on hostile bytes, and
//! any forest they accept evaluates (compiled and reference walks) without panicking and with
//! identical results.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn exercise(forest: inferd_trees::Forest) {
    let nf = forest.n_features.max(1);
    let no = forest.n_outputs.max(1);
    if nf > 4096 || no > 256 || forest.trees.len() > 4096 {
        return;
    }
    // Nine rows: the SIMD kernel sums eight rows at a time and the ninth alone.
    const ROWS: usize = 9;
    let mut rows = vec![0f32; ROWS * nf];
    for (i, v) in rows.iter_mut().enumerate() {
        *v = match i % 7 {
            0 => f32::NAN,
            1 => -1.5,
            2 => 0.0,
            3 => -0.0,
            4 => f32::NEG_INFINITY,
            5 => 0.25,
            _ => 1e30,
        };
    }
    let mut a = vec![0f32; ROWS * no];
    forest.predict(&rows, &mut a);
    // The SIMD kernel where this CPU and forest allow it, and the portable walk.
    let compiled = [
        inferd_trees::Compiled::new(&forest),
        inferd_trees::Compiled::new_portable(&forest),
    ];
    for c in compiled.iter().flatten() {
        let mut b = vec![0f32; ROWS * no];
        c.predict(&forest, &rows, &mut b);
        for (x, y) in a.iter().zip(&b) {
            assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(f) = inferd_trees::xgboost::from_json(&doc)
    {
        exercise(f);
    }
    if let Ok(doc) = inferd_trees::xgboost::ubjson(data)
        && let Ok(f) = inferd_trees::xgboost::from_json(&doc)
    {
        exercise(f);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(f) = inferd_trees::lightgbm::from_text(text)
    {
        exercise(f);
    }
});
