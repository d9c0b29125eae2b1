//! The safe layer against the installed library (CPU; CUDA tests skip
//! themselves without a device).
use std::cell::Cell;

use qrmsprop::{sys, Config, Device, Dtype, Optimizer, ParamInfo, StateKind, StateMap, Status, Variant, BF16, F16};

/// A tiny deterministic generator (no crates): xorshift64* -> N(0,1) by Box-Muller.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

fn cells<T>(v: &mut [T]) -> &[Cell<T>] {
    Cell::from_mut(v).as_slice_of_cells()
}

/// torch.optim.RMSprop (centered=False) in f32, as SPEC section 3 writes it.
fn reference(p: &mut [f32], s: &mut [f32], b: &mut [f32], g: &[f32], c: &Config) {
    for i in 0..p.len() {
        let mut gi = g[i];
        if c.weight_decay > 0.0 {
            gi += c.weight_decay * p[i];
        }
        s[i] = c.alpha * s[i] + (1.0 - c.alpha) * gi * gi;
        let mut u = gi / (s[i].sqrt() + c.eps);
        if c.momentum > 0.0 {
            b[i] = c.momentum * b[i] + u;
            u = b[i];
        }
        p[i] -= c.lr * u;
    }
}

fn assert_close(a: &[f32], b: &[f32], rtol: f32, atol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= atol + rtol * y.abs(), "element {i}: {x} vs {y}");
    }
}

#[test]
fn config_default_is_the_library_default_and_layout_matches() {
    assert_eq!(Config::default(), Config::library_defaults());
    let raw = Config::default().to_raw();
    assert_eq!(raw.struct_size, std::mem::size_of::<sys::qrms_config>());
    if cfg!(target_pointer_width = "64") {
        // The LP64 layout of the header's struct (the Python tests check the
        // same offsets against the C compiler).
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<sys::qrms_config>(), 96);
        assert_eq!(sys::QRMS_CONFIG_FIRST_SIZE, 64); // the first published struct ends with skip_zeros
        assert_eq!(offset_of!(sys::qrms_config, lr), 8);
        assert_eq!(offset_of!(sys::qrms_config, centered), 28);
        assert_eq!(offset_of!(sys::qrms_config, optim_bits), 32);
        assert_eq!(offset_of!(sys::qrms_config, min_8bit_size), 40);
        assert_eq!(offset_of!(sys::qrms_config, percentile_clipping), 48);
        assert_eq!(offset_of!(sys::qrms_config, block_wise), 52);
        assert_eq!(offset_of!(sys::qrms_config, max_unorm), 56);
        assert_eq!(offset_of!(sys::qrms_config, skip_zeros), 60);
        assert_eq!(offset_of!(sys::qrms_config, skip_nonfinite), 64);
        assert_eq!(offset_of!(sys::qrms_config, seed), 72);
        assert_eq!(offset_of!(sys::qrms_config, stochastic_rounding), 80);
        assert_eq!(offset_of!(sys::qrms_config, state_map), 88);
        assert_eq!(size_of::<sys::qrms_update_params>(), 40);
    }
    let (major, minor, _) = qrmsprop::version();
    assert_eq!((major, minor), (sys::QRMS_VERSION_MAJOR, sys::QRMS_VERSION_MINOR));
}

