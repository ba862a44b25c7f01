"""`sgre_serve` as a real process on 127.0.0.1 (issue 15): its scores against `sgre_predict`'s on the same files (PyTorch and
`--onnx`), bad requests over a real socket, a load test (96 requests from 16 threads), `SIGTERM` with a request in flight, a
broken model folder at start, and the page in headless Chromium (its screenshot is the README's: `SGRE_UPDATE_SCREENSHOT=1` writes it to
nbs/images/serve.png; otherwise it goes to the test's temporary folder, and a test run leaves the checkout as it was). The README's
picture comes from the README's own demo run: `SGRE_MODEL=MODEL_DIR SGRE_IMAGES=data/digits/images/test SGRE_UPDATE_SCREENSHOT=1
pytest tests/test_serve.py -k page_in_chromium`.

The model folder is the digits demo trained as tests/test_deploy.py trains it (one epoch, 300 images at 32 px) and exported
with ONNX (one epoch at 32 px leaves its scores near 0.5, but they are a trained model's); the endpoint-by-endpoint and bad-request tests in this process
(FastAPI's TestClient) are here too, on the same model folder, as well as in nbs/14_serve.ipynb. Nothing here
reaches beyond 127.0.0.1: the servers listen there, and the browser aborts every request to another host.
"""
import json, os, re, shutil, signal, statistics, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

httpx = pytest.importorskip('httpx')
from conftest import CHROMIUM, CHROMIUM_ARGS, ENV, ok as _ok

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def trained_model_folder(root: Path) -> tuple:   # (model folder, test images)
    "The digits demo as tests/test_deploy.py trains it (300 images at 32 px, one epoch: about a minute), exported with ONNX."
    work = root / 'work'
    work.mkdir()
    run = lambda prog, *args: _ok(subprocess.run([str(BIN / prog), *map(str, args)], cwd=work, env=ENV, capture_output=True,
                                                 text=True, timeout=600))
    run('sgre_prepare', '--data', 'digits', '--n-train', '300', '--n-test', '60', '--size', '32')
    run('sgre_train', '--data', 'digits', '--max-epochs', '1', '--img-size', '32', '--attn-dim', '32')
    run('sgre_export', '--exp-dir', work / 'experiments' / 'mlic_digits' / 'exp1', '--dest', root / 'digits-model')
    return root / 'digits-model', sorted((work / 'data' / 'digits' / 'images' / 'test').glob('*.png'))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """The model folder and 8 test images: trained here, or `SGRE_MODEL` (a model folder) and `SGRE_IMAGES` (a folder of images),
    e.g. the README's demo run, exported, for the page's screenshot."""
    root = tmp_path_factory.mktemp('serve')
    if os.environ.get('SGRE_MODEL'):
        model, images = Path(os.environ['SGRE_MODEL']).resolve(), sorted(Path(os.environ['SGRE_IMAGES']).glob('*.png'))
    else: model, images = trained_model_folder(root)
    inbox = root / 'inbox'
    inbox.mkdir()
    for i, f in enumerate(images[:8]): shutil.copy(f, inbox / f'digit{i}.png')
    return dict(root=root, model=model, images=sorted(inbox.glob('*.png')))


def serve_command() -> list:
    "`sgre_serve` as installed, or (before the console script is registered) the same entry point through Python."
    if (BIN / 'sgre_serve').exists(): return [str(BIN / 'sgre_serve')]
    return [sys.executable, '-c', 'from sgre.serve import sgre_serve_cli; sgre_serve_cli()']


