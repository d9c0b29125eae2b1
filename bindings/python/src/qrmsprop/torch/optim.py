"""RMSprop, RMSprop8bit, RMSprop32bit and RMSprop4bit as torch.optim.Optimizer subclasses
with bitsandbytes' constructor signatures, running on libqrmsprop.

* Parameters are used in place (no copies). Each step points the library at
  every parameter's current .grad (None: the parameter is skipped and its step
  counter does not advance, as in torch.optim) and runs one library step per
  device; on CUDA it is enqueued on torch.cuda.current_stream().
* Param groups work as in torch/bitsandbytes: lr, betas = (alpha, momentum)
  (or 'alpha' / 'momentum' keys), eps and weight_decay are read from the
  group at every step, so LR schedulers work. GlobalOptimManager.override_config
  gives single parameters their own optim_bits, lr, ... as in bitsandbytes.
* Beyond bitsandbytes, keyword-only: state_map ('signed', the default, or
  'unsigned' for 8-bit square averages; per parameter through args or
  override_config too), stochastic_rounding and seed (float16 / bfloat16
  parameters rounded stochastically, reproducibly; optimizer-wide).
* state_dict() carries the library's checksummed save blob(s) as uint8
  tensors under the key 'qrmsprop'; load_state_dict() restores them. The
  format is qrmsprop's own: a bitsandbytes state dict cannot be loaded.
"""
import weakref

import torch

from .. import _lib
from .._errors import check
from ..optimizer import Optimizer as _QOptimizer

_ARG_KEYS = ("optim_bits", "min_8bit_size", "percentile_clipping", "block_wise", "max_unorm", "skip_zeros",
             "state_map")
_OVERRIDE_KEYS = ("lr", "betas", "alpha", "momentum", "eps", "weight_decay") + _ARG_KEYS
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_STATE_DICT_FORMAT = 1


class GlobalOptimManager:
    """bitsandbytes' GlobalOptimManager: per-parameter config overrides.

        mng = GlobalOptimManager.get_instance()
        mng.override_config(model.emb.weight, "optim_bits", 32)

    Overrides are looked up (by parameter identity) when an optimizer first
    steps, so register them before the first step."""

    _instance = None

    def __init__(self):
        raise RuntimeError("call GlobalOptimManager.get_instance()")

    def initialize(self):
        self.pid2config = {}  # id(param) -> config, as in bitsandbytes
        self._pid2ref = {}  # id(param) -> weakref, so a recycled id never matches another tensor
        self.module_weight_config_triple = []

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def register_parameters(self, params):
        """Accepted for bitsandbytes compatibility; overrides are keyed by the
        parameter itself, so registering is not needed."""

    def override_config(self, parameters, key=None, value=None, key_value_dict=None):
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        if key is not None and value is not None:
            assert key_value_dict is None, "give key/value or key_value_dict, not both"
            key_value_dict = {key: value}
        if key_value_dict is None:
            raise ValueError("override_config needs key and value, or key_value_dict")
        unknown = sorted(set(key_value_dict) - set(_OVERRIDE_KEYS))
        if unknown:
            raise ValueError("unknown override keys %s; known: %s" % (unknown, ", ".join(_OVERRIDE_KEYS)))
        for p in parameters:
            if self._pid2ref.get(id(p), lambda: None)() is not p:
                self.pid2config.pop(id(p), None)  # a dead tensor's entry
            self.pid2config.setdefault(id(p), {}).update(key_value_dict)
            self._pid2ref[id(p)] = weakref.ref(p)

    def config_for(self, p):
        """The override of parameter p (a dict) or None."""
        cfg = self.pid2config.get(id(p))
        if cfg is not None and self._pid2ref.get(id(p), lambda: None)() is not p:
            return None
        return cfg

    def register_module_override(self, module, param_name, config):
        self.module_weight_config_triple.append((module, param_name, config))
        self.override_config(getattr(module, param_name), key_value_dict=config)