#[test]
fn matches_reference_32bit() {
    let configs = [
        Config::default(),
        Config { lr: 1e-3, alpha: 0.9, ..Config::default() },
        Config { weight_decay: 0.1, ..Config::default() },
        Config { momentum: 0.9, ..Config::default() },
        Config { lr: 3e-3, alpha: 0.95, eps: 1e-6, weight_decay: 0.01, momentum: 0.5, ..Config::default() },
    ];
    for (k, cfg) in configs.iter().enumerate() {
        for variant in [Variant::RMSprop, Variant::RMSprop32bit] {
            let mut rng = Rng(42 + k as u64);
            let n = 1000;
            let p0 = rng.vec(n);
            let mut p = p0.clone();
            let mut g = vec![0.0f32; n];
            let (mut rp, mut rs, mut rb) = (p0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
            let (pc, gc) = (cells(&mut p), cells(&mut g));
            let mut opt = Optimizer::new(variant, cfg, Device::Cpu).unwrap();
            assert_eq!(opt.add_param(pc, Some(gc)).unwrap(), 0);
            for _ in 0..25 {
                let grad = rng.vec(n);
                for (c, v) in gc.iter().zip(&grad) {
                    c.set(*v);
                }
                opt.step().unwrap();
                reference(&mut rp, &mut rs, &mut rb, &grad, cfg);
            }
            let got: Vec<f32> = pc.iter().map(Cell::get).collect();
            assert_close(&got, &rp, 1e-5, 1e-6);
            assert_close(&opt.read_state(0, StateKind::SquareAvg).unwrap(), &rs, 1e-5, 1e-6);
            if cfg.momentum > 0.0 {
                assert_close(&opt.read_state(0, StateKind::Momentum).unwrap(), &rb, 1e-5, 1e-6);
            }
            assert_eq!(opt.get_step(0).unwrap(), 25);
        }
    }
}

/// 0.5 * sum(a * (w - w*)^2) with a badly scaled diagonal; returns (start, end) loss.
fn train_quadratic(variant: Variant, cfg: Config, n: usize, steps: usize) -> (f64, f64, u64) {
    let mut rng = Rng(7);
    let a: Vec<f32> = (0..n).map(|_| ((rng.uniform() * 6.0 - 3.0) as f32).exp()).collect();
    let target = rng.vec(n);
    let mut w = vec![0.0f32; n];
    let mut g = vec![0.0f32; n];
    let (wc, gc) = (cells(&mut w), cells(&mut g));
    let loss = |w: &[Cell<f32>]| -> f64 {
        w.iter().zip(&a).zip(&target).map(|((w, a), t)| 0.5 * (*a as f64) * ((w.get() - t) as f64).powi(2)).sum()
    };
    let mut opt = Optimizer::new(variant, &cfg, Device::Cpu).unwrap();
    opt.add_param(wc, Some(gc)).unwrap();
    let start = loss(wc);
    for it in 0..steps {
        for i in 0..n {
            gc[i].set(a[i] * (wc[i].get() - target[i]));
        }
        opt.step().unwrap();
        if it == steps * 3 / 4 {
            opt.set_lr(cfg.lr / 10.0).unwrap();
        }
    }
    (start, loss(wc), opt.state_bytes().unwrap())
}

#[test]
fn training_converges_32bit() {
    let (start, end, bytes) = train_quadratic(Variant::RMSprop32bit, Config::default(), 8192, 400);
    assert!(end < start * 1e-3, "{start} -> {end}");
    assert_eq!(bytes, 8192 * 4 + 8); // + the step counter
}

#[test]
fn training_converges_8bit() {
    let cfg = Config { momentum: 0.5, ..Config::default() };
    let (start, end, bytes) = train_quadratic(Variant::RMSprop8bit, cfg, 8192, 400);
    assert!(end < start * 1e-3, "{start} -> {end}");
    assert_eq!(bytes, 2 * (8192 + 32 * 4) + 8); // codes + absmax, for square_avg and momentum; the step counter
    let per_tensor = Config { block_wise: false, optim_bits: 8, ..cfg };
    let (start, end, bytes) = train_quadratic(Variant::RMSprop, per_tensor, 8192, 400);
    assert!(end < start * 1e-3, "{start} -> {end}");
    assert_eq!(bytes, 2 * (8192 + 8) + 8); // codes + {max1, new_max1}, twice; the step counter
}

#[test]
fn training_converges_4bit() {
    let cfg = Config { momentum: 0.5, ..Config::default() };
    let (start, end, bytes) = train_quadratic(Variant::RMSprop4bit, cfg, 8192, 400);
    assert!(end < start * 1e-2, "{start} -> {end}");
    assert_eq!(bytes, 2 * (8192 / 2 + 64 * 4) + 8); // two codes per byte + absmax per 128, twice; the step counter
    let (_, _, bytes) = train_quadratic(Variant::RMSprop, Config { optim_bits: 4, ..cfg }, 8191, 1);
    assert_eq!(bytes, 2 * (8192 / 2 + 64 * 4) + 8); // an odd count: the last byte holds one code
}

#[test]
fn not_implemented_errors_carry_status_and_spec_message() {
    let cases = [
        (Config { alpha: 0.0, ..Config::default() }, "RMSprop with alpha==0.0 is not supported!"),
        (Config { centered: true, ..Config::default() }, "Centered RMSprop is not supported!"),
        (Config { optim_bits: 16, ..Config::default() }, "Amount of optimizer bits not supported: 16"),
        (Config { alpha: 0.0, centered: true, ..Config::default() }, "RMSprop with alpha==0.0 is not supported!"),
    ];
    for (cfg, message) in cases {
        let e = Optimizer::new(Variant::RMSprop, &cfg, Device::Cpu).unwrap_err();
        assert_eq!(e.status, Status::NotImplemented);
        assert_eq!(e.status.code(), sys::QRMS_ERROR_NOT_IMPLEMENTED);
        // The library names the function, then gives the SPEC text.
        assert_eq!(e.message, format!("qrms_optimizer_create: {message}"));
        assert_eq!(e.to_string(), format!("qrms_optimizer_create: {message} (not implemented)"));
    }
}

#[test]
fn invalid_arguments() {
    let cases = [
        (Config { lr: -1.0, ..Config::default() }, "Invalid learning rate: -1"),
        (Config { eps: f32::NAN, ..Config::default() }, "Invalid epsilon value: nan"),
        (Config { momentum: 1.0, ..Config::default() }, "Invalid momentum value: 1"),
        (Config { percentile_clipping: 101, ..Config::default() }, "Invalid percentile_clipping value: 101"),
    ];
    for (cfg, message) in cases {
        let e = Optimizer::new(Variant::RMSprop8bit, &cfg, Device::Cpu).unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument);
        assert!(e.message.starts_with(&format!("qrms_optimizer_create: {message}")), "{}", e.message);
    }
    let mut p = vec![0.0f32; 8];
    let mut g = vec![0.0f32; 8];
    let mut h = vec![0.0f32; 7];
    let mut g16 = vec![F16(0); 8];
    let mut empty: Vec<f32> = Vec::new(); // declared before opt: buffers must outlive it
    let (pc, gc, hc, g16c) = (cells(&mut p), cells(&mut g), cells(&mut h), cells(&mut g16));
    let mut opt = Optimizer::new(Variant::RMSprop, &Config::default(), Device::Cpu).unwrap();
    let e = opt.add_param(pc, Some(hc)).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (Status::InvalidArgument, "add_param: grad has 7 elements but the param has 8")
    );
    let e = opt.add_param(cells(&mut empty), None).unwrap_err();
    assert_eq!(e.message, "qrms_optimizer_add_param: numel must be > 0, got 0");
    assert_eq!(opt.add_param(pc, Some(gc)).unwrap(), 0);
    let e = opt.add_param(pc, None).unwrap_err();
    assert!(e.message.ends_with("this param pointer was already added"), "{}", e.message);
    let e = opt.set_grad(0, Some(g16c)).unwrap_err();
    assert_eq!(e.message, "set_grad: grad is F16 but parameter 0 is F32");
    let e = opt.set_grad(0, Some(hc)).unwrap_err();
    assert_eq!(e.message, "set_grad: grad has 7 elements but parameter 0 has 8");
    let e = opt.get_step(3).unwrap_err();
    assert_eq!(e.message, "qrms_optimizer_get_step: parameter index 3 out of range (the optimizer has 1 parameter)");
    let e = opt.read_state(0, StateKind::Momentum).unwrap_err();
    assert!(e.message.contains("has no momentum buffer"), "{}", e.message);
    let e = opt.set_lr(f32::INFINITY).unwrap_err();
    assert_eq!(e.message, "qrms_optimizer_set_lr: Invalid learning rate: inf");
    assert_eq!(opt.param_count(), 1);
}

