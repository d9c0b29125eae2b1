//! Raw declarations of `include/qrmsprop/qrmsprop.h`, one to one. Everything
//! here is `unsafe` to call; the safe layer is the crate root.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_void};

pub type qrms_status_t = i32;
pub const QRMS_SUCCESS: qrms_status_t = 0;
pub const QRMS_ERROR_INVALID_ARGUMENT: qrms_status_t = 1;
pub const QRMS_ERROR_NOT_IMPLEMENTED: qrms_status_t = 2;
pub const QRMS_ERROR_DEVICE: qrms_status_t = 3;
pub const QRMS_ERROR_OUT_OF_MEMORY: qrms_status_t = 4;
pub const QRMS_ERROR_BAD_STATE: qrms_status_t = 5;
pub const QRMS_ERROR_INTERNAL: qrms_status_t = 6;

pub type qrms_dtype_t = i32;
pub const QRMS_FLOAT32: qrms_dtype_t = 0;
pub const QRMS_FLOAT16: qrms_dtype_t = 1;
pub const QRMS_BFLOAT16: qrms_dtype_t = 2;

pub type qrms_device_t = i32;
pub const QRMS_DEVICE_CPU: qrms_device_t = 0;
pub const QRMS_DEVICE_CUDA: qrms_device_t = 1;

pub type qrms_variant_t = i32;
pub const QRMS_RMSPROP: qrms_variant_t = 0;
pub const QRMS_RMSPROP_8BIT: qrms_variant_t = 1;
pub const QRMS_RMSPROP_32BIT: qrms_variant_t = 2;
pub const QRMS_RMSPROP_4BIT: qrms_variant_t = 3;

pub const QRMS_STATE_SQUARE_AVG: i32 = 0;
pub const QRMS_STATE_MOMENTUM: i32 = 1;

/// Values of `qrms_config::state_map`.
pub const QRMS_MAP_SIGNED: i32 = 0;
pub const QRMS_MAP_UNSIGNED: i32 = 1;

pub const QRMS_VERSION_MAJOR: u32 = 0;
pub const QRMS_VERSION_MINOR: u32 = 1;
pub const QRMS_VERSION_PATCH: u32 = 0;

/// `struct CUstream_st`: opaque; `qrms_stream_t` has the ABI of `cudaStream_t`.
#[repr(C)]
pub struct CUstream_st {
    _private: [u8; 0],
}
/// Null is the default stream; ignored on the CPU.
pub type qrms_stream_t = *mut CUstream_st;

/// `struct qrms_config` (SPEC section 2). `struct_size` must be
/// `size_of::<qrms_config>()`; `qrms_config_init_sized` fills the defaults.
/// The first published struct ended with `skip_zeros`
/// ([`QRMS_CONFIG_FIRST_SIZE`] bytes); the fields from `skip_nonfinite` on
/// were appended later.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct qrms_config {
    pub struct_size: usize,
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub centered: i32,
    pub optim_bits: i32,
    pub min_8bit_size: i64,
    pub percentile_clipping: i32,
    pub block_wise: i32,
    pub max_unorm: f32,
    pub skip_zeros: i32,
    /// Appended after the first published struct; optimizer-wide (ignored in
    /// per-parameter configs).
    pub skip_nonfinite: i32,
    /// Tail padding of the 72-byte layout, never read.
    pub reserved0: i32,
    /// Key of stochastic rounding (optimizer-wide).
    pub seed: u64,
    /// 1: stochastic rounding of 16-bit parameters (optimizer-wide).
    pub stochastic_rounding: i32,
    /// Tail padding of the 88-byte layout, never read.
    pub reserved1: i32,
    /// `QRMS_MAP_SIGNED` or `QRMS_MAP_UNSIGNED`: the map of 8-bit square-average state.
    pub state_map: i32,
}

/// `struct_size` of the first published `qrms_config` (the smallest the
/// library accepts): the offset of `skip_nonfinite`.
pub const QRMS_CONFIG_FIRST_SIZE: usize = std::mem::offset_of!(qrms_config, skip_nonfinite);

/// `struct qrms_update_params` (the core entry points on raw pointers).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct qrms_update_params {
    pub struct_size: usize,
    pub lr: f32,
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub max_unorm: f32,
    pub skip_zeros: i32,
}

/// `struct qrms_optimizer_s`: opaque.
#[repr(C)]
pub struct qrms_optimizer_s {
    _private: [u8; 0],
}
pub type qrms_optimizer_t = *mut qrms_optimizer_s;