class _Args:
    def __init__(self, optim_bits, min_8bit_size, percentile_clipping, block_wise, max_unorm, skip_zeros, state_map):
        self.state_map = state_map
        self.optim_bits = optim_bits
        self.min_8bit_size = min_8bit_size
        self.percentile_clipping = percentile_clipping
        self.block_wise = block_wise
        self.max_unorm = max_unorm
        self.skip_zeros = skip_zeros


def _args_value(args, key, default):
    if args is None:
        return default
    if isinstance(args, dict):
        return args.get(key, default)
    return getattr(args, key, default)


class _QrmsOptimizer(torch.optim.Optimizer):
    _variant = _lib.RMSPROP

    def __init__(self, params, lr, alpha, eps, weight_decay, momentum, centered, optim_bits, args,
                 min_8bit_size, percentile_clipping, block_wise, max_unorm, skip_zeros, state_map,
                 stochastic_rounding, seed):
        # The bitsandbytes checks first, with its messages; the library then
        # validates everything else the same way (ValueError / NotImplementedError).
        if alpha == 0:
            raise NotImplementedError("RMSprop with alpha==0.0 is not supported!")
        if centered:
            raise NotImplementedError("Centered RMSprop is not supported!")
        self._qrms_ready = False
        self.args = _Args(
            optim_bits=_args_value(args, "optim_bits", optim_bits),
            min_8bit_size=_args_value(args, "min_8bit_size", min_8bit_size),
            percentile_clipping=_args_value(args, "percentile_clipping", percentile_clipping),
            block_wise=_args_value(args, "block_wise", block_wise),
            max_unorm=_args_value(args, "max_unorm", max_unorm),
            skip_zeros=_args_value(args, "skip_zeros", skip_zeros),
            state_map=_args_value(args, "state_map", state_map),
        )
        # Optimizer-wide (not per group or parameter).
        self._qrms_wide = dict(stochastic_rounding=bool(stochastic_rounding), seed=seed)
        defaults = dict(lr=lr, betas=(alpha, momentum), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._qrms_base = self._group_config(self.defaults)
        _QOptimizer(self._variant, "cpu", **self._qrms_base).close()  # validates the config now
        for group in self.param_groups:
            _QOptimizer(self._variant, "cpu", **self._group_config(group)).close()

    # ---- configs --------------------------------------------------------------
    def _group_config(self, group):
        betas = group.get("betas", self.defaults["betas"])
        cfg = dict(
            lr=float(group["lr"]),
            alpha=float(group.get("alpha", betas[0])),
            momentum=float(group.get("momentum", betas[1])),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
        )
        for k in _ARG_KEYS:
            cfg[k] = getattr(self.args, k)
        cfg.update(self._qrms_wide)
        if self._variant == _lib.RMSPROP_8BIT:
            cfg["optim_bits"] = 8
        elif self._variant == _lib.RMSPROP_32BIT:
            cfg["optim_bits"] = 32
        elif self._variant == _lib.RMSPROP_4BIT:
            cfg["optim_bits"] = 4
        return cfg

    @staticmethod
    def _apply_override(cfg, override):
        if not override:
            return cfg
        cfg = dict(cfg)
        for k, v in override.items():
            if k == "betas":
                cfg["alpha"], cfg["momentum"] = float(v[0]), float(v[1])
            else:
                cfg[k] = v
        return cfg

    # ---- library objects ------------------------------------------------------------
    def _device_optimizer(self, device):
        key = (device.type, device.index if device.type == "cuda" else None)
        opt = self._qrms_opts.get(key)
        if opt is None:
            name = "cpu" if key[0] == "cpu" else "cuda:%d" % key[1]
            opt = _QOptimizer(self._variant, name, **self._qrms_base)
            self._qrms_opts[key] = opt
        return key, opt

    def _add_slots(self, group):
        for p in group["params"]:
            if id(p) in self._qrms_slot_of:
                continue  # torch only warns about a parameter listed twice in a group
            if p.dtype not in _DTYPES:
                raise ValueError("parameter of dtype %s: qrmsprop supports float32, float16 and bfloat16" % p.dtype)
            if not p.is_contiguous():
                raise ValueError("parameter of shape %s is not contiguous; qrmsprop updates contiguous "
                                 "parameters in place" % (tuple(p.shape),))
            if p.device.type not in ("cpu", "cuda"):
                raise ValueError("parameter on device %s: qrmsprop supports cpu and cuda" % p.device)
            key, opt = self._device_optimizer(p.device)
            index = opt.add_param(p.data)
            self._qrms_slots.append((p, key, opt, index, p.data_ptr()))
            self._qrms_slot_of[id(p)] = len(self._qrms_slots) - 1
            self._qrms_cfg_cache.append(None)

    def __getstate__(self):
        raise TypeError("%s holds library objects and cannot be pickled or deep-copied; checkpoint it with "
                        "state_dict() / load_state_dict()" % type(self).__name__)

    def _qrms_init(self):
        if self._qrms_ready:
            return
        self._qrms_opts = {}  # (device type, index) -> qrmsprop.Optimizer, in order of first use
        self._qrms_slots = []  # (param, device key, optimizer, library index, data_ptr)
        self._qrms_slot_of = {}
        self._qrms_cfg_cache = []  # last config pushed per slot
        try:
            for group in self.param_groups:
                self._add_slots(group)
        except BaseException:
            for opt in self._qrms_opts.values():
                opt.close()
            del self._qrms_opts, self._qrms_slots, self._qrms_slot_of, self._qrms_cfg_cache
            raise
        self._qrms_ready = True
        self._qrms_sync_configs()

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if getattr(self, "_qrms_ready", False):
            self._add_slots(self.param_groups[-1])
            self._qrms_sync_configs()

    def _qrms_sync_configs(self):
        """Pushes each parameter's config (group values + overrides) when it changed."""
        mng = GlobalOptimManager.get_instance()
        for group in self.param_groups:
            base = self._group_config(group)
            for p in group["params"]:
                slot = self._qrms_slot_of[id(p)]
                cfg = self._apply_override(base, mng.config_for(p))
                frozen = tuple(sorted(cfg.items()))
                if self._qrms_cfg_cache[slot] != frozen:
                    _, _, opt, index, _ = self._qrms_slots[slot]
                    opt.set_param_config(index, **cfg)
                    self._qrms_cfg_cache[slot] = frozen

    # ---- step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a .grad; returns closure()'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._qrms_init()
        self._qrms_sync_configs()
        temporaries = []  # contiguous copies of odd-layout grads, alive until enqueued
        for p, key, opt, index, ptr in self._qrms_slots:
            if p.data_ptr() != ptr:
                raise RuntimeError(
                    "a parameter's storage changed after it was given to the optimizer (p.data was "
                    "rebound); qrmsprop updates parameters in place: create the optimizer again")
            g = p.grad
            if g is not None:
                if g.is_sparse:
                    raise RuntimeError("qrmsprop does not support sparse gradients")
                if g.dtype != p.dtype:
                    raise ValueError("grad dtype %s differs from param dtype %s" % (g.dtype, p.dtype))
                if g.device != p.device:
                    raise ValueError("grad on %s but param on %s" % (g.device, p.device))
                if not g.is_contiguous():
                    g = g.contiguous()
                    temporaries.append(g)
            # Straight to the C call: the grad tensor's lifetime is torch's
            # business (it lives at least until the step below is enqueued).
            with opt._lock:
                check(opt._lib.qrms_optimizer_set_grad(opt._h(), index, g.data_ptr() if g is not None else None))
        for key, opt in self._qrms_opts.items():
            if key[0] == "cuda":
                with torch.cuda.device(key[1]):
                    opt.step(torch.cuda.current_stream(key[1]).cuda_stream)
            else:
                opt.step()
        del temporaries
        return loss

    # ---- introspection --------------------------------------------------------------
    def state_bytes(self):
        """Bytes of optimizer state held by the library, over all devices."""
        self._qrms_init()
        return sum(opt.state_bytes() for opt in self._qrms_opts.values())

    def get_step(self, p):
        """Steps taken by parameter p."""
        self._qrms_init()
        _, _, opt, index, _ = self._qrms_slots[self._qrms_slot_of[id(p)]]
        return opt.get_step(index)

    def read_state(self, p, which="square_avg"):
        """Parameter p's state, dequantized, as a float32 CPU tensor shaped like p."""
        self._qrms_init()
        _, _, opt, index, _ = self._qrms_slots[self._qrms_slot_of[id(p)]]
        return torch.from_numpy(opt.read_state(index, which)).reshape(p.shape)

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self):
        sd = super().state_dict()
        self._qrms_init()
        blobs = []
        for opt in self._qrms_opts.values():
            blobs.append(torch.frombuffer(bytearray(opt.save()), dtype=torch.uint8))
        sd["qrmsprop"] = {
            "format": _STATE_DICT_FORMAT,
            "devices": [opt.device for opt in self._qrms_opts.values()],
            "blobs": blobs,
        }
        return sd

    def load_state_dict(self, state_dict):
        q = state_dict.get("qrmsprop")
        if q is None:
            raise ValueError("this state dict has no 'qrmsprop' entry: it was not written by a qrmsprop "
                             "optimizer (bitsandbytes and torch.optim state cannot be loaded)")
        if q.get("format") != _STATE_DICT_FORMAT:
            raise ValueError("qrmsprop state dict format %r; this version reads %d" % (q.get("format"),
                                                                                     _STATE_DICT_FORMAT))
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, s in zip(self.param_groups, saved_groups):
            if len(g["params"]) != len(s["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                                 "of optimizer's group")
        self._qrms_init()
        blobs = q["blobs"]
        if len(blobs) != len(self._qrms_opts):
            raise ValueError("the state dict holds state for %d device(s) %s; this optimizer's parameters are "
                             "on %d device(s)" % (len(blobs), q.get("devices"), len(self._qrms_opts)))
        # Each blob is checked completely by the library before it changes anything.
        for blob, opt in zip(blobs, self._qrms_opts.values()):
            opt.load(blob)
        super().load_state_dict(state_dict)
        self._qrms_cfg_cache = [None] * len(self._qrms_slots)
        self._qrms_sync_configs()

    def __del__(self):
        for opt in getattr(self, "_qrms_opts", {}).values():
            opt.close()


class RMSprop(_QrmsOptimizer):
    """bitsandbytes.optim.RMSprop: optim_bits 32 (default), 8 or 4 (qrmsprop's 4-bit state)."""

    _variant = _lib.RMSPROP

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True, *,
                 max_unorm=0.0, skip_zeros=False, state_map="signed", stochastic_rounding=False, seed=0):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, optim_bits, args,
                         min_8bit_size, percentile_clipping, block_wise, max_unorm, skip_zeros,
                         state_map, stochastic_rounding, seed)