#[test]
fn cuda_without_cuda_is_a_device_error() {
    if qrmsprop::cuda_device_count() > 0 {
        eprintln!("skipped: this library has CUDA devices");
        return;
    }
    let e = Optimizer::new(Variant::RMSprop, &Config::default(), Device::Cuda(0)).unwrap_err();
    assert_eq!(e.status, Status::Device);
    assert!(e.message.starts_with("qrms_optimizer_create: "), "{}", e.message);
}

#[test]
fn save_load_round_trip() {
    for (variant, cfg) in [
        (Variant::RMSprop32bit, Config { momentum: 0.9, ..Config::default() }),
        (Variant::RMSprop8bit, Config { momentum: 0.9, percentile_clipping: 90, ..Config::default() }),
        (Variant::RMSprop8bit, Config { block_wise: false, ..Config::default() }),
        (Variant::RMSprop8bit, Config { momentum: 0.9, state_map: StateMap::Unsigned, ..Config::default() }),
        (Variant::RMSprop4bit, Config { momentum: 0.9, ..Config::default() }),
    ] {
        let n = 5000;
        let mut rng = Rng(99);
        let grads: Vec<Vec<f32>> = (0..10).map(|_| rng.vec(n)).collect();
        let mut p = rng.vec(n);
        let mut g = vec![0.0f32; n];
        let (pc, gc) = (cells(&mut p), cells(&mut g));
        let mut opt = Optimizer::new(variant, &cfg, Device::Cpu).unwrap();
        opt.add_param(pc, Some(gc)).unwrap();
        let feed = |gc: &[Cell<f32>], v: &[f32]| gc.iter().zip(v).for_each(|(c, x)| c.set(*x));
        for gr in &grads[..5] {
            feed(gc, gr);
            opt.step().unwrap();
        }
        let blob = opt.save().unwrap();
        let mut q: Vec<f32> = pc.iter().map(Cell::get).collect();
        for gr in &grads[5..] {
            feed(gc, gr);
            opt.step().unwrap();
        }

        let mut h = vec![0.0f32; n];
        let (qc, hc) = (cells(&mut q), cells(&mut h));
        let mut opt2 = Optimizer::new(variant, &cfg, Device::Cpu).unwrap();
        opt2.add_param(qc, Some(hc)).unwrap();
        opt2.load(&blob).unwrap();
        assert_eq!(opt2.get_step(0).unwrap(), 5);
        for gr in &grads[5..] {
            feed(hc, gr);
            opt2.step().unwrap();
        }
        assert!(pc.iter().zip(qc).all(|(a, b)| a.get().to_bits() == b.get().to_bits()));
        assert_eq!(opt.save().unwrap(), opt2.save().unwrap());

        // A corrupt blob is BadState and changes nothing.
        let before = opt2.read_state(0, StateKind::SquareAvg).unwrap();
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        for b in [&bad[..], &blob[..blob.len() - 1], &b"garbage"[..]] {
            let e = opt2.load(b).unwrap_err();
            assert_eq!(e.status, Status::BadState, "{}", e.message);
            assert!(e.message.starts_with("qrms_optimizer_load: "));
        }
        assert_eq!(opt2.read_state(0, StateKind::SquareAvg).unwrap(), before);
        assert_eq!(opt2.get_step(0).unwrap(), 10);
    }
}

