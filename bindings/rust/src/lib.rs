//! Safe Rust bindings for qrmsprop: RMSprop with 32-bit and 8-bit quantized
//! state (bitsandbytes' RMSprop / RMSprop8bit / RMSprop32bit) on the CPU and
//! on CUDA devices, through the library's C ABI ([`sys`]).
//!
//! ```no_run
//! use std::cell::Cell;
//! use qrmsprop::{Config, Device, Optimizer, Variant};
//!
//! let mut w = vec![0.0f32; 4096];
//! let mut g = vec![0.0f32; 4096];
//! // The optimizer and the caller share the buffers through `Cell`s: the
//! // library updates `w` in place and reads `g` at every step, while the
//! // caller keeps reading `w` and writing `g` between steps.
//! let w = Cell::from_mut(&mut w[..]).as_slice_of_cells();
//! let g = Cell::from_mut(&mut g[..]).as_slice_of_cells();
//! let cfg = Config { lr: 1e-2, ..Config::default() };
//! let mut opt = Optimizer::new(Variant::RMSprop8bit, &cfg, Device::Cpu)?;
//! opt.add_param(w, Some(g))?;
//! for _ in 0..100 {
//!     for (gi, wi) in g.iter().zip(w) {
//!         gi.set(wi.get() - 1.0); // d/dw of 0.5 * (w - 1)^2
//!     }
//!     opt.step()?;
//! }
//! # Ok::<(), qrmsprop::Error>(())
//! ```
//!
//! Device memory (CUDA) goes through the `unsafe` raw-pointer methods
//! ([`Optimizer::add_param_raw`], [`Optimizer::set_grad_raw`],
//! [`Optimizer::step_on_stream`]).
//!
//! Threads: an [`Optimizer`] is neither `Send` nor `Sync` (one optimizer must
//! never be used from two threads at once); different optimizers may run on
//! different threads. Error messages are per thread in the library and are
//! copied into [`Error`] right after the failing call.

pub mod sys;

use std::cell::Cell;
use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

// ---- errors ---------------------------------------------------------------

/// A failing status (`qrms_status_t` other than `QRMS_SUCCESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// QRMS_ERROR_INVALID_ARGUMENT
    InvalidArgument,
    /// QRMS_ERROR_NOT_IMPLEMENTED (alpha == 0, centered, optim_bits not 8/32)
    NotImplemented,
    /// QRMS_ERROR_DEVICE
    Device,
    /// QRMS_ERROR_OUT_OF_MEMORY
    OutOfMemory,
    /// QRMS_ERROR_BAD_STATE (a state blob `load` rejects)
    BadState,
    /// QRMS_ERROR_INTERNAL
    Internal,
    /// A code this binding does not know (from a newer library).
    Unknown(i32),
}

impl Status {
    /// The status for a C code; `None` for `QRMS_SUCCESS`.
    pub fn from_code(code: sys::qrms_status_t) -> Option<Status> {
        Some(match code {
            sys::QRMS_SUCCESS => return None,
            sys::QRMS_ERROR_INVALID_ARGUMENT => Status::InvalidArgument,
            sys::QRMS_ERROR_NOT_IMPLEMENTED => Status::NotImplemented,
            sys::QRMS_ERROR_DEVICE => Status::Device,
            sys::QRMS_ERROR_OUT_OF_MEMORY => Status::OutOfMemory,
            sys::QRMS_ERROR_BAD_STATE => Status::BadState,
            sys::QRMS_ERROR_INTERNAL => Status::Internal,
            other => Status::Unknown(other),
        })
    }

    /// The C code.
    pub fn code(self) -> sys::qrms_status_t {
        match self {
            Status::InvalidArgument => sys::QRMS_ERROR_INVALID_ARGUMENT,
            Status::NotImplemented => sys::QRMS_ERROR_NOT_IMPLEMENTED,
            Status::Device => sys::QRMS_ERROR_DEVICE,
            Status::OutOfMemory => sys::QRMS_ERROR_OUT_OF_MEMORY,
            Status::BadState => sys::QRMS_ERROR_BAD_STATE,
            Status::Internal => sys::QRMS_ERROR_INTERNAL,
            Status::Unknown(c) => c,
        }
    }

