"""SGRE with 5,000 labels: the fused head trains in memory the naive formulation exceeds, and a 5,000-label CSV dataset
is prepared, embedded (MiniLM, offline) and batched with its label lists kept sparse until a batch is made."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', OMP_NUM_THREADS='1')
C, B, IMG = 5000, 4, 64          # resnet10t at output stride 8: an 8 x 8 map, N = 64 tokens of D = 512
N, A, T = 64, 256, 384

# One process per formulation: two training steps (forward, loss, backward, AdamW) at C = 5,000; the peak is the
# process's high-water mark of resident memory (VmHWM) over the steps, above its resident memory once the model,
# the optimizer and the batch exist.
CHILD = r'''
import json, sys, torch
from sgre.loss import SGRELoss
from sgre.model import SGRE
impl, C, B, IMG, A, T = sys.argv[1], *map(int, sys.argv[2:7])
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
torch.manual_seed(0)
model = SGRE('resnet10t', C, embeddings=torch.randn(C, T), attn_dim=A, num_heads=2, output_stride=8, attn_impl=impl).train()
x, y = torch.randn(B, 3, IMG, IMG), (torch.rand(B, C) < 5 / C).float()
opt, loss_fn = torch.optim.AdamW(model.parameters(), lr=1e-4), SGRELoss()
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS')
losses = []
for _ in range(2):
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
print(json.dumps(dict(peak=status('VmHWM') - base, losses=losses, shape=list(out.logits.shape))))
'''


def _peak(impl: str) -> dict:
    r = subprocess.run([sys.executable, '-c', CHILD, impl, str(C), str(B), str(IMG), str(A), str(T)],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_fused_head_memory_at_5000_classes():
    "The fused head stays under the size of the naive formulation's (B, C, N, A) tensor; the naive one exceeds it."
    bound = B * C * N * A * 4                     # one float32 (B, C, N, A) tensor: 1.3 GB here
    fused = _peak('fused')
    print(f'C = {C}: fused peak {fused["peak"] / 2**20:.0f} MiB; bound {bound / 2**20:.0f} MiB', end='')
    assert fused['shape'] == [B, C] and all(np.isfinite(fused['losses'])), fused
    assert fused['peak'] < bound, (fused['peak'], bound)
    naive = _peak('naive')
    print(f'; naive peak {naive["peak"] / 2**20:.0f} MiB')
    assert naive['peak'] > bound, (naive['peak'], bound)  # the bound means something: the naive form needs more
    assert np.allclose(naive['losses'], fused['losses'], rtol=1e-4), (naive['losses'], fused['losses'])   # same model


@pytest.fixture(scope='module')
def big_vocab(tmp_path_factory):
    "A CSV dataset of 1,250 small images with 4 of 5,000 labels each (every label on exactly one image)."
    root = tmp_path_factory.mktemp('vocab')
    images = root / 'imgs'
    images.mkdir()
    rng = np.random.default_rng(0)
    names = [f'tag{k:04d}' for k in range(C)]
    order = rng.permutation(C)
    rows = ['fname,labels']
    for i in range(C // 4):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f'{i:04d}.png')
        rows.append(f'{i:04d}.png,' + ' '.join(names[k] for k in order[4 * i:4 * i + 4]))
    (root / 'tags.csv').write_text('\n'.join(rows) + '\n')
    return root, names


def test_prepare_embed_and_batch_5000_labels(big_vocab):
    from sgre.data import sgre_dls
    from sgre.train import valid_targets
    root, names = big_vocab
    dest = root / 'data' / 'tags'
    r = subprocess.run([str(BIN / 'sgre_prepare'), '--data', 'csv', '--csv', str(root / 'tags.csv'), '--images', str(root / 'imgs'),
                        '--dest', str(dest), '--valid-pct', '0.2'], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (dest / 'label.txt').read_text().splitlines() == names          # every label, in sorted order
    r = subprocess.run([str(BIN / 'sgre_embed'), '--data', str(dest), '--kind', 'minilm'],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    emb = np.load(dest / 'minilm.npy')
    assert emb.shape == (C, 384) and np.isfinite(emb).all(), emb.shape
    assert len(np.unique(emb.round(5), axis=0)) == C                      # one distinct vector per label

    dls = sgre_dls(dest, img_size=32, bs=8, num_workers=0, flip=False, augment=False, device='cpu')
    assert dls.c == C and len(dls.train_ds) + len(dls.valid_ds) == C // 4
    # the dataset holds each image's label names, not a dense row of 5,000 numbers
    assert all(isinstance(n, list) and len(n) == 4 for _, n in dls.train_ds.items + dls.valid_ds.items)
    xb, yb = dls.one_batch()
    assert tuple(xb.shape) == (8, 3, 32, 32) and tuple(yb.shape) == (8, C) and yb.sum(1).tolist() == [4.] * 8
    ref = valid_targets(dls)
    assert ref.element_size() == 1 and tuple(ref.shape) == (len(dls.valid_ds), C)    # one byte a cell (0/1; -1 unknown)
    assert set(ref.unique().tolist()) == {0, 1}                                       # two-field lists: nothing unknown
    index = {n: k for k, n in enumerate(names)}
    for i in (0, len(dls.valid_ds) - 1):
        assert sorted(torch.nonzero(ref[i]).flatten().tolist()) == sorted(index[n] for n in dls.valid_ds.items[i][1])