#[test]
fn unsigned_state_map_is_kept_per_parameter_and_changes_the_state() {
    let n = 4096;
    let mut rng = Rng(7);
    let grads: Vec<Vec<f32>> = (0..5).map(|_| rng.vec(n)).collect();
    let p0 = rng.vec(n);
    let run = |state_map: StateMap| {
        let mut p = p0.clone();
        let mut g = vec![0.0f32; n];
        let (pc, gc) = (cells(&mut p), cells(&mut g));
        let cfg = Config { state_map, ..Config::default() };
        let mut opt = Optimizer::new(Variant::RMSprop8bit, &cfg, Device::Cpu).unwrap();
        opt.add_param(pc, Some(gc)).unwrap();
        for gr in &grads {
            gc.iter().zip(gr).for_each(|(c, x)| c.set(*x));
            opt.step().unwrap();
        }
        assert_eq!(opt.param_config(0).unwrap().state_map, state_map);
        opt.read_state(0, StateKind::SquareAvg).unwrap()
    };
    let (s, u) = (run(StateMap::Signed), run(StateMap::Unsigned));
    assert!(s.iter().zip(&u).any(|(a, b)| a != b));
    assert!(u.iter().all(|x| *x >= 0.0));
}

// A map code from a newer library is refused, not read as Signed: a get,
// change, set of a parameter's config must not change its map silently.
#[test]
fn unknown_state_map_code_is_refused() {
    assert_eq!(StateMap::from_raw(sys::QRMS_MAP_SIGNED), Some(StateMap::Signed));
    assert_eq!(StateMap::from_raw(sys::QRMS_MAP_UNSIGNED), Some(StateMap::Unsigned));
    let mut raw = Config { state_map: StateMap::Unsigned, lr: 0.5, ..Config::default() }.to_raw();
    let c = Config::try_from_raw(&raw).unwrap();
    assert_eq!((c.state_map, c.lr), (StateMap::Unsigned, 0.5));
    for code in [2, -1, 7] {
        raw.state_map = code;
        assert_eq!(StateMap::from_raw(code), None);
        let e = Config::try_from_raw(&raw).unwrap_err();
        assert_eq!(e.status, Status::NotImplemented);
        assert!(e.message.contains(&format!("state_map code {code}")), "{}", e.message);
    }
}