    /// `qrms_status_string`: a short static description.
    pub fn description(self) -> String {
        status_string(self.code())
    }
}

/// A failure: the status and the library's message (`qrms_last_error()` of
/// the calling thread, which names the function and the rule), or a message
/// of this binding for checks it makes itself (with `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status.description())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn c_string(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the library returns NUL-terminated strings that stay valid
        // until this thread's next failing call; we copy at once.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// `qrms_status_string(code)`.
pub fn status_string(code: sys::qrms_status_t) -> String {
    c_string(unsafe { sys::qrms_status_string(code) })
}

/// This thread's last failure message (`qrms_last_error()`), "" if none.
pub fn last_error() -> String {
    c_string(unsafe { sys::qrms_last_error() })
}

fn check(code: sys::qrms_status_t) -> Result<()> {
    match Status::from_code(code) {
        None => Ok(()),
        Some(status) => {
            let mut message = last_error();
            if message.is_empty() {
                message = status.description();
            }
            Err(Error { status, message })
        }
    }
}

fn invalid(message: String) -> Error {
    Error { status: Status::InvalidArgument, message }
}

fn to_i64(n: usize, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| invalid(format!("{what} {n} does not fit int64_t")))
}

// ---- small enums -------------------------------------------------------------

/// Which optimizer: `RMSprop` takes `optim_bits` from the config; the others
/// fix it to 8 and 32 (bitsandbytes' RMSprop8bit / RMSprop32bit) and 4
/// (4-bit block-wise state, qrmsprop's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    RMSprop,
    RMSprop8bit,
    RMSprop32bit,
    RMSprop4bit,
}

impl Variant {
    pub fn raw(self) -> sys::qrms_variant_t {
        match self {
            Variant::RMSprop => sys::QRMS_RMSPROP,
            Variant::RMSprop8bit => sys::QRMS_RMSPROP_8BIT,
            Variant::RMSprop32bit => sys::QRMS_RMSPROP_32BIT,
            Variant::RMSprop4bit => sys::QRMS_RMSPROP_4BIT,
        }
    }
}

/// Where the optimizer's state lives and its tensors must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device index.
    Cuda(i32),
}

impl Device {
    pub fn raw(self) -> (sys::qrms_device_t, i32) {
        match self {
            Device::Cpu => (sys::QRMS_DEVICE_CPU, 0),
            Device::Cuda(i) => (sys::QRMS_DEVICE_CUDA, i),
        }
    }
}

/// Element type of a parameter and its gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn raw(self) -> sys::qrms_dtype_t {
        match self {
            Dtype::F32 => sys::QRMS_FLOAT32,
            Dtype::F16 => sys::QRMS_FLOAT16,
            Dtype::BF16 => sys::QRMS_BFLOAT16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// The dtype of a C code; `None` for a code this binding does not know.
    pub fn from_raw(code: sys::qrms_dtype_t) -> Option<Dtype> {
        match code {
            sys::QRMS_FLOAT32 => Some(Dtype::F32),
            sys::QRMS_FLOAT16 => Some(Dtype::F16),
            sys::QRMS_BFLOAT16 => Some(Dtype::BF16),
            _ => None,
        }
    }
}

/// Which state buffer [`Optimizer::read_state`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    SquareAvg,
    Momentum,
}

impl StateKind {
    pub fn raw(self) -> i32 {
        match self {
            StateKind::SquareAvg => sys::QRMS_STATE_SQUARE_AVG,
            StateKind::Momentum => sys::QRMS_STATE_MOMENTUM,
        }
    }
}

// ---- element types -------------------------------------------------------------

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::F16 {}
    impl Sealed for super::BF16 {}
}

