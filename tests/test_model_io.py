"""A model saved by one process and loaded by another computes the same function, label embeddings included."""
import os, subprocess, sys, textwrap

import torch

from sgre.model import SGRE

ENV = dict(os.environ, HF_HUB_OFFLINE='1')


def test_state_dict_round_trip_across_processes(tmp_path):
    torch.manual_seed(0)
    emb = torch.randn(4, 12)
    model = SGRE('resnet10t', num_classes=4, embeddings=emb, attn_dim=16, ff_dim=32, num_heads=2,
                 pos=True, output_stride=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): ref = model(x)
    torch.save({'state': model.state_dict(), 'x': x}, tmp_path / 'model.pth')
    torch.save(ref._asdict(), tmp_path / 'ref.pth')
    script = textwrap.dedent(f"""
        import torch
        from sgre.model import SGRE
        blob = torch.load({str(tmp_path / 'model.pth')!r})
        # built with other (random) embeddings: the saved buffer must replace them
        m = SGRE('resnet10t', num_classes=4, embeddings=torch.zeros(4, 12), attn_dim=16, ff_dim=32,
                 num_heads=2, pos=True, output_stride=8).eval()
        m.load_state_dict(blob['state'])
        with torch.no_grad(): out = m(blob['x'])
        torch.save(out._asdict(), {str(tmp_path / 'out.pth')!r})
    """)
    subprocess.run([sys.executable, '-c', script], check=True, env=ENV, timeout=300)
    out, ref = torch.load(tmp_path / 'out.pth'), torch.load(tmp_path / 'ref.pth')
    for k in ('logits', 'sem_logits', 'attn'):
        assert torch.allclose(out[k], ref[k], atol=1e-6), k
    assert not torch.allclose(out['attn'], torch.full_like(out['attn'], 1 / 16))  # attention is not uniform