#[test]
fn grad_none_skips_and_per_param_config() {
    let mut a = vec![1.0f32; 16];
    let mut b = vec![1.0f32; 16];
    let mut ga = vec![1.0f32; 16];
    let mut gb = vec![1.0f32; 16];
    let (ac, bc, gac, gbc) = (cells(&mut a), cells(&mut b), cells(&mut ga), cells(&mut gb));
    let cfg = Config { lr: 0.1, ..Config::default() };
    let mut opt = Optimizer::new(Variant::RMSprop, &cfg, Device::Cpu).unwrap();
    opt.add_param(ac, Some(gac)).unwrap();
    opt.add_param(bc, None).unwrap();
    opt.step().unwrap();
    assert_eq!((opt.get_step(0).unwrap(), opt.get_step(1).unwrap()), (1, 0));
    assert!(bc.iter().all(|x| x.get() == 1.0) && ac.iter().all(|x| x.get() < 1.0));
    opt.set_grad(1, Some(gbc)).unwrap();
    opt.set_grad::<f32>(0, None).unwrap();
    assert_eq!(opt.param_config(1).unwrap(), cfg);
    opt.set_param_config(1, &Config { lr: 0.0, ..opt.param_config(1).unwrap() }).unwrap();
    assert_eq!(opt.param_config(1).unwrap().lr, 0.0);
    assert_eq!(opt.param_config(0).unwrap().lr, 0.1);
    assert!(opt.param_config(2).unwrap_err().message.contains("out of range"));
    opt.step().unwrap();
    assert!(bc.iter().all(|x| x.get() == 1.0)); // lr 0 for b
    assert_eq!((opt.get_step(0).unwrap(), opt.get_step(1).unwrap()), (1, 1));
    opt.set_lr(0.05).unwrap(); // moves every parameter, own configs included
    assert_eq!(opt.param_config(1).unwrap().lr, 0.05);
    opt.step().unwrap();
    assert!(bc.iter().all(|x| x.get() < 1.0));
    // An override keeps one tensor 32-bit inside an 8-bit optimizer.
    let mut big = vec![0.0f32; 8192];
    let mut opt8 = Optimizer::new(Variant::RMSprop8bit, &Config::default(), Device::Cpu).unwrap();
    opt8.add_param(cells(&mut big), None).unwrap();
    assert_eq!(opt8.state_bytes().unwrap(), 8192 + 32 * 4 + 8);
    assert_eq!(opt8.param_info(0).unwrap(), ParamInfo { numel: 8192, dtype: Dtype::F32, state_bits: 8 });
    opt8.set_param_config(0, &Config { optim_bits: 32, ..Config::default() }).unwrap();
    assert_eq!(opt8.state_bytes().unwrap(), 8192 * 4 + 8);
    assert_eq!(opt8.param_info(0).unwrap().state_bits, 32);
    assert!(opt8.param_info(1).unwrap_err().message.contains("out of range"));
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4 // 4 KiB pages
}

#[test]
fn drop_frees_everything() {
    // Each round holds 4 MiB of 32-bit and 1 MiB of 8-bit state; 150 rounds
    // leaked would be ~750 MiB.
    let mut p = vec![0.0f32; 1 << 20];
    let mut g = vec![0.5f32; 1 << 20];
    let (pc, gc) = (cells(&mut p), cells(&mut g));
    let run = || {
        for variant in [Variant::RMSprop32bit, Variant::RMSprop8bit] {
            let mut opt = Optimizer::new(variant, &Config::default(), Device::Cpu).unwrap();
            opt.add_param(pc, Some(gc)).unwrap();
            opt.step().unwrap();
            let _ = opt.save().unwrap();
        }
    };
    for _ in 0..20 {
        run(); // warm up the allocator
    }
    let before = rss_kib();
    for _ in 0..150 {
        run();
    }
    let after = rss_kib();
    if before > 0 {
        assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    }
}

#[test]
fn different_optimizers_on_different_threads() {
    let work = || {
        let mut p = Rng(5).vec(4096);
        let mut g = vec![0.0f32; 4096];
        let (pc, gc) = (cells(&mut p), cells(&mut g));
        let cfg = Config { momentum: 0.9, ..Config::default() };
        let mut opt = Optimizer::new(Variant::RMSprop8bit, &cfg, Device::Cpu).unwrap();
        opt.add_param(pc, Some(gc)).unwrap();
        let mut rng = Rng(6);
        for _ in 0..20 {
            gc.iter().for_each(|c| c.set(rng.normal()));
            opt.step().unwrap();
        }
        // And errors stay with their thread.
        let e = Optimizer::new(Variant::RMSprop, &Config { lr: -2.0, ..cfg }, Device::Cpu).unwrap_err();
        assert_eq!(e.message, "qrms_optimizer_create: Invalid learning rate: -2");
        pc.iter().map(|c| c.get().to_bits()).collect::<Vec<u32>>()
    };
    let expected = work();
    let handles: Vec<_> = (0..4).map(|_| std::thread::spawn(work)).collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
}