/// The element types the library updates: `f32`, [`F16`] and [`BF16`].
pub trait Element: Copy + sealed::Sealed {
    const DTYPE: Dtype;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

/// IEEE half precision, as its bits (std has no stable `f16`).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct F16(pub u16);

/// bfloat16, as its bits.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BF16(pub u16);

impl Element for F16 {
    const DTYPE: Dtype = Dtype::F16;
}

impl Element for BF16 {
    const DTYPE: Dtype = Dtype::BF16;
}

impl F16 {
    /// Rounds to nearest even; overflow gives infinity, NaN stays NaN.
    pub fn from_f32(x: f32) -> F16 {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32;
        let man = b & 0x007f_ffff;
        if exp == 0xff {
            let nan = if man != 0 { 0x0200 | (man >> 13) as u16 } else { 0 };
            return F16(sign | 0x7c00 | nan);
        }
        let e = exp - 127 + 15;
        if e >= 0x1f {
            return F16(sign | 0x7c00);
        }
        if e <= 0 {
            if e < -10 {
                return F16(sign);
            }
            let m = man | 0x0080_0000;
            let shift = (14 - e) as u32;
            let mut h = m >> shift;
            let rem = m & ((1u32 << shift) - 1);
            let halfway = 1u32 << (shift - 1);
            if rem > halfway || (rem == halfway && (h & 1) == 1) {
                h += 1;
            }
            return F16(sign | h as u16);
        }
        let mut h = ((e as u32) << 10) | (man >> 13);
        let rem = man & 0x1fff;
        if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) {
            h += 1; // may carry into the exponent, up to infinity: correct
        }
        F16(sign | h as u16)
    }

    pub fn to_f32(self) -> f32 {
        let h = self.0 as u32;
        let sign = (h & 0x8000) << 16;
        let exp = (h >> 10) & 0x1f;
        let man = h & 0x3ff;
        if exp == 0 {
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        let bits =
            if exp == 0x1f { sign | 0x7f80_0000 | (man << 13) } else { sign | ((exp + 127 - 15) << 23) | (man << 13) };
        f32::from_bits(bits)
    }
}

impl BF16 {
    /// Rounds to nearest even; NaN stays (quiet) NaN.
    pub fn from_f32(x: f32) -> BF16 {
        let b = x.to_bits();
        if x.is_nan() {
            return BF16(((b >> 16) as u16) | 0x0040);
        }
        let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
        BF16((rounded >> 16) as u16)
    }

    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

// ---- configuration ---------------------------------------------------------------

/// The map of 8-bit square-average state (`qrms_config.state_map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateMap {
    /// bitsandbytes' signed dynamic map (the default: bitsandbytes' results).
    #[default]
    Signed,
    /// The unsigned dynamic map: all 256 codes for the non-negative square
    /// average, about twice the resolution. Momentum buffers stay signed.
    Unsigned,
}

impl StateMap {
    /// The map for a C code (`QRMS_MAP_*`); `None` for a code this binding
    /// does not know (from a newer library).
    pub fn from_raw(code: i32) -> Option<StateMap> {
        match code {
            sys::QRMS_MAP_SIGNED => Some(StateMap::Signed),
            sys::QRMS_MAP_UNSIGNED => Some(StateMap::Unsigned),
            _ => None,
        }
    }
}

/// Hyper-parameters, with bitsandbytes' names (SPEC section 2).
/// `Config::default()` is the SPEC default (the same as `qrms_config_init`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub centered: bool,
    pub optim_bits: i32,
    pub min_8bit_size: i64,
    pub percentile_clipping: i32,
    pub block_wise: bool,
    pub max_unorm: f32,
    pub skip_zeros: bool,
    /// A step whose gradients (times the unscale factor, if one is set) hold
    /// an inf or NaN changes nothing, for every parameter, and sets the
    /// found-inf flag ([`Optimizer::read_found_inf`]). Optimizer-wide: read by
    /// [`Optimizer::new`], ignored by [`Optimizer::set_param_config`].
    pub skip_nonfinite: bool,
    /// The final rounding of a float16 / bfloat16 parameter is
    /// unbiased-stochastic instead of to nearest even, with random bits from
    /// Philox keyed by `seed`, the step and the element's index: reproducible,
    /// and the same on the CPU and a GPU. Optimizer-wide, as `skip_nonfinite`.
    pub stochastic_rounding: bool,
    /// Key of the stochastic rounding generator (any value).
    pub seed: u64,
    /// The map of 8-bit square-average state (per parameter; 32-bit and 4-bit
    /// state ignore it).
    pub state_map: StateMap,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            optim_bits: 32,
            min_8bit_size: 4096,
            percentile_clipping: 100,
            block_wise: true,
            max_unorm: 0.0,
            skip_zeros: false,
            skip_nonfinite: false,
            stochastic_rounding: false,
            seed: 0,
            state_map: StateMap::Signed,
        }
    }
}

