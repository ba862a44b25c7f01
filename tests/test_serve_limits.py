"""`sgre_serve` against large images and slow clients, as a real process on 127.0.0.1 (issue 22 §2).

A burst of 16 concurrent uploads of images just under `--max-pixels`: every answer is JSON, the server's resident memory
(VmRSS, sampled every 50 ms) never rises more than 1.5 GB above its idle level and is back within 300 MB of it 10 s after
the burst, and `/health` answers within a second throughout. Bodies that stall get 408 after `--body-timeout` and their
connections are closed; above `--max-connections` open connections a request gets 503; an idle connection is closed after
`--keep-alive`; an image over `--max-pixels` gets 413 from its header.

The model folder is the notebook's tiny configuration (ResNet-10-T at 32 px, random weights, exported without ONNX):
its scores mean nothing, and these tests look only at what the server does with what it is sent. The burst uses a
limit of 25 M pixels (the default is 40 M) to stay quick; `benchmarks/bench_serve.py --part memory` runs the default.
"""
import io, json, os, re, signal, socket, subprocess, sys, threading, time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip('httpx')
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Path:
    "The tiny digits configuration with random weights, exported (a few seconds)."
    import torch
    from sgre.data import prepare_digits
    from sgre.deploy import export_model
    from sgre.experiment import model_options, parse_config, write_config
    from sgre.model import SGRE
    root = tmp_path_factory.mktemp('limits')
    digits = prepare_digits(root / 'digits', n_train=16, n_test=16, size=32, seed=0)
    cfg, _ = parse_config(['--data', 'digits', '--data-dir', str(digits), '--arch', 'resnet10t', '--no-pretrained', '--img-size', '32',
                           '--output-stride', '8', '--embed-type', 'random', '--attn-dim', '32', '--num-heads', '2', '--num-workers', '0'])
    labels = (digits / 'label.txt').read_text().split()
    exp = root / 'experiments' / 'mlic_digits' / 'exp1'
    (exp / 'checkpoints').mkdir(parents=True)
    write_config(dict(cfg, num_classes=len(labels), labels=labels, world_size=1), exp / 'config.yaml')
    torch.manual_seed(0)
    torch.save(SGRE(cfg['arch'], len(labels), embeddings=None, **model_options(cfg, pretrained=False)).state_dict(),
               exp / 'checkpoints' / 'best_ema_model.pth')
    return export_model(exp, root / 'model', onnx=False)


class Server:
    "`sgre_serve` on 127.0.0.1, a free port; its log (stderr) in a file."
    def __init__(self, model: Path, *args, log: Path):
        cmd = [str(BIN / 'sgre_serve')] if (BIN / 'sgre_serve').exists() else [sys.executable, '-m', 'sgre.serve']
        self.log = log
        self.proc = subprocess.Popen([*cmd, '--model', str(model), '--port', '0', *map(str, args)], stdout=subprocess.DEVNULL,
                                     stderr=open(log, 'w'), env=ENV)
        deadline = time.time() + 120
        while time.time() < deadline:
            m = re.search(r'at (http://(127\.0\.0\.1):(\d+)/)', self.text())
            if m: self.url, self.addr = m.group(1), (m.group(2), int(m.group(3))); break
            if self.proc.poll() is not None: pytest.fail(f'sgre_serve stopped at start:\n{self.text()}', pytrace=False)
            time.sleep(0.1)
        else:
            self.proc.kill(); pytest.fail(f'sgre_serve did not start:\n{self.text()}', pytrace=False)

    def text(self) -> str: return self.log.read_text() if self.log.exists() else ''

    def rss(self) -> int:   # bytes
        with open(f'/proc/{self.proc.pid}/status') as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmRSS:'))

    def __enter__(self): return self

    def __exit__(self, *exc):
        if self.proc.poll() is None: self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.text()
        assert 'Traceback' not in self.text(), self.text()


