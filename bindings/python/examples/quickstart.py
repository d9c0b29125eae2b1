# Fit w to a target with qrmsprop's 8-bit RMSprop, numpy only.
import numpy as np
import qrmsprop

rng = np.random.default_rng(0)
target = rng.standard_normal(8192).astype(np.float32)
w = np.zeros(8192, dtype=np.float32)        # updated in place by step()
grad = np.empty_like(w)                      # the optimizer reads it at every step

opt = qrmsprop.Optimizer("rmsprop8bit", lr=1e-2, momentum=0.9)
opt.add_param(w, grad)                       # no copies: keep w and grad alive
start = 0.5 * float(np.sum((w - target) ** 2))
for it in range(300):
    np.subtract(w, target, out=grad)         # d/dw of 0.5 * ||w - target||^2
    opt.step()
loss = 0.5 * float(np.sum((w - target) ** 2))
print("steps %d, loss %.1f -> %.2g, state %d bytes" % (opt.get_step(0), start, loss, opt.state_bytes()))

blob = opt.save()                            # checkpoint: bytes
opt.load(blob)
try:
    qrmsprop.Optimizer(alpha=0.0)
except NotImplementedError as e:             # qrmsprop.QrmsError subclass too
    print("error:", e)