impl Config {
    /// The C struct, with `struct_size` set to this binding's size.
    pub fn to_raw(&self) -> sys::qrms_config {
        sys::qrms_config {
            struct_size: std::mem::size_of::<sys::qrms_config>(),
            lr: self.lr,
            alpha: self.alpha,
            eps: self.eps,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            centered: self.centered as i32,
            optim_bits: self.optim_bits,
            min_8bit_size: self.min_8bit_size,
            percentile_clipping: self.percentile_clipping,
            block_wise: self.block_wise as i32,
            max_unorm: self.max_unorm,
            skip_zeros: self.skip_zeros as i32,
            skip_nonfinite: self.skip_nonfinite as i32,
            reserved0: 0,
            seed: self.seed,
            stochastic_rounding: self.stochastic_rounding as i32,
            reserved1: 0,
            state_map: match self.state_map {
                StateMap::Signed => sys::QRMS_MAP_SIGNED,
                StateMap::Unsigned => sys::QRMS_MAP_UNSIGNED,
            },
        }
    }

    /// The fields of a C struct. A `state_map` this binding does not know
    /// reads as [`StateMap::Signed`]; [`Config::try_from_raw`] refuses it
    /// instead (what [`Optimizer::param_config`] uses, so that a get and set
    /// never changes a parameter's map behind the caller's back).
    pub fn from_raw(c: &sys::qrms_config) -> Config {
        Config {
            lr: c.lr,
            alpha: c.alpha,
            eps: c.eps,
            weight_decay: c.weight_decay,
            momentum: c.momentum,
            centered: c.centered != 0,
            optim_bits: c.optim_bits,
            min_8bit_size: c.min_8bit_size,
            percentile_clipping: c.percentile_clipping,
            block_wise: c.block_wise != 0,
            max_unorm: c.max_unorm,
            skip_zeros: c.skip_zeros != 0,
            skip_nonfinite: c.skip_nonfinite != 0,
            stochastic_rounding: c.stochastic_rounding != 0,
            seed: c.seed,
            state_map: StateMap::from_raw(c.state_map).unwrap_or(StateMap::Signed),
        }
    }

    /// [`Config::from_raw`], or an error (`Status::NotImplemented`) when the
    /// struct holds a `state_map` this binding does not know.
    pub fn try_from_raw(c: &sys::qrms_config) -> Result<Config> {
        if StateMap::from_raw(c.state_map).is_none() {
            return Err(Error {
                status: Status::NotImplemented,
                message: format!(
                    "state_map code {} is not known to this binding (a newer libqrmsprop?); \
                     it knows QRMS_MAP_SIGNED and QRMS_MAP_UNSIGNED",
                    c.state_map
                ),
            });
        }
        Ok(Config::from_raw(c))
    }

    /// The loaded library's defaults (`qrms_config_init_sized`, which writes
    /// at most this binding's struct).
    pub fn library_defaults() -> Config {
        let mut raw = Config::default().to_raw();
        let status = unsafe { sys::qrms_config_init_sized(&mut raw, std::mem::size_of::<sys::qrms_config>()) };
        assert_eq!(status, sys::QRMS_SUCCESS, "qrms_config_init_sized: {}", last_error());
        Config::from_raw(&raw)
    }
}

