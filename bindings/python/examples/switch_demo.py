"""Switching from bitsandbytes to qrmsprop by changing the import.

    python switch_demo.py --backend bnb        # import bitsandbytes as bnb
    python switch_demo.py --backend qrmsprop   # import qrmsprop.torch as bnb

Everything below the import is the same code for both: a small regression
MLP trained with bnb.optim.RMSprop8bit (or --optimizer RMSprop /
RMSprop32bit), a checkpoint through state_dict()/torch.save/load_state_dict
halfway, and the loss printed along the way. Needs torch; bitsandbytes'
8-bit optimizers need a CUDA GPU in most of its versions, qrmsprop runs on
the CPU too (--device cpu).
"""
import argparse
import io

import torch

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--backend", choices=["bnb", "qrmsprop"], default="qrmsprop")
parser.add_argument("--optimizer", choices=["RMSprop8bit", "RMSprop32bit", "RMSprop"], default="RMSprop8bit")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--lr", type=float, default=1e-3)
args = parser.parse_args()

if args.backend == "bnb":
    import bitsandbytes as bnb
else:
    import qrmsprop.torch as bnb

torch.manual_seed(0)
device = torch.device(args.device)
# 64 -> 128 -> 1: the 8192-element first layer gets 8-bit state
# (min_8bit_size=4096), the small tensors keep 32-bit state, as in bitsandbytes.
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 1)).to(device)
x = torch.randn(512, 64, device=device)
w_true = torch.randn(64, 1, device=device) / 8
y = torch.tanh(x @ w_true) + 0.01 * torch.randn(512, 1, device=device)

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
print("backend %s (%s), optimizer %s, device %s" % (args.backend, bnb.__name__, args.optimizer, device))
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
print("checkpoint restored at step %d" % train.step)

train(args.steps - args.steps // 2)
with torch.no_grad():
    final = torch.nn.functional.mse_loss(model(x), y).item()
print("final loss %.6f" % final)