class Server:
    "`sgre_serve` on 127.0.0.1, a free port; its log (stderr) in a file."
    def __init__(self, model, *args, log: Path):
        self.log = log
        self.proc = subprocess.Popen([*serve_command(), '--model', str(model), '--port', '0', *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=open(log, 'w'), env=ENV)
        deadline = time.time() + 120
        while time.time() < deadline:
            m = re.search(r'at (http://127\.0\.0\.1:\d+/)', self.text())
            if m: self.url = m.group(1); break
            if self.proc.poll() is not None: pytest.fail(f'sgre_serve stopped at start:\n{self.text()}', pytrace=False)
            time.sleep(0.1)
        else:
            self.proc.kill(); pytest.fail(f'sgre_serve did not start:\n{self.text()}', pytrace=False)

    def text(self) -> str: return self.log.read_text() if self.log.exists() else ''

    def stop(self) -> int:
        if self.proc.poll() is None: self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture(scope='module')
def server(folder):
    s = Server(folder['model'], log=folder['root'] / 'torch.log')
    yield s
    assert s.stop() == 0, s.text()
    assert 'Traceback' not in s.text(), s.text()


def files(*paths):
    return [('file', (p.name, p.read_bytes(), 'image/png')) for p in paths]


def predict_cli(folder, out: str, *args) -> list:
    res = subprocess.run([str(BIN / 'sgre_predict'), '--model', str(folder['model']), *map(str, folder['images']), '--out', out, *args],
                         cwd=folder['root'], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [json.loads(l) for l in (folder['root'] / out).read_text().splitlines()]


def check_same(answer: dict, rows: list):
    preds = answer['predictions']
    assert [p['image'] for p in preds] == [Path(r['image']).name for r in rows]
    got = np.array([list(p['scores'].values()) for p in preds])
    want = np.array([list(r['scores'].values()) for r in rows])
    assert [list(p['scores']) for p in preds] == [list(r['scores']) for r in rows]
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert [p['labels'] for p in preds] == [r['labels'] for r in rows]


# ---- in this process: FastAPI's TestClient, every endpoint and every bad request --------------------------------------

@pytest.fixture(scope='module')
def client(folder):
    from fastapi.testclient import TestClient
    from sgre.serve import make_app
    lines = []
    with TestClient(make_app(folder['model'], max_batch=4, max_mb=1, log=lines.append)) as c:
        c.lines = lines
        yield c


def scores_of(answer: dict) -> np.ndarray: return np.array([list(p['scores'].values()) for p in answer['predictions']])


def test_endpoints(folder, client):
    from sgre.deploy import predicted_labels, score_images
    labels = (folder['model'] / 'labels.txt').read_text().split()
    images = folder['images']
    assert client.get('/health').json() == {'status': 'ok', 'model': 'digits-model', 'labels': 10, 'backend': 'torch'}
    assert client.get('/labels').json() == {'labels': labels}
    _, want, _, _ = score_images(folder['model'], images)
    r = client.post('/predict', files=files(*images[:3]))
    assert r.status_code == 200 and [p['image'] for p in r.json()['predictions']] == [p.name for p in images[:3]]
    assert all(list(p['scores']) == labels for p in r.json()['predictions'])
    S = scores_of(r.json())
    assert np.abs(S - want[:3]).max() <= 1e-4
    assert [p['labels'] for p in r.json()['predictions']] == predicted_labels(S, labels, 0.5)
    r = client.post('/predict?threshold=0.2&topk=2', files=files(*images[:3])).json()
    assert (r['threshold'], r['topk']) == (0.2, 2)
    assert [p['labels'] for p in r['predictions']] == predicted_labels(scores_of(r), labels, 0.2, 2)
    r = client.post('/predict', files=files(*images)).json()          # 8 images, --max-batch 4: two pieces
    assert np.abs(scores_of(r) - want).max() <= 1e-4 and [p['image'] for p in r['predictions']] == [p.name for p in images]
    r = client.post(f'/attention?label={labels[3]}', files=files(images[0]))
    assert (r.status_code, r.headers['content-type'], r.content[:8]) == (200, 'image/png', b'\x89PNG\r\n\x1a\n')
    assert abs(float(r.headers['x-score']) - want[0, 3]) <= 1e-4
    page = client.get('/')
    assert page.headers['content-type'].startswith('text/html') and "call('predict'" in page.text and "call('attention" in page.text
    assert client.get('/docs').status_code == 200
    assert sorted(client.get('/openapi.json').json()['paths']) == ['/attention', '/health', '/labels', '/predict']
    assert re.fullmatch(r'POST /predict 200 3 images \d+\.\d ms', client.lines[2]), client.lines


def bad_requests(images):
    png, one = images[0].read_bytes(), files(images[0])
    return [
        ('not an image', 'post', '/predict', dict(files=[('file', ('notes.png', b'just some text', 'image/png'))]), 400, 'not an image'),
        ('empty file', 'post', '/predict', dict(files=[('file', ('empty.png', b'', 'image/png'))]), 400, 'is empty'),
        ('truncated image', 'post', '/predict', dict(files=[('file', ('half.png', png[:len(png) // 2], 'image/png'))]), 400, 'truncated'),
        ('no file field', 'post', '/predict', dict(files=[('image', ('a.png', png, 'image/png'))]), 400, 'has no image'),
        ('no body', 'post', '/predict', dict(), 400, 'has no image'),
        ('text field named file', 'post', '/predict', dict(data={'file': 'not a file'}), 422, 'named file'),
        ('threshold not a number', 'post', '/predict?threshold=high', dict(files=one), 422, 'not a number'),
        ('threshold above 1', 'post', '/predict?threshold=1.5', dict(files=one), 422, 'out of range'),
        ('threshold below 0', 'post', '/predict?threshold=-0.1', dict(files=one), 422, 'out of range'),
        ('topk 0', 'post', '/predict?topk=0', dict(files=one), 422, 'at least 1'),
        ('topk not whole', 'post', '/predict?topk=2.5', dict(files=one), 422, 'not a whole number'),
        ('too many files', 'post', '/predict', dict(files=files(*[images[0]] * 17)), 413, 'at most 16 images'),
        ('over --max-mb', 'post', '/predict', dict(files=[('file', ('big.png', png + b'\0' * 2**20, 'image/png'))]), 413, 'larger than'),
        ('no label', 'post', '/attention', dict(files=one), 422, 'name the label'),
        ('unknown label', 'post', '/attention?label=eleven', dict(files=one), 422, 'unknown label'),
        ('two files for /attention', 'post', '/attention?label=one', dict(files=files(*images[:2])), 413, 'one image at a time'),
        ('GET /predict', 'get', '/predict', dict(), 405, 'is not how to ask'),
        ('unknown path', 'get', '/nowhere', dict(), 404, 'there is no /nowhere'),
    ]


@pytest.mark.parametrize('case', range(18))
def test_bad_request(folder, client, case):
    what, method, url, kw, status, words = bad_requests(folder['images'])[case]
    r = getattr(client, method)(url, **kw)
    assert (r.status_code, r.headers['content-type']) == (status, 'application/json'), (what, r.status_code, r.text)
    assert list(r.json()) == ['error'] and words in r.json()['error'], (what, r.json())
    assert client.get('/health').status_code == 200
    good = client.post('/predict', files=files(folder['images'][1]))
    assert good.status_code == 200 and good.json()['predictions'][0]['image'] == folder['images'][1].name


def test_body_refused_while_read(client):
    "A chunked upload (no Content-Length) of 8 MB is cut off right after 1 MB (--max-mb 1): 17 pieces of 64 KB read, not 128."
    import asyncio
    taken, sent = [0], []
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    async def receive():
        taken[0] += 1
        return {'type': 'http.request', 'body': head + b'x' * (2**16 - len(head)) if taken[0] == 1 else b'x' * 2**16, 'more_body': taken[0] < 128}
    async def send(msg): sent.append(msg)
    scope = {'type': 'http', 'method': 'POST', 'path': '/predict', 'raw_path': b'/predict', 'query_string': b'', 'root_path': '',
             'headers': [(b'content-type', b'multipart/form-data; boundary=xyz')], 'scheme': 'http', 'server': ('test', 80),
             'client': ('test', 1), 'http_version': '1.1', 'asgi': {'version': '3.0'}, 'state': {}}
    asyncio.run(client.app(scope, receive, send))
    assert (taken[0], sent[0]['status']) == (17, 413) and 'larger than' in json.loads(sent[-1]['body'])['error']
    r = client.post('/predict', files=[('file', ('big.png', b'x' * (2 * 2**20), 'image/png'))])   # with Content-Length: at once
    assert r.status_code == 413 and client.get('/health').status_code == 200


def test_full_queue_is_503(folder):
    from fastapi.testclient import TestClient
    from sgre.serve import Backend, make_app
    backend = Backend(folder['model'])
    gate, inside, forward = threading.Event(), threading.Event(), backend.forward
    def held(x): inside.set(); gate.wait(30); return forward(x)
    with TestClient(make_app(backend, max_batch=1, max_wait_ms=0, queue_size=1, log=lambda l: None)) as busy:
        busy.app.state.batcher.forward = held
        answers = {}
        def post(name): answers[name] = busy.post('/predict', files=files(folder['images'][0])).status_code
        first = threading.Thread(target=post, args=('first',)); first.start()
        assert inside.wait(30)
        second = threading.Thread(target=post, args=('second',)); second.start()
        while busy.app.state.batcher.jobs.qsize() < 1: time.sleep(0.01)
        r = busy.post('/predict', files=files(folder['images'][0]))
        gate.set(); first.join(60); second.join(60)
        assert (r.status_code, r.headers['retry-after']) == (503, '1') and 'busy' in r.json()['error']
        assert answers == {'first': 200, 'second': 200} and busy.get('/health').status_code == 200


# ---- a real sgre_serve process on 127.0.0.1 ---------------------------------------------------------------------------

def test_scores_are_sgre_predicts(folder, server):
    health = httpx.get(server.url + 'health').json()
    assert health == {'status': 'ok', 'model': 'digits-model', 'labels': 10, 'backend': 'torch'}
    answer = httpx.post(server.url + 'predict', files=files(*folder['images'])).json()
    check_same(answer, predict_cli(folder, 'torch.jsonl'))
    print('an answer:', json.dumps(answer['predictions'][0]))
    r = httpx.post(server.url + 'predict?threshold=0.45&topk=2', files=files(*folder['images'])).json()
    check_same(r, predict_cli(folder, 'rule.jsonl', '--threshold', '0.45', '--topk', '2'))
    assert re.search(r'^sgre_serve: POST /predict 200 8 images \d+\.\d ms$', server.text(), re.M), server.text()


def test_onnx_scores_are_sgre_predict_onnx(folder):
    s = Server(folder['model'], '--onnx', log=folder['root'] / 'onnx.log')
    try:
        assert httpx.get(s.url + 'health').json()['backend'] == 'onnx'
        check_same(httpx.post(s.url + 'predict', files=files(*folder['images'])).json(), predict_cli(folder, 'onnx.jsonl', '--onnx'))
        r = httpx.post(s.url + 'attention?label=seven', files=files(folder['images'][0]))
        assert r.status_code == 200 and r.content.startswith(b'\x89PNG')
    finally:
        assert s.stop() == 0, s.text()


def test_bad_requests_over_a_socket(folder, server):
    png = folder['images'][0].read_bytes()
    bad = [(httpx.post(server.url + 'predict', files=[('file', ('notes.png', b'text', 'image/png'))]), 400, 'not an image'),
           (httpx.post(server.url + 'predict', files=[('file', ('half.png', png[:len(png) // 2], 'image/png'))]), 400, 'truncated'),
           (httpx.post(server.url + 'predict', data={'x': '1'}), 400, 'has no image'),
           (httpx.post(server.url + 'predict?threshold=x', files=files(folder['images'][0])), 422, 'not a number'),
           (httpx.post(server.url + 'attention?label=ten', files=files(folder['images'][0])), 422, 'unknown label'),
           (httpx.post(server.url + 'predict', files=files(*[folder['images'][0]] * 65)), 413, 'at most 64 images'),
           (httpx.post(server.url + 'predict', files=[('file', ('big.png', png + b'\0' * (21 * 2**20), 'image/png'))]), 413, 'larger than'),
           (httpx.get(server.url + 'nowhere'), 404, 'there is no /nowhere')]
    for r, status, words in bad:
        assert r.status_code == status and words in r.json()['error'], (r.status_code, r.text)
        assert httpx.get(server.url + 'health').status_code == 200
    assert httpx.post(server.url + 'predict', files=files(folder['images'][1])).status_code == 200


def test_load(folder, server):
    "96 requests of one image from 16 threads: all answered, none lost, faster than one by one thanks to batching."
    images = folder['images']
    def one_by_one(n):
        times = []
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in range(n):
                t = time.perf_counter()
                r = c.post('predict', files=files(images[i % len(images)]))
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                assert r.json()['predictions'][0]['image'] == images[i % len(images)].name
        return times
    one_by_one(8)                                                      # warm up
    t0 = time.perf_counter(); serial = one_by_one(96); serial_s = time.perf_counter() - t0
    results, errors = [], []
    def worker(k):
        try: results.extend(one_by_one(6))
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    parallel_s = time.perf_counter() - t0
    assert not errors, errors[:3]
    assert len(results) == 96
    pct = lambda xs, q: 1000 * float(np.percentile(xs, q))
    print(f'one by one: {96 / serial_s:.0f} requests/s, p50 {pct(serial, 50):.1f} ms, p99 {pct(serial, 99):.1f} ms; '
          f'16 threads: {96 / parallel_s:.0f} requests/s, p50 {pct(results, 50):.1f} ms, p99 {pct(results, 99):.1f} ms; '
          f'{serial_s / parallel_s:.2f}x; load {os.getloadavg()[0]:.2f}')
    assert serial_s / parallel_s >= 1.3, f'16 threads gave {serial_s / parallel_s:.2f}x the throughput of one by one'


def test_sigterm_finishes_requests_in_flight(folder):
    s = Server(folder['model'], '--max-wait-ms', '1500', log=folder['root'] / 'term.log')
    answer = {}
    def post(): answer['r'] = httpx.post(s.url + 'predict', files=files(folder['images'][0]), timeout=60)
    t = threading.Thread(target=post); t.start()
    time.sleep(0.5)                                # the request waits in the batcher (up to 1.5 s)
    assert s.stop() == 0, s.text()
    t.join(60)
    assert answer['r'].status_code == 200 and len(answer['r'].json()['predictions']) == 1
    assert s.text().rstrip().endswith('sgre_serve: stopped') and 'Traceback' not in s.text(), s.text()


def test_broken_model_folder_stops_at_start(folder):
    (folder['root'] / 'broken').mkdir()
    (folder['root'] / 'broken' / 'config.json').write_text('{not json')
    for model, words in [(folder['root'] / 'nowhere', 'is not a folder; pass a model folder written by `sgre_export`'),
                         (folder['root'] / 'broken', 'is not valid JSON')]:
        res = subprocess.run([*serve_command(), '--model', str(model), '--port', '0'], env=ENV, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and res.stdout == '', res
        assert res.stderr.startswith('sgre_serve: error: ') and words in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr


def test_page_in_chromium(folder, server, tmp_path):
    if os.environ.get('SGRE_SKIP_BROWSER') == '1': pytest.skip('SGRE_SKIP_BROWSER=1: browser checks skipped')
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f'{CHROMIUM} is missing (apt-get install -y chromium): the page is not checked in a browser')
    from playwright.sync_api import sync_playwright
    problems, host = [], urlparse(server.url).netloc
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_context(viewport={'width': 1100, 'height': 760}).new_page()
            def route(r):
                if urlparse(r.request.url).netloc == host or r.request.url.startswith(('blob:', 'data:')): r.continue_()
                else: problems.append(f'request outside the server: {r.request.url}'); r.abort()
            page.route('**/*', route)
            page.on('console', lambda m: m.type == 'error' and problems.append(f'console error: {m.text}'))
            page.on('pageerror', lambda e: problems.append(f'page error: {e}'))
            page.goto(server.url, wait_until='networkidle')
            page.wait_for_function("document.getElementById('model').textContent.includes('10 labels')", timeout=10_000)
            page.set_input_files('#file', str(folder['images'][3]))
            page.wait_for_selector('#scores tr', timeout=20_000)
            page.wait_for_function('''() => {   // every predicted label's heat map (the best label's when none is predicted), decoded
                const want = Math.min(8, Math.max(1, document.querySelectorAll('#scores tr.predicted').length));
                const imgs = [...document.querySelectorAll('#heat img')];
                return imgs.length === want && imgs.every(i => i.complete && i.naturalWidth > 0);
            }''', timeout=30_000)
            rows = page.eval_on_selector_all('#scores tr', 'rs => rs.map(r => r.innerText)')
            heat = page.eval_on_selector_all('#heat img', 'is => is.map(i => [i.alt, i.naturalWidth])')
            assert len(rows) == 10 and all(w > 0 for _, w in heat), (rows, heat)
            assert page.inner_text('#error') == ''
            shot = ROOT / 'nbs' / 'images' / 'serve.png' if os.environ.get('SGRE_UPDATE_SCREENSHOT') == '1' else tmp_path / 'serve.png'
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
        finally:
            browser.close()
    assert not problems, problems