#[test]
fn half_types_convert_and_train() {
    assert_eq!(F16::from_f32(1.0), F16(0x3c00));
    assert_eq!(F16::from_f32(-2.0), F16(0xc000));
    assert_eq!(F16::from_f32(65504.0), F16(0x7bff));
    assert_eq!(F16::from_f32(65520.0), F16(0x7c00)); // ties to even: infinity
    assert_eq!(F16::from_f32(2f32.powi(-24)), F16(0x0001));
    assert_eq!(F16::from_f32(2f32.powi(-25)), F16(0x0000)); // tie to even: 0
    assert_eq!(F16::from_f32(3.0 * 2f32.powi(-26)), F16(0x0001));
    assert_eq!(F16::from_f32(1.0 + 2f32.powi(-11)), F16(0x3c00)); // tie to even
    assert_eq!(F16::from_f32(1.0 + 3.0 * 2f32.powi(-11)), F16(0x3c02));
    assert!(F16::from_f32(f32::NAN).to_f32().is_nan());
    assert_eq!(F16(0x0001).to_f32(), 2f32.powi(-24));
    assert_eq!(F16(0x3555).to_f32(), 0.333_251_95);
    assert_eq!(BF16::from_f32(1.0), BF16(0x3f80));
    assert_eq!(BF16::from_f32(1.0 + 2f32.powi(-8)), BF16(0x3f80)); // tie to even
    assert_eq!(BF16::from_f32(1.0 + 3.0 * 2f32.powi(-8)), BF16(0x3f82));
    assert_eq!(BF16(0x4049).to_f32(), 3.140625);
    for x in [0.1f32, -7.5, 1e-3, 3.0e4] {
        assert!((F16::from_f32(x).to_f32() - x).abs() <= x.abs() * 2f32.powi(-11));
        assert!((BF16::from_f32(x).to_f32() - x).abs() <= x.abs() * 2f32.powi(-8));
    }

    // bf16 parameters: f32 math, rounded to bf16 after every step.
    let n = 512;
    let mut rng = Rng(11);
    let p0: Vec<BF16> = rng.vec(n).into_iter().map(BF16::from_f32).collect();
    let mut p = p0.clone();
    let mut g = vec![BF16(0); n];
    let (pc, gc) = (cells(&mut p), cells(&mut g));
    let cfg = Config::default();
    let mut opt = Optimizer::new(Variant::RMSprop, &cfg, Device::Cpu).unwrap();
    opt.add_param(pc, Some(gc)).unwrap();
    let mut rp: Vec<f32> = p0.iter().map(|x| x.to_f32()).collect();
    let mut rs = vec![0.0f32; n];
    let mut rb = vec![0.0f32; n];
    for _ in 0..10 {
        let grad: Vec<BF16> = rng.vec(n).into_iter().map(BF16::from_f32).collect();
        gc.iter().zip(&grad).for_each(|(c, x)| c.set(*x));
        opt.step().unwrap();
        let gf: Vec<f32> = grad.iter().map(|x| x.to_f32()).collect();
        reference(&mut rp, &mut rs, &mut rb, &gf, &cfg);
        rp.iter_mut().for_each(|x| *x = BF16::from_f32(*x).to_f32());
    }
    for (got, want) in pc.iter().zip(&rp) {
        let got = got.get().to_f32();
        assert!((got - want).abs() <= 2.0 * want.abs() * 2f32.powi(-8) + 1e-30, "{got} vs {want}");
    }
    assert_eq!(Dtype::BF16.size(), 2);
}

#[test]
fn raw_pointer_api_on_host_memory() {
    let mut p = vec![1.0f32; 64];
    let g = vec![1.0f32; 64];
    {
        let mut opt = Optimizer::new(Variant::RMSprop, &Config::default(), Device::Cpu).unwrap();
        // SAFETY: p and g outlive opt and are not touched while it lives.
        unsafe {
            opt.add_param_raw(p.as_mut_ptr().cast(), g.as_ptr().cast(), Dtype::F32, p.len()).unwrap();
            opt.step_on_stream(std::ptr::null_mut()).unwrap();
            opt.set_grad_raw(0, std::ptr::null()).unwrap();
        }
        opt.step().unwrap(); // skipped: no grad
        assert_eq!(opt.get_step(0).unwrap(), 1);
    }
    assert!(p.iter().all(|x| *x < 1.0));
}