def image_bytes(w: int, h: int, fmt: str = 'PNG') -> bytes:
    "A w × h RGB image of gradients (PNG and JPEG compress it well: a few MB at 25 M pixels)."
    from PIL import Image
    x = (np.arange(w, dtype=np.uint32) * 7 // 13 % 256).astype(np.uint8)
    y = (np.arange(h, dtype=np.uint32) * 3 // 5 % 256).astype(np.uint8)
    a = np.empty((h, w, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = x[None, :], y[:, None], x[None, :] ^ y[:, None]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **({'compress_level': 1} if fmt == 'PNG' else {'quality': 90}))
    return buf.getvalue()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple:   # (bytes received, whether the server closed it)
    sock.settimeout(timeout)
    data, deadline = b'', time.time() + timeout
    while time.time() < deadline:
        try: piece = sock.recv(65536)
        except socket.timeout: return data, False
        except ConnectionResetError: return data, True
        if not piece: return data, True
        data += piece
    return data, False


def json_body(response: bytes) -> dict:
    head, body = response.split(b'\r\n\r\n', 1)
    assert b'content-type: application/json' in head.lower(), head
    return json.loads(body)


def test_burst_of_large_images(model, tmp_path):
    "16 concurrent uploads of a 4999 × 4999 PNG (--max-pixels 25 M): memory bounded while they are decoded, and given back."
    limit, side = 25_000_000, 4999
    body = image_bytes(side, side)
    with Server(model, '--max-pixels', limit, log=tmp_path / 'burst.log') as s:
        small = image_bytes(64, 64)
        assert httpx.post(s.url + 'predict', files=[('file', ('small.png', small, 'image/png'))], timeout=60).status_code == 200
        time.sleep(1)
        idle = min(s.rss() for _ in range(5) if not time.sleep(0.05))
        samples, health, stop = [], [], threading.Event()
        def sample():
            while not stop.is_set(): samples.append(s.rss()); time.sleep(0.05)
        def poll():
            with httpx.Client(base_url=s.url, timeout=5) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    try: ok = c.get('health').status_code == 200
                    except httpx.HTTPError: ok = False
                    health.append((time.perf_counter() - t, ok)); time.sleep(0.1)
        answers = []
        def post(i):
            r = httpx.post(s.url + 'predict', files=[('file', (f'large{i}.png', body, 'image/png'))], timeout=600)
            answers.append((r.status_code, r.headers['content-type'], r.json()))
        watchers = [threading.Thread(target=sample), threading.Thread(target=poll)]
        for t in watchers: t.start()
        clients = [threading.Thread(target=post, args=(i,)) for i in range(16)]
        for t in clients: t.start()
        for t in clients: t.join()
        time.sleep(10)
        after = s.rss()
        stop.set()
        for t in watchers: t.join()
        mb = lambda b: b / 2**20
        report = (f'idle {mb(idle):.0f} MB, peak {mb(max(samples) - idle):+.0f} MB, 10 s after {mb(after - idle):+.0f} MB, '
                  f'/health slowest {max(h for h, _ in health):.2f} s')
        print(report)
        assert len(answers) == 16 and all(st == 200 and ct == 'application/json' for st, ct, _ in answers), [a[:2] for a in answers]
        assert all(len(a['predictions']) == 1 for _, _, a in answers)
        assert max(samples) - idle <= 1.5 * 2**30, report
        assert after - idle <= 300 * 2**20, report
        assert all(ok for _, ok in health) and max(h for h, _ in health) <= 1, report
        assert len(health) >= 20, len(health)   # it was polled throughout


def test_too_many_pixels(model, tmp_path):
    with Server(model, '--max-pixels', 1_000_000, log=tmp_path / 'pixels.log') as s:
        r = httpx.post(s.url + 'predict', files=[('file', ('wide.png', image_bytes(2000, 501), 'image/png'))])
        assert (r.status_code, r.headers['content-type']) == (413, 'application/json'), r.text
        assert r.json() == {'error': "the image 'wide.png' has 1,002,000 pixels, more than this server decodes (1,000,000, its "
                                     '--max-pixels); send a smaller image (the model reads 32 × 32), or start sgre_serve with a '
                                     'larger --max-pixels.'}
        ok = httpx.post(s.url + 'predict', files=[('file', ('square.png', image_bytes(1000, 1000), 'image/png')),
                                                  ('file', ('photo.jpg', image_bytes(1000, 1000, 'JPEG'), 'image/jpeg'))])
        assert ok.status_code == 200 and [p['image'] for p in ok.json()['predictions']] == ['square.png', 'photo.jpg']
        # one image over the limit among good ones: 413 names it, and the server goes on
        r = httpx.post(s.url + 'predict', files=[('file', ('a.png', image_bytes(100, 100), 'image/png')),
                                                 ('file', ('b.png', image_bytes(1001, 1000), 'image/png'))])
        assert r.status_code == 413 and "'b.png' has 1,001,000 pixels" in r.json()['error']
        assert httpx.get(s.url + 'health').status_code == 200


def partial_post(addr, sent: int = 1000, length: int = 100_000) -> socket.socket:
    "A connection that sends a request's headers and the first `sent` bytes of its body, then nothing."
    c = socket.create_connection(addr, timeout=10)
    c.sendall(b'POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=xyz\r\n'
              b'Content-Length: %d\r\n\r\n--xyz\r\n' % length + b'x' * sent)
    return c


def test_stalled_bodies_get_408_and_are_closed(model, tmp_path):
    "20 connections send part of a body and stall: each gets 408 after --body-timeout (1 s) and is closed; the server goes on."
    with Server(model, '--body-timeout', 1, log=tmp_path / 'slow.log') as s:
        t0 = time.time()
        stalled = [partial_post(s.addr) for _ in range(20)]
        for c in stalled:
            data, closed = read_until_closed(c, 15)
            assert data.startswith(b'HTTP/1.1 408 ') and closed, data
            assert 'did not arrive within 1 s' in json_body(data)['error']
            c.close()
        took = time.time() - t0
        assert 1 <= took < 10, took
        assert httpx.get(s.url + 'health').status_code == 200
        # a slow body that does arrive in time is scored
        png = image_bytes(64, 64)
        body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\nContent-Type: image/png\r\n\r\n'
                + png + b'\r\n--xyz--\r\n')
        c = socket.create_connection(s.addr, timeout=10)
        c.sendall(b'POST /predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=xyz\r\n'
                  b'Content-Length: %d\r\n\r\n' % len(body))
        for i in range(0, len(body), len(body) // 3 + 1): c.sendall(body[i:i + len(body) // 3 + 1]); time.sleep(0.2)
        data, closed = read_until_closed(c, 15)
        assert data.startswith(b'HTTP/1.1 200 ') and json_body(data)['predictions'][0]['image'] == 'slow.png', data[:300]
        c.close()
    assert re.search(r'^sgre_serve: POST /predict 408 0 images \d+\.\d ms$', s.text(), re.M), s.text()


def test_connections_above_the_cap_get_503(model, tmp_path):
    with Server(model, '--max-connections', 3, log=tmp_path / 'cap.log') as s:
        idle = [socket.create_connection(s.addr, timeout=10) for _ in range(3)]
        time.sleep(0.5)
        r = httpx.get(s.url + 'health')   # a 4th connection
        assert (r.status_code, r.headers['retry-after'], r.headers['content-type']) == (503, '1', 'application/json'), r.text
        assert 'more than its --max-connections 3' in r.json()['error']
        r = httpx.post(s.url + 'predict', files=[('file', ('a.png', image_bytes(64, 64), 'image/png'))])
        assert r.status_code == 503
        for c in idle[:2]: c.close()
        time.sleep(0.5)
        assert httpx.get(s.url + 'health').status_code == 200   # 2 idle and this one: 3
        idle[2].close()


def test_idle_connection_closed_after_keep_alive(model, tmp_path):
    with Server(model, '--keep-alive', 1, log=tmp_path / 'keep.log') as s:
        c = socket.create_connection(s.addr, timeout=10)
        c.sendall(b'GET /health HTTP/1.1\r\nHost: test\r\n\r\n')
        data = b''
        while b'"status"' not in data: data += c.recv(65536)
        t0 = time.time()
        rest, closed = read_until_closed(c, 10)
        assert data.startswith(b'HTTP/1.1 200 ') and closed and rest == b'', (data, rest)
        assert 0.8 <= time.time() - t0 < 4, time.time() - t0
        c.close()


def test_connections_without_a_request_are_closed(model, tmp_path):
    "Connections that send nothing, or half a request's headers, are closed after --body-timeout (1 s): they hold no place."
    with Server(model, '--body-timeout', 1, '--max-connections', 3, log=tmp_path / 'quiet.log') as s:
        t0 = time.time()
        quiet = [socket.create_connection(s.addr, timeout=10) for _ in range(2)]
        half = socket.create_connection(s.addr, timeout=10)
        half.sendall(b'POST /predict HTTP/1.1\r\nHost: test\r\nContent-Ty')
        time.sleep(0.3)
        assert httpx.get(s.url + 'health').status_code == 503   # 4 open connections, more than 3
        for c in quiet + [half]:
            data, closed = read_until_closed(c, 10)
            assert (data, closed) == (b'', True)
            c.close()
        assert time.time() - t0 < 6, time.time() - t0
        time.sleep(0.2)
        assert httpx.get(s.url + 'health').status_code == 200
