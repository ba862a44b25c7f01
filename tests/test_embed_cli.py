"""`sgre_embed` as users run it: a separate process, files on disk, exit codes and messages."""
import os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

DIGITS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
SCRIPT = Path(sys.executable).parent / 'sgre_embed'
GLOVE = 'cat 1 0 0\ndog 0 1 0\ntraffic 1 2 3\nlight 0.5 0.5 0.5\ndining 1 1 0\ntable 0 1 1\n'


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    # never reach for the network; an empty Hugging Face cache makes the hub case the same on every machine
    cache = tmp_path_factory.mktemp('hf_cache')
    return dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_HOME=str(cache), HF_HUB_CACHE=str(cache))


def embed(env, *args, timeout=300):
    exe = [str(SCRIPT)] if SCRIPT.exists() else [shutil.which('sgre_embed')]
    return subprocess.run(exe + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)


def dataset(root, labels):
    d = Path(root) / 'data'
    d.mkdir(parents=True, exist_ok=True)
    (d / 'label.txt').write_text(''.join(f'{l}\n' for l in labels))
    return d


def files(d): return sorted(p.name for p in Path(d).iterdir())


def assert_refused(r, d, before, *words):
    "Exit 2, one paragraph naming the problem, no traceback, nothing written."
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    msg = r.stderr.strip()
    assert msg.startswith('sgre_embed: error: ') and '\n' not in msg, msg
    assert 'Traceback' not in r.stderr
    for w in words: assert w in msg, (w, msg)
    assert files(d) == before, files(d)


def test_minilm_default(env, tmp_path):
    d = dataset(tmp_path, DIGITS)
    r = embed(env, '--data', d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'wrote {d / "minilm.npy"}: shape (10, 384), float32 (minilm)'
    assert files(d) == ['label.txt', 'minilm.npy']
    e = np.load(d / 'minilm.npy')
    assert e.dtype == np.float32 and e.shape == (10, 384)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sim = e @ e.T
    assert sim[3, 4] > sim[3, 0]  # three is nearer to four than to zero
    r = embed(env, '--data', d)   # again: same vectors, file replaced in place
    assert r.returncode == 0 and np.array_equal(np.load(d / 'minilm.npy'), e)
    assert files(d) == ['label.txt', 'minilm.npy']


def test_random_writes_nothing(env, tmp_path):
    d = dataset(tmp_path, DIGITS)
    r = embed(env, '--data', d, '--kind', 'random')
    assert r.returncode == 0, r.stderr
    assert 'nothing written' in r.stdout and 'random start' in r.stdout
    assert files(d) == ['label.txt']


def test_glove(env, tmp_path):
    d = dataset(tmp_path, ['cat', 'diningtable', 'traffic light'])
    (tmp_path / 'glove.txt').write_text(GLOVE)
    r = embed(env, '--data', d, '--kind', 'glove', '--glove', tmp_path / 'glove.txt')
    assert r.returncode == 0, r.stderr
    assert 'shape (3, 3)' in r.stdout
    e = np.load(d / 'glove.npy')
    assert e.dtype == np.float32
    assert np.array_equal(e, np.array([[1, 0, 0], [1, 2, 1], [1.5, 2.5, 3.5]], dtype=np.float32))  # VOC split, words summed


def test_bert_local_folder(env, tmp_path):
    torch = pytest.importorskip('torch')
    from transformers import BertConfig, BertModel, BertTokenizer
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'cat', 'dog', 'traffic', 'light']
    (tmp_path / 'vocab').mkdir()
    (tmp_path / 'vocab' / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    torch.manual_seed(0)
    net = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=16)).eval()
    net.save_pretrained(tmp_path / 'bert')
    BertTokenizer.from_pretrained(tmp_path / 'vocab').save_pretrained(tmp_path / 'bert')
    d = dataset(tmp_path, ['dog', 'traffic light'])
    r = embed(env, '--data', d, '--kind', 'bert', '--model', tmp_path / 'bert')
    assert r.returncode == 0, r.stderr
    assert 'shape (2, 16)' in r.stdout
    e = np.load(d / 'bert.npy')
    with torch.no_grad():
        h = lambda *w: net(input_ids=torch.tensor([[vocab.index(t) for t in ('[CLS]',) + w]]),
                           token_type_ids=torch.ones(1, len(w) + 1, dtype=torch.long)).last_hidden_state[0].numpy()
        assert np.allclose(e[0], h('dog')[1], atol=1e-5)               # one word piece: its hidden state
        assert np.allclose(e[1], h('traffic', 'light')[0], atol=1e-5)  # several: [CLS]


def test_bad_input(env, tmp_path):
    d = dataset(tmp_path, ['cat', 'traffic light'])
    (tmp_path / 'glove.txt').write_text('cat 1 0 0\n')
    before = files(d)
    assert_refused(embed(env, '--data', tmp_path / 'nowhere'), d, before, 'does not exist')
    assert_refused(embed(env, '--data', d, '--kind', 'word2vec'), d, before, 'unknown embedding kind', 'minilm, bert, glove, random')
    assert_refused(embed(env, '--data', d, '--kind', 'bert', '--model', tmp_path / 'no_model'), d, before, 'does not exist')
    assert_refused(embed(env, '--data', d, '--kind', 'bert'), d, before, 'bert-base-uncased', '--model PATH')
    assert_refused(embed(env, '--data', d, '--kind', 'glove'), d, before, '--glove FILE')
    assert_refused(embed(env, '--data', d, '--kind', 'glove', '--glove', tmp_path / 'none.txt'), d, before, 'does not exist')
    assert_refused(embed(env, '--data', d, '--kind', 'glove', '--glove', tmp_path / 'glove.txt'), d, before,
                   'traffic, light', 'not in the GloVe file')
    assert_refused(embed(env, '--data', d, '--model', tmp_path), d, before, 'only with `--kind bert`')
    (d / 'label.txt').unlink()
    assert_refused(embed(env, '--data', d), d, [], 'label.txt is missing')
    (d / 'label.txt').write_text('')
    assert_refused(embed(env, '--data', d), d, ['label.txt'], 'is empty')