#[test]
fn dynamic_map_and_quantization() {
    let m = qrmsprop::dynamic_map(true).unwrap();
    assert!(m.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(m[255], 1.0);
    assert!(m.contains(&0.0));
    let u = qrmsprop::dynamic_map(false).unwrap();
    assert!(u[0] >= 0.0 && u[255] == 1.0);
    let x = Rng(3).vec(1000);
    let (codes, absmax) = qrmsprop::quantize_blockwise(&x, 256).unwrap();
    assert_eq!((codes.len(), absmax.len()), (1000, 4));
    let y = qrmsprop::dequantize_blockwise(&codes, &absmax, 256).unwrap();
    for (i, (a, b)) in x.iter().zip(&y).enumerate() {
        assert!((a - b).abs() <= 0.05 * absmax[i / 256], "{i}: {a} vs {b}");
    }
    let e = qrmsprop::quantize_blockwise(&x, 0).unwrap_err();
    assert!(e.message.contains("blocksize must be > 0"), "{}", e.message);
    qrmsprop::set_num_threads(1).unwrap();
    assert_eq!(qrmsprop::num_threads(), 1);
    qrmsprop::set_num_threads(0).unwrap();
}

#[test]
fn skip_nonfinite_skips_a_step_with_an_inf_grad() {
    for variant in [Variant::RMSprop32bit, Variant::RMSprop8bit] {
        let mut rng = Rng(21);
        let (n, m) = (8192, 100);
        let mut a = rng.vec(n);
        let mut b = rng.vec(m);
        let mut ga = rng.vec(n);
        let mut gb = rng.vec(m);
        let (ac, bc, gac, gbc) = (cells(&mut a), cells(&mut b), cells(&mut ga), cells(&mut gb));
        let cfg = Config { momentum: 0.9, skip_nonfinite: true, ..Config::default() };
        let mut opt = Optimizer::new(variant, &cfg, Device::Cpu).unwrap();
        opt.add_param(ac, Some(gac)).unwrap();
        opt.add_param(bc, Some(gbc)).unwrap();
        assert!(opt.param_config(0).unwrap().skip_nonfinite);
        assert!(!opt.read_found_inf().unwrap());
        opt.step().unwrap();
        assert!(!opt.read_found_inf().unwrap());
        assert_eq!((opt.get_step(0).unwrap(), opt.get_step(1).unwrap()), (1, 1));
        let flag = opt.found_inf_ptr().unwrap(); // host memory on the CPU
        assert!(!flag.is_null());
        assert_eq!(unsafe { flag.read_volatile() }, 0);
        let snapshot = |opt: &Optimizer| {
            (
                ac.iter().chain(bc).map(|c| c.get().to_bits()).collect::<Vec<u32>>(),
                opt.save().unwrap(),
                opt.read_state(1, StateKind::Momentum).unwrap(),
            )
        };
        let before = snapshot(&opt);
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            gbc[17].set(bad); // one element of the other parameter: the whole step is skipped
            opt.step().unwrap();
            assert!(opt.read_found_inf().unwrap());
            assert_eq!(unsafe { flag.read_volatile() }, 1);
            assert_eq!((opt.get_step(0).unwrap(), opt.get_step(1).unwrap()), (1, 1)); // not counted
            let after = snapshot(&opt);
            assert_eq!(after.0, before.0);
            assert_eq!(after.1, before.1);
            assert_eq!(
                after.2.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                before.2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        gbc[17].set(0.5);
        opt.step().unwrap();
        assert!(!opt.read_found_inf().unwrap());
        assert_eq!(unsafe { flag.read_volatile() }, 0);
        assert_eq!((opt.get_step(0).unwrap(), opt.get_step(1).unwrap()), (2, 2));
        assert!(ac.iter().chain(bc).all(|c| c.get().is_finite()));
        assert_ne!(snapshot(&opt).0, before.0);
    }

    // Off (the default): the inf propagates and the step counts.
    let mut p = vec![1.0f32; 16];
    let mut g = vec![1.0f32; 16];
    g[3] = f32::INFINITY;
    let mut opt = Optimizer::new(Variant::RMSprop, &Config::default(), Device::Cpu).unwrap();
    opt.add_param(cells(&mut p), Some(cells(&mut g))).unwrap();
    opt.step().unwrap();
    assert_eq!(opt.get_step(0).unwrap(), 1);
    assert!(!opt.read_found_inf().unwrap());
    drop(opt);
    assert!(p.iter().any(|x| !x.is_finite()));
}

#[test]
fn grad_unscale_multiplies_the_grads() {
    let n = 1000;
    let mut rng = Rng(31);
    let p0 = rng.vec(n);
    let grads: Vec<Vec<f32>> = (0..5).map(|_| rng.vec(n)).collect();
    let cfg = Config { skip_nonfinite: true, ..Config::default() };
    let (mut rp, mut rs, mut rb) = (p0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
    for gr in &grads {
        reference(&mut rp, &mut rs, &mut rb, gr, &cfg);
    }
    let mut p = p0.clone();
    let mut g = vec![0.0f32; n];
    let mut scale = 0.25f32;
    let (pc, gc, sc) = (cells(&mut p), cells(&mut g), Cell::from_mut(&mut scale));
    let mut opt = Optimizer::new(Variant::RMSprop, &cfg, Device::Cpu).unwrap();
    opt.add_param(pc, Some(gc)).unwrap();
    opt.set_grad_unscale(Some(sc)).unwrap();
    for gr in &grads {
        gc.iter().zip(gr).for_each(|(c, x)| c.set(x * 4.0)); // exact: unscaled by 0.25
        opt.step().unwrap();
    }
    let got: Vec<f32> = pc.iter().map(Cell::get).collect();
    assert_close(&got, &rp, 1e-5, 1e-6);
    assert_close(&opt.read_state(0, StateKind::SquareAvg).unwrap(), &rs, 1e-5, 1e-6);
    sc.set(f32::NAN); // read at every step: the step becomes non-finite and is skipped
    opt.step().unwrap();
    assert!(opt.read_found_inf().unwrap());
    assert_eq!(opt.get_step(0).unwrap(), 5);
    opt.set_grad_unscale(None).unwrap();
    opt.step().unwrap();
    assert!(!opt.read_found_inf().unwrap());
    assert_eq!(opt.get_step(0).unwrap(), 6);
    // SAFETY: null removes the factor.
    unsafe { opt.set_grad_unscale_raw(std::ptr::null()).unwrap() };
}

#[test]
fn stochastic_rounding_of_bf16_params_is_keyed_by_the_seed() {
    // Small updates on bf16 weights: round-to-nearest loses most of them;
    // stochastic rounding keeps their mean. The same seed gives the same
    // bits, another seed other bits.
    let n = 4096;
    let run = |cfg: &Config| -> Vec<u16> {
        let mut p = vec![BF16::from_f32(1.0); n];
        let mut g = vec![BF16::from_f32(1.0); n];
        let (pc, gc) = (cells(&mut p), cells(&mut g));
        let mut opt = Optimizer::new(Variant::RMSprop, cfg, Device::Cpu).unwrap();
        opt.add_param(pc, Some(gc)).unwrap();
        let got = opt.param_config(0).unwrap();
        assert_eq!((got.stochastic_rounding, got.seed), (cfg.stochastic_rounding, cfg.seed));
        for _ in 0..20 {
            opt.step().unwrap();
        }
        drop(opt);
        p.iter().map(|x| x.0).collect()
    };
    // With lr 1e-4 and a constant gradient the updates are 1e-3 and less,
    // below half of bf16's spacing under 1 (2^-9).
    let nearest = Config { lr: 1e-4, ..Config::default() };
    let sr = Config { lr: 1e-4, stochastic_rounding: true, seed: 42, ..Config::default() };
    let a = run(&sr);
    assert_eq!(a, run(&sr));
    assert_ne!(a, run(&Config { seed: 43, ..sr }));
    let mean = |v: &[u16]| v.iter().map(|&b| BF16(b).to_f32() as f64).sum::<f64>() / v.len() as f64;
    // The exact trajectory, in f32 (the same for every element):
    let mut rp = vec![1.0f32; 1];
    let (mut rs, mut rb) = (vec![0.0f32; 1], vec![0.0f32; 1]);
    for _ in 0..20 {
        reference(&mut rp, &mut rs, &mut rb, &[1.0], &sr);
    }
    let exact = rp[0] as f64;
    assert_eq!(mean(&run(&nearest)), 1.0); // every update below half a spacing: lost
    assert!((mean(&a) - exact).abs() < 0.1 * (1.0 - exact), "{} vs {}", mean(&a), exact);
}
