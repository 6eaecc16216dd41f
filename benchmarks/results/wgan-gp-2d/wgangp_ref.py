# An independent, plain-PyTorch WGAN-GP on ring8 with the engine's resolved settings, to tell
# "WGAN-GP fails here" from "ganfast's step is wrong". No ganfast import.
import math, sys, time
import torch
from torch import nn
torch.set_num_threads(1)
seed = int(sys.argv[1]); lr = float(sys.argv[2]); noise0 = float(sys.argv[3]); steps = int(sys.argv[4])
torch.manual_seed(seed)
ang = torch.arange(8) * 2 * math.pi / 8
modes = torch.stack([ang.cos(), ang.sin()], 1)
def data(n):
    return modes[torch.randint(0, 8, (n,))] + 0.01 * torch.randn(n, 2)
def mlp(i, o, act):
    return nn.Sequential(nn.Linear(i, 128), act(), nn.Linear(128, 128), act(), nn.Linear(128, 128), act(), nn.Linear(128, o))
G = mlp(8, 2, nn.ReLU); D = mlp(2, 1, lambda: nn.LeakyReLU(0.2))
og = torch.optim.Adam(G.parameters(), lr, betas=(0.0, 0.9)); od = torch.optim.Adam(D.parameters(), lr, betas=(0.0, 0.9))
B = 256
t0 = time.time()
for t in range(steps):
    f = min(1.0, 2.0 * (steps - t) / steps)
    for o in (og, od):
        for g in o.param_groups: g["lr"] = lr * f
    sigma = noise0 * max(0.0, 1.0 - t / (steps // 2))
    for k in range(5):
        real = data(B)
        with torch.no_grad():
            fake = G(torch.randn(B, 8))
        ri = real + sigma * torch.randn_like(real); fi = fake + sigma * torch.randn_like(fake)
        eps = torch.rand(B, 1)
        x = (eps * ri + (1 - eps) * fi).requires_grad_(True)
        gr, = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        gp = 10.0 * ((gr.norm(dim=1) - 1) ** 2).mean()
        loss = D(fi).mean() - D(ri).mean() + gp
        od.zero_grad(); loss.backward(); od.step()
    fake = G(torch.randn(B, 8))
    lg = -D(fake + sigma * torch.randn_like(fake)).mean()
    og.zero_grad(); lg.backward(); og.step()
    if t % 1000 == 999 or t == steps - 1:
        with torch.no_grad():
            s = G(torch.randn(2500, 8))
            d = torch.cdist(s, modes); dm, idx = d.min(1); hq = dm < 0.03
            print(f"step {t+1}: W {-loss.item() + gp.item():.4f} gp {gp.item():.4f} modes {len(idx[hq].unique())} "
                  f"hq {hq.float().mean().item():.4f} mean radius {s.norm(dim=1).mean():.3f} ({time.time()-t0:.0f} s)", flush=True)
