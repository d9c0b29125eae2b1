"""Switching from bitsandbytes to qrmsprop by changing the import.

    python switch_demo.py --backend bnb        # runs: import bitsandbytes as bnb
    python switch_demo.py --backend qrmsprop   # runs: import qrmsprop.torch as bnb

Only that import line depends on --backend; everything below it is the same
code for both:

1. a small regression MLP trained with bnb.optim.RMSprop8bit (or --optimizer
   RMSprop / RMSprop32bit) and a StepLR schedule, checkpointed halfway
   through state_dict() / torch.save / load_state_dict() into a fresh
   optimizer, with the loss printed along the way;
2. bnb.optim.RMSprop32bit against torch.optim.RMSprop: two copies of a model,
   the same data and hyper-parameters, a few steps, the largest parameter
   difference printed.

Needs torch. qrmsprop runs on the CPU and on CUDA; bitsandbytes 0.50.2 also
steps RMSprop8bit / RMSprop32bit on the CPU (older versions needed CUDA for
their 8-bit optimizers).
"""
import argparse
import copy
import io

import torch

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--backend", choices=["bnb", "qrmsprop"], default="qrmsprop")
parser.add_argument("--optimizer", choices=["RMSprop8bit", "RMSprop32bit", "RMSprop"], default="RMSprop8bit")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--compare-steps", type=int, default=20)
parser.add_argument("--lr", type=float, default=1e-3)
args = parser.parse_args()

# ---- the one line that differs ----------------------------------------------
if args.backend == "bnb":
    import bitsandbytes as bnb
else:
    import qrmsprop.torch as bnb
# ------------------------------------------------------------------------------

package = __import__(bnb.__name__.split(".")[0])
print("torch %s, %s %s (as %s), optimizer %s, device %s" % (
    torch.__version__, package.__name__, package.__version__, bnb.__name__, args.optimizer, args.device))

torch.manual_seed(0)
device = torch.device(args.device)


def make_model():
    # 64 -> 128 -> 1: the 8192-element first layer gets 8-bit state
    # (min_8bit_size=4096), the small tensors keep 32-bit state, as in bitsandbytes.
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1)).to(device)


model = make_model()
x = torch.randn(512, 64, device=device)
w_true = torch.randn(64, 1, device=device) / 8
y = torch.tanh(x @ w_true) + 0.01 * torch.randn(512, 1, device=device)


def serialized_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


# ---- 1. training with a checkpoint halfway --------------------------------------
opt = getattr(bnb.optim, args.optimizer)(model.parameters(), lr=args.lr, alpha=0.99, eps=1e-8)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.steps // 2, gamma=0.5)


def train(steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        train.step += 1
        if train.step % 25 == 0 or train.step == 1:
            print("step %4d  loss %.6f  lr %.2e" % (train.step, loss.item(), opt.param_groups[0]["lr"]))


train.step = 0
train(args.steps // 2)

# Checkpoint and restore into a fresh optimizer, as a training job would.
buf = io.BytesIO()
torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
buf.seek(0)
ckpt = torch.load(buf, weights_only=False)  # our own checkpoint; bitsandbytes' state is not all tensors
model.load_state_dict(ckpt["model"])
opt = getattr(bnb.optim, args.optimizer)(model.parameters(), lr=args.lr, alpha=0.99, eps=1e-8)
opt.load_state_dict(ckpt["opt"])
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.steps // 2, gamma=0.5)
sched.load_state_dict(ckpt["sched"])
print("checkpoint restored at step %d (optimizer state_dict %d bytes through torch.save)" % (
    train.step, serialized_bytes(opt.state_dict())))

train(args.steps - args.steps // 2)
with torch.no_grad():
    final = torch.nn.functional.mse_loss(model(x), y).item()
print("final loss %.6f" % final)

# ---- 2. RMSprop32bit against torch.optim.RMSprop ------------------------------------
if args.compare_steps > 0:
    torch.manual_seed(1)
    ref_model = make_model()
    our_model = copy.deepcopy(ref_model)
    start = [p.detach().clone() for p in ref_model.parameters()]
    ours = bnb.optim.RMSprop32bit(our_model.parameters(), lr=args.lr, alpha=0.99, eps=1e-8)
    ref = torch.optim.RMSprop(ref_model.parameters(), lr=args.lr, alpha=0.99, eps=1e-8)
    print("RMSprop32bit vs torch.optim.RMSprop, lr %g, %d steps:" % (args.lr, args.compare_steps))
    for step in range(1, args.compare_steps + 1):
        losses = []
        for m, o in ((our_model, ours), (ref_model, ref)):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            o.step()
            losses.append(loss.item())
        if step in (1, 2, 5) or step % 10 == 0 or step == args.compare_steps:
            with torch.no_grad():
                diff = max((a - b).abs().max().item() for a, b in zip(our_model.parameters(),
                                                                       ref_model.parameters()))
                moved = max((b - s).abs().max().item() for b, s in zip(ref_model.parameters(), start))
            print("  step %3d  loss %.6f vs %.6f  max |param diff| %.2e  (max |param move| %.2e)" % (
                step, losses[0], losses[1], diff, moved))