// ---- the optimizer ------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct ParamSlot {
    dtype: Dtype,
    numel: usize,
}

/// What a parameter is ([`Optimizer::param_info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamInfo {
    pub numel: usize,
    pub dtype: Dtype,
    /// Precision of its state: 4, 8 or 32.
    pub state_bits: i32,
}

/// An RMSprop optimizer of the library (`qrms_optimizer_t`), freed on drop.
///
/// `'a` is the lifetime of the host buffers given to [`Optimizer::add_param`]
/// and [`Optimizer::set_grad`]: the optimizer keeps pointers into them and
/// uses them at every [`Optimizer::step`], so they must outlive it. They are
/// shared as `&[Cell<T>]`, which lets the caller read parameters and write
/// gradients between steps without unsafe code.
pub struct Optimizer<'a> {
    raw: NonNull<sys::qrms_optimizer_s>,
    device: Device,
    params: Vec<ParamSlot>,
    _buffers: PhantomData<&'a [Cell<u8>]>,
}

impl<'a> Optimizer<'a> {
    /// `qrms_optimizer_create`.
    pub fn new(variant: Variant, config: &Config, device: Device) -> Result<Optimizer<'a>> {
        let cfg = config.to_raw();
        let (dev, index) = device.raw();
        let mut handle: sys::qrms_optimizer_t = ptr::null_mut();
        check(unsafe { sys::qrms_optimizer_create(&mut handle, variant.raw(), &cfg, dev, index) })?;
        let raw = NonNull::new(handle).ok_or_else(|| Error {
            status: Status::Internal,
            message: "qrms_optimizer_create succeeded but returned NULL".into(),
        })?;
        Ok(Optimizer { raw, device, params: Vec::new(), _buffers: PhantomData })
    }

    /// The C handle, for calls this binding does not wrap. It stays owned by `self`.
    pub fn as_raw(&self) -> sys::qrms_optimizer_t {
        self.raw.as_ptr()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn info(&self, index: usize) -> Result<ParamSlot> {
        self.params.get(index).copied().ok_or_else(|| {
            let n = self.params.len();
            invalid(format!(
                "parameter index {index} out of range (the optimizer has {n} parameter{})",
                if n == 1 { "" } else { "s" }
            ))
        })
    }

    fn require_cpu(&self, what: &str) -> Result<()> {
        match self.device {
            Device::Cpu => Ok(()),
            Device::Cuda(_) => Err(Error {
                status: Status::Device,
                message: format!("{what}: slices are host memory but this optimizer is on {:?}; use the raw-pointer methods with device memory", self.device),
            }),
        }
    }

    /// Registers a host parameter (updated in place by every step) and its
    /// gradient (`None`: set it later; a parameter without a gradient is
    /// skipped by step). Returns its index (0, 1, ... in call order).
    pub fn add_param<T: Element>(&mut self, param: &'a [Cell<T>], grad: Option<&'a [Cell<T>]>) -> Result<usize> {
        self.require_cpu("add_param")?;
        if let Some(g) = grad {
            if g.len() != param.len() {
                return Err(invalid(format!(
                    "add_param: grad has {} elements but the param has {}",
                    g.len(),
                    param.len()
                )));
            }
        }
        let g = grad.map_or(ptr::null(), |g| g.as_ptr() as *const c_void);
        // SAFETY: the slices are valid host memory of T for 'a, which outlives self;
        // Cell allows the library to write through the shared borrow.
        unsafe { self.add_param_raw(param.as_ptr() as *mut c_void, g, T::DTYPE, param.len()) }
    }

    /// Registers a parameter given by raw pointers (device memory for a CUDA
    /// optimizer, host memory for the CPU).
    ///
    /// # Safety
    /// `param` (and `grad` unless null) must point to `numel` elements of
    /// `dtype` on this optimizer's device, and stay valid, and not be used
    /// concurrently with a step, until this optimizer is dropped (for `grad`:
    /// or until [`Optimizer::set_grad_raw`] replaces it).
    pub unsafe fn add_param_raw(
        &mut self,
        param: *mut c_void,
        grad: *const c_void,
        dtype: Dtype,
        numel: usize,
    ) -> Result<usize> {
        let n = to_i64(numel, "numel")?;
        let mut index: i64 = -1;
        check(sys::qrms_optimizer_add_param(self.as_raw(), param, grad, dtype.raw(), n, &mut index))?;
        debug_assert_eq!(index as usize, self.params.len());
        self.params.push(ParamSlot { dtype, numel });
        Ok(index as usize)
    }

    /// Points parameter `index` at a new host gradient (`None`: the parameter
    /// is skipped by step and its step counter does not advance).
    pub fn set_grad<T: Element>(&mut self, index: usize, grad: Option<&'a [Cell<T>]>) -> Result<()> {
        self.require_cpu("set_grad")?;
        let info = self.info(index)?;
        if let Some(g) = grad {
            if T::DTYPE != info.dtype {
                return Err(invalid(format!(
                    "set_grad: grad is {:?} but parameter {index} is {:?}",
                    T::DTYPE,
                    info.dtype
                )));
            }
            if g.len() != info.numel {
                return Err(invalid(format!(
                    "set_grad: grad has {} elements but parameter {index} has {}",
                    g.len(),
                    info.numel
                )));
            }
        }
        let g = grad.map_or(ptr::null(), |g| g.as_ptr() as *const c_void);
        // SAFETY: as in add_param.
        unsafe { self.set_grad_raw(index, g) }
    }

    /// Sets the gradient pointer of parameter `index` (null clears it).
    ///
    /// # Safety
    /// As for [`Optimizer::add_param_raw`]: `numel` elements of the
    /// parameter's dtype on this optimizer's device, valid until replaced or
    /// until the optimizer is dropped.
    pub unsafe fn set_grad_raw(&mut self, index: usize, grad: *const c_void) -> Result<()> {
        let i = to_i64(index, "index")?;
        check(sys::qrms_optimizer_set_grad(self.as_raw(), i, grad))
    }

    /// Gives parameter `index` its own configuration (bitsandbytes'
    /// override_config). Its `optim_bits` is used as given, even in an
    /// RMSprop8bit/RMSprop32bit optimizer; precision, momentum on/off,
    /// clipping and max_unorm can only change before the parameter's first step.
    pub fn set_param_config(&mut self, index: usize, config: &Config) -> Result<()> {
        let i = to_i64(index, "index")?;
        let cfg = config.to_raw();
        check(unsafe { sys::qrms_optimizer_set_param_config(self.as_raw(), i, &cfg) })
    }

    /// The configuration parameter `index` uses (its own, or the optimizer's).
    /// To override a few fields: get, change them, [`Optimizer::set_param_config`].
    pub fn param_config(&self, index: usize) -> Result<Config> {
        let i = to_i64(index, "index")?;
        let mut cfg = Config::default().to_raw(); // struct_size = ours; the library writes at most that
        check(unsafe { sys::qrms_optimizer_get_param_config(self.as_raw(), i, &mut cfg) })?;
        Config::try_from_raw(&cfg)
    }

    /// Sets the learning rate of every parameter, own configs included.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        check(unsafe { sys::qrms_optimizer_set_lr(self.as_raw(), lr) })
    }

    /// One update of every parameter whose gradient is set, on the default
    /// stream (CUDA: enqueued only; synchronise before reading the results).
    pub fn step(&mut self) -> Result<()> {
        check(unsafe { sys::qrms_optimizer_step(self.as_raw(), ptr::null_mut()) })
    }

    /// One step enqueued on a CUDA stream (`cudaStream_t`; null = the
    /// default stream; ignored on the CPU).
    ///
    /// # Safety
    /// `stream` must be null or a live stream of this optimizer's device.
    pub unsafe fn step_on_stream(&mut self, stream: *mut c_void) -> Result<()> {
        check(sys::qrms_optimizer_step(self.as_raw(), stream as sys::qrms_stream_t))
    }

    /// Multiplies every gradient by the f32 at `unscale` (before clipping,
    /// the non-finite check and the update); null removes the factor. Every
    /// step reads the value on the device, so it may change between steps.
    ///
    /// # Safety
    /// `unscale` must be null or point to an f32 on this optimizer's device
    /// that stays valid, and is not written concurrently with a step, until
    /// it is replaced or removed or the optimizer is dropped.
    pub unsafe fn set_grad_unscale_raw(&mut self, unscale: *const f32) -> Result<()> {
        check(sys::qrms_optimizer_set_grad_unscale(self.as_raw(), unscale))
    }

    /// [`Optimizer::set_grad_unscale_raw`] with a host value (CPU optimizers):
    /// the caller may change it between steps; `None` removes the factor.
    pub fn set_grad_unscale(&mut self, unscale: Option<&'a Cell<f32>>) -> Result<()> {
        self.require_cpu("set_grad_unscale")?;
        let p = unscale.map_or(ptr::null(), |c| c.as_ptr() as *const f32);
        // SAFETY: host memory living for 'a, which outlives self; Cell makes
        // the shared access between the caller and the library sound.
        unsafe { self.set_grad_unscale_raw(p) }
    }

    /// The found-inf flag copied to the host (synchronises): `true` when the
    /// last step was skipped for an inf/NaN gradient (`skip_nonfinite`).
    pub fn read_found_inf(&self) -> Result<bool> {
        let mut found = 0i32;
        check(unsafe { sys::qrms_optimizer_read_found_inf(self.as_raw(), &mut found) })?;
        Ok(found != 0)
    }

    /// The address of the found-inf flag, an `i32` on this optimizer's device
    /// (host memory on the CPU), for reading it without a host
    /// synchronisation. Valid while the optimizer lives.
    pub fn found_inf_ptr(&self) -> Result<*const i32> {
        let mut p: *const i32 = ptr::null();
        check(unsafe { sys::qrms_optimizer_found_inf(self.as_raw(), &mut p) })?;
        Ok(p)
    }

    /// Numel, dtype and state precision of parameter `index`, as the library
    /// sees them (`qrms_optimizer_param_info`).
    pub fn param_info(&self, index: usize) -> Result<ParamInfo> {
        let i = to_i64(index, "index")?;
        let (mut numel, mut dtype, mut bits) = (0i64, 0i32, 0i32);
        check(unsafe { sys::qrms_optimizer_param_info(self.as_raw(), i, &mut numel, &mut dtype, &mut bits) })?;
        let dtype = Dtype::from_raw(dtype).ok_or_else(|| Error {
            status: Status::Internal,
            message: format!("qrms_optimizer_param_info: unknown dtype code {dtype}"),
        })?;
        Ok(ParamInfo { numel: numel as usize, dtype, state_bits: bits })
    }

    /// Number of parameters added (the same as `qrms_optimizer_param_count`).
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// Steps taken by parameter `index`.
    pub fn get_step(&self, index: usize) -> Result<i64> {
        let i = to_i64(index, "index")?;
        let mut step = 0i64;
        check(unsafe { sys::qrms_optimizer_get_step(self.as_raw(), i, &mut step) })?;
        Ok(step)
    }

    /// State `which` of parameter `index`, dequantized to f32 (synchronises
    /// with the device).
    pub fn read_state(&self, index: usize, which: StateKind) -> Result<Vec<f32>> {
        let info = self.info(index)?;
        let mut out = vec![0.0f32; info.numel];
        check(unsafe { sys::qrms_optimizer_read_state(self.as_raw(), index as i64, which.raw(), out.as_mut_ptr()) })?;
        Ok(out)
    }

    /// Bytes of state the optimizer holds on its device.
    pub fn state_bytes(&self) -> Result<u64> {
        let mut n = 0i64;
        check(unsafe { sys::qrms_optimizer_state_bytes(self.as_raw(), &mut n) })?;
        Ok(n as u64)
    }

    /// All state as a versioned, checksummed blob.
    pub fn save(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        check(unsafe { sys::qrms_optimizer_save(self.as_raw(), ptr::null_mut(), 0, &mut size) })?;
        let mut blob = vec![0u8; size];
        check(unsafe {
            sys::qrms_optimizer_save(self.as_raw(), blob.as_mut_ptr() as *mut c_void, blob.len(), &mut size)
        })?;
        blob.truncate(size);
        Ok(blob)
    }

    /// Restores what [`Optimizer::save`] wrote. A bad blob is
    /// `Status::BadState` and leaves the optimizer as it was.
    pub fn load(&mut self, blob: &[u8]) -> Result<()> {
        check(unsafe { sys::qrms_optimizer_load(self.as_raw(), blob.as_ptr() as *const c_void, blob.len()) })
    }
}