extern "C" {
    pub fn qrms_version() -> u32;
    pub fn qrms_status_string(status: qrms_status_t) -> *const c_char;
    pub fn qrms_last_error() -> *const c_char;
    pub fn qrms_cuda_device_count() -> i32;
    pub fn qrms_set_num_threads(n: i32) -> qrms_status_t;
    pub fn qrms_get_num_threads() -> i32;

    pub fn qrms_config_init(cfg: *mut qrms_config);
    pub fn qrms_config_init_sized(cfg: *mut qrms_config, size: usize) -> qrms_status_t;

    pub fn qrms_optimizer_create(
        out: *mut qrms_optimizer_t,
        variant: qrms_variant_t,
        cfg: *const qrms_config,
        device: qrms_device_t,
        device_index: i32,
    ) -> qrms_status_t;
    pub fn qrms_optimizer_destroy(opt: qrms_optimizer_t);
    pub fn qrms_optimizer_add_param(
        opt: qrms_optimizer_t,
        param: *mut c_void,
        grad: *const c_void,
        dtype: qrms_dtype_t,
        numel: i64,
        index_out: *mut i64,
    ) -> qrms_status_t;
    pub fn qrms_optimizer_set_grad(opt: qrms_optimizer_t, index: i64, grad: *const c_void) -> qrms_status_t;
    pub fn qrms_optimizer_set_param_config(opt: qrms_optimizer_t, index: i64, cfg: *const qrms_config)
        -> qrms_status_t;
    pub fn qrms_optimizer_get_param_config(opt: qrms_optimizer_t, index: i64, cfg: *mut qrms_config) -> qrms_status_t;
    pub fn qrms_optimizer_set_lr(opt: qrms_optimizer_t, lr: f32) -> qrms_status_t;
    pub fn qrms_optimizer_step(opt: qrms_optimizer_t, stream: qrms_stream_t) -> qrms_status_t;
    pub fn qrms_optimizer_set_grad_unscale(opt: qrms_optimizer_t, unscale: *const f32) -> qrms_status_t;
    pub fn qrms_optimizer_found_inf(opt: qrms_optimizer_t, flag_out: *mut *const i32) -> qrms_status_t;
    pub fn qrms_optimizer_read_found_inf(opt: qrms_optimizer_t, found_out: *mut i32) -> qrms_status_t;
    pub fn qrms_optimizer_get_step(opt: qrms_optimizer_t, index: i64, step_out: *mut i64) -> qrms_status_t;
    pub fn qrms_optimizer_read_state(opt: qrms_optimizer_t, index: i64, which: i32, out: *mut f32) -> qrms_status_t;
    pub fn qrms_optimizer_state_bytes(opt: qrms_optimizer_t, bytes_out: *mut i64) -> qrms_status_t;
    pub fn qrms_optimizer_save(
        opt: qrms_optimizer_t,
        buffer: *mut c_void,
        capacity: usize,
        size_out: *mut usize,
    ) -> qrms_status_t;
    pub fn qrms_optimizer_load(opt: qrms_optimizer_t, buffer: *const c_void, size: usize) -> qrms_status_t;
    pub fn qrms_optimizer_param_count(opt: qrms_optimizer_t, count_out: *mut i64) -> qrms_status_t;
    pub fn qrms_optimizer_param_info(
        opt: qrms_optimizer_t,
        index: i64,
        numel_out: *mut i64,
        dtype_out: *mut qrms_dtype_t,
        state_bits_out: *mut i32,
    ) -> qrms_status_t;

    pub fn qrms_dynamic_map(is_signed: i32, out: *mut f32) -> qrms_status_t;
    pub fn qrms_quantize_blockwise(
        device: qrms_device_t,
        qmap: *const f32,
        input: *const f32,
        codes: *mut u8,
        absmax: *mut f32,
        n: i64,
        blocksize: i64,
        stream: qrms_stream_t,
    ) -> qrms_status_t;
    pub fn qrms_dequantize_blockwise(
        device: qrms_device_t,
        qmap: *const f32,
        codes: *const u8,
        absmax: *const f32,
        out: *mut f32,
        n: i64,
        blocksize: i64,
        stream: qrms_stream_t,
    ) -> qrms_status_t;

    pub fn qrms_update_params_init(hp: *mut qrms_update_params);
    pub fn qrms_update_32bit(
        device: qrms_device_t,
        dtype: qrms_dtype_t,
        param: *mut c_void,
        grad: *const c_void,
        square_avg: *mut f32,
        momentum_buf: *mut f32,
        n: i64,
        hp: *const qrms_update_params,
        gnorm_scale: *const f32,
        unorm: *mut f32,
        stream: qrms_stream_t,
    ) -> qrms_status_t;
    pub fn qrms_update_8bit_blockwise(
        device: qrms_device_t,
        dtype: qrms_dtype_t,
        param: *mut c_void,
        grad: *const c_void,
        square_avg_codes: *mut u8,
        square_avg_absmax: *mut f32,
        momentum_codes: *mut u8,
        momentum_absmax: *mut f32,
        qmap: *const f32,
        n: i64,
        hp: *const qrms_update_params,
        gnorm_scale: *const f32,
        unorm: *mut f32,
        stream: qrms_stream_t,
    ) -> qrms_status_t;
    pub fn qrms_update_8bit_tensor(
        device: qrms_device_t,
        dtype: qrms_dtype_t,
        param: *mut c_void,
        grad: *const c_void,
        square_avg_codes: *mut u8,
        square_avg_max: *mut f32,
        momentum_codes: *mut u8,
        momentum_max: *mut f32,
        qmap: *const f32,
        n: i64,
        hp: *const qrms_update_params,
        gnorm_scale: *const f32,
        unorm: *mut f32,
        stream: qrms_stream_t,
    ) -> qrms_status_t;
    pub fn qrms_update_4bit_blockwise(
        device: qrms_device_t,
        dtype: qrms_dtype_t,
        param: *mut c_void,
        grad: *const c_void,
        square_avg_codes: *mut u8,
        square_avg_absmax: *mut f32,
        momentum_codes: *mut u8,
        momentum_absmax: *mut f32,
        n: i64,
        hp: *const qrms_update_params,
        gnorm_scale: *const f32,
        unorm: *mut f32,
        stream: qrms_stream_t,
    ) -> qrms_status_t;
    pub fn qrms_percentile_clipping(
        device: qrms_device_t,
        dtype: qrms_dtype_t,
        grad: *const c_void,
        n: i64,
        gnorm_vec: *mut f32,
        step: *mut i64,
        percentile: i32,
        gnorm_scale: *mut f32,
        stream: qrms_stream_t,
    ) -> qrms_status_t;
}