class RMSprop8bit(_QrmsOptimizer):
    """bitsandbytes.optim.RMSprop8bit: 8-bit state (tensors of at least min_8bit_size elements)."""

    _variant = _lib.RMSPROP_8BIT

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True, *,
                 max_unorm=0.0, skip_zeros=False, state_map="signed", stochastic_rounding=False, seed=0):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, 8, args,
                         min_8bit_size, percentile_clipping, block_wise, max_unorm, skip_zeros,
                         state_map, stochastic_rounding, seed)


class RMSprop32bit(_QrmsOptimizer):
    """bitsandbytes.optim.RMSprop32bit: 32-bit state."""

    _variant = _lib.RMSPROP_32BIT

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True, *,
                 max_unorm=0.0, skip_zeros=False, state_map="signed", stochastic_rounding=False, seed=0):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, 32, args,
                         min_8bit_size, percentile_clipping, block_wise, max_unorm, skip_zeros,
                         state_map, stochastic_rounding, seed)


class RMSprop4bit(_QrmsOptimizer):
    """qrmsprop's 4-bit state (no bitsandbytes counterpart): blocks of 128,
    a square-average map without a zero code, a signed map for the momentum
    buffer; tensors below min_8bit_size keep 32-bit state."""

    _variant = _lib.RMSPROP_4BIT

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True, *,
                 max_unorm=0.0, skip_zeros=False, state_map="signed", stochastic_rounding=False, seed=0):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, 4, args,
                         min_8bit_size, percentile_clipping, block_wise, max_unorm, skip_zeros,
                         state_map, stochastic_rounding, seed)