def test_failure_keeps_existing_file(env, tmp_path):
    d = dataset(tmp_path, ['cat', 'dog'])
    (tmp_path / 'glove.txt').write_text(GLOVE)
    assert embed(env, '--data', d, '--kind', 'glove', '--glove', tmp_path / 'glove.txt').returncode == 0
    old = (d / 'glove.npy').read_bytes()
    (d / 'label.txt').write_text('cat\nzebra\n')
    assert_refused(embed(env, '--data', d, '--kind', 'glove', '--glove', tmp_path / 'glove.txt'), d,
                   ['glove.npy', 'label.txt'], 'zebra')
    assert (d / 'glove.npy').read_bytes() == old


def test_numeric_labels_need_random_or_force(env, tmp_path):
    d = dataset(tmp_path, [str(i) for i in range(5)])   # VG-500 style
    (tmp_path / 'glove.txt').write_text(''.join(f'{i} {i} 1\n' for i in range(5)))
    assert_refused(embed(env, '--data', d), d, ['label.txt'], 'only numbers', '--kind random')
    r = embed(env, '--data', d, '--kind', 'glove', '--glove', tmp_path / 'glove.txt', '--force')
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(d / 'glove.npy'), np.array([[i, 1] for i in range(5)], dtype=np.float32))


def test_debug_shows_traceback(env, tmp_path):
    r = embed(env, '--data', tmp_path / 'nowhere', '--debug')
    assert r.returncode == 2 and 'Traceback' in r.stderr and 'error: ' in r.stderr


MODIFIERS = '''red blue green yellow black white wooden metal plastic glass paper leather electric small large baby adult wild
domestic sea mountain river forest desert city street kitchen garden office sports winter summer night morning
ancient modern toy fresh frozen roasted fried sliced whole dried raw cooked folding rolling flying running sitting
standing sleeping swimming climbing racing snow ice rock sand grass water fire stone brick steel silver golden
striped spotted hairy feathered curly tall short round square oval triangular hanging floating broken open closed
empty full dirty clean old new bright dark shiny soft hard heavy light narrow wide deep flat'''.split()
NOUNS = '''cat dog horse cow sheep goat pig rabbit mouse bird duck goose owl eagle parrot fish shark whale dolphin turtle
frog snake lizard spider bee butterfly ant car truck bus train bicycle motorcycle boat ship airplane helicopter rocket
tractor chair table sofa bed lamp clock vase bottle cup glass plate bowl spoon fork knife pan pot oven fridge sink
toilet door window roof wall fence bridge tower castle church house tent flag sign kite balloon ball bat racket
glove helmet hat shoe boot sock shirt dress jacket coat scarf tie belt bag backpack umbrella wallet watch ring
necklace phone computer keyboard camera television radio guitar piano drum violin book pen pencil candle'''.split()


def open_images_like_names(n=9605):
    "`n` distinct Open-Images-style display names: two-word names, some made unique with their MID as `name (MID)`."
    import random
    pairs = [f'{m.capitalize()} {w}' for m in MODIFIERS for w in NOUNS]
    random.Random(0).shuffle(pairs)
    names = pairs[:n - n // 50] + [f'{w.capitalize()} (/m/0{k:05x})' for k, w in enumerate((NOUNS * 100)[:n // 50])]
    assert len(names) == n == len(set(names))
    return names


def test_minilm_open_images_scale(env, tmp_path):
    "The 9,605 trainable classes of Open Images: `sgre_embed --kind minilm` offline, one distinct unit row per name."
    import resource, time
    names = open_images_like_names()
    d = dataset(tmp_path, names)
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = embed(env, '--data', d, '--kind', 'minilm', timeout=1200)   # about 100 CPU-seconds: minutes on a loaded machine
    took, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, peak = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, c1.ru_maxrss
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'wrote {d / "minilm.npy"}: shape (9605, 384), float32 (minilm)'
    e = np.load(d / 'minilm.npy')
    assert e.shape == (9605, 384) and e.dtype == np.float32 and np.isfinite(e).all()
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert len(np.unique(e.round(5), axis=0)) == 9605   # every row differs
    same_noun = [i for i, n in enumerate(names) if n.endswith(' cat') and '(' not in n][:2]
    other = next(i for i, n in enumerate(names) if n.endswith(' piano'))
    assert e[same_noun[0]] @ e[same_noun[1]] > e[same_noun[0]] @ e[other]   # two kinds of cat are nearer than a piano
    print(f'9,605 names: {cpu:.0f} CPU-seconds, {took:.0f} s wall; peak resident memory of the children so far {peak / 1024:.0f} MiB')
