// Fit w to a target with qrmsprop's 8-bit RMSprop, std only.
use std::cell::Cell;

use qrmsprop::{Config, Device, Optimizer, Status, Variant};

fn main() -> qrmsprop::Result<()> {
    let n = 8192;
    let target: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut w = vec![0.0f32; n];
    let mut g = vec![0.0f32; n];
    // Shared with the optimizer: it updates w in place and reads g at every step.
    let w = Cell::from_mut(&mut w[..]).as_slice_of_cells();
    let g = Cell::from_mut(&mut g[..]).as_slice_of_cells();
    let loss = || -> f32 { w.iter().zip(&target).map(|(w, t)| 0.5 * (w.get() - t).powi(2)).sum() };

    let cfg = Config { lr: 1e-2, momentum: 0.9, ..Config::default() };
    let mut opt = Optimizer::new(Variant::RMSprop8bit, &cfg, Device::Cpu)?;
    opt.add_param(w, Some(g))?;
    let start = loss();
    for _ in 0..300 {
        for ((g, w), t) in g.iter().zip(w).zip(&target) {
            g.set(w.get() - t); // d/dw of 0.5 * (w - t)^2
        }
        opt.step()?;
    }
    println!("steps {}, loss {start:.1} -> {:.2e}, state {} bytes", opt.get_step(0)?, loss(), opt.state_bytes()?);

    let blob = opt.save()?; // checkpoint: Vec<u8>
    opt.load(&blob)?;
    let bad = Config { alpha: 0.0, ..Config::default() };
    match Optimizer::new(Variant::RMSprop, &bad, Device::Cpu) {
        Err(e) if e.status == Status::NotImplemented => println!("error: {}", e.message),
        other => panic!("expected NotImplemented, got {other:?}"),
    }
    Ok(())
}