impl Drop for Optimizer<'_> {
    fn drop(&mut self) {
        unsafe { sys::qrms_optimizer_destroy(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Optimizer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer").field("device", &self.device).field("params", &self.params.len()).finish()
    }
}

// ---- library-wide functions ---------------------------------------------------------

/// (major, minor, patch) of the loaded library.
pub fn version() -> (u32, u32, u32) {
    let v = unsafe { sys::qrms_version() };
    (v / 10000, (v / 100) % 100, v % 100)
}

/// CUDA devices the library can use (0 without CUDA support or devices).
pub fn cuda_device_count() -> i32 {
    unsafe { sys::qrms_cuda_device_count() }
}

/// Threads of the CPU backend; `n <= 0` restores the default.
pub fn set_num_threads(n: i32) -> Result<()> {
    check(unsafe { sys::qrms_set_num_threads(n) })
}

pub fn num_threads() -> i32 {
    unsafe { sys::qrms_get_num_threads() }
}

/// bitsandbytes' `create_dynamic_map(signed, 7, 8)`: 256 ascending values.
pub fn dynamic_map(signed: bool) -> Result<[f32; 256]> {
    let mut out = [0.0f32; 256];
    check(unsafe { sys::qrms_dynamic_map(signed as i32, out.as_mut_ptr()) })?;
    Ok(out)
}

/// CPU block-wise quantization against the signed dynamic map: (codes,
/// absmax per block of `blocksize`).
pub fn quantize_blockwise(input: &[f32], blocksize: usize) -> Result<(Vec<u8>, Vec<f32>)> {
    let qmap = dynamic_map(true)?;
    let blocks = if blocksize == 0 { 1 } else { input.len().div_ceil(blocksize).max(1) };
    let mut codes = vec![0u8; input.len()];
    let mut absmax = vec![0.0f32; blocks];
    check(unsafe {
        sys::qrms_quantize_blockwise(
            sys::QRMS_DEVICE_CPU,
            qmap.as_ptr(),
            input.as_ptr(),
            codes.as_mut_ptr(),
            absmax.as_mut_ptr(),
            to_i64(input.len(), "n")?,
            to_i64(blocksize, "blocksize")?,
            ptr::null_mut(),
        )
    })?;
    Ok((codes, absmax))
}

/// Inverse of [`quantize_blockwise`].
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], blocksize: usize) -> Result<Vec<f32>> {
    if blocksize > 0 && absmax.len() < codes.len().div_ceil(blocksize) {
        return Err(invalid(format!(
            "absmax has {} entries; {} codes in blocks of {blocksize} need {}",
            absmax.len(),
            codes.len(),
            codes.len().div_ceil(blocksize)
        )));
    }
    let qmap = dynamic_map(true)?;
    let mut out = vec![0.0f32; codes.len()];
    check(unsafe {
        sys::qrms_dequantize_blockwise(
            sys::QRMS_DEVICE_CPU,
            qmap.as_ptr(),
            codes.as_ptr(),
            absmax.as_ptr(),
            out.as_mut_ptr(),
            to_i64(codes.len(), "n")?,
            to_i64(blocksize, "blocksize")?,
            ptr::null_mut(),
        )
    })?;
    Ok(out)
}
