"""report.html (issue 23 §3) as a reader opens it: from a file:// URL in headless Chromium, offline.

A small run of the digits demo (300 images at 32 px, one epoch, as tests/test_serve.py trains it: about a minute) is
trained and evaluated with the console scripts; `sgre_evaluate` must write report.html and say so. Chromium (Debian's,
at /usr/bin/chromium, driven by Playwright) then opens the report with every request other than the file itself
aborted and recorded: the page must load with no console error, no page error and no request leaving the file, hold no
script, show a per-class table with a row per class, and decode every thumbnail (naturalWidth > 0). A second report,
written here with labels and paths made to break out of the HTML (`<script>`, an `<img onerror>`, a closing `</style>`),
must show them as text, run nothing and fetch nothing.

The screenshot of the first report is the evaluation page's picture: `SGRE_UPDATE_SCREENSHOT=1` writes it to
nbs/images/report.png (otherwise it goes to the test's temporary folder, and a test run leaves the checkout as it was).
`SGRE_REPORT=EXP/report.html` checks (and photographs) that report instead of training one, e.g. the README's demo
run after `sgre_evaluate --exp-dir EXP`. Set SGRE_SKIP_BROWSER=1 to skip the browser checks on a machine without
Chromium (apt-get install -y chromium); the command's own output is still checked.
"""
import os, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, ENV, ok as _ok

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIVEN = os.environ.get('SGRE_REPORT')


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory) -> dict:
    "report.html of a small trained run (or SGRE_REPORT's), with sgre_evaluate's output and the number of classes."
    if GIVEN:
        report = Path(GIVEN).resolve()
        if not report.is_file(): pytest.fail(f'SGRE_REPORT={GIVEN}: no such file', pytrace=False)
        return dict(report=report, stdout=None, classes=None)
    work = tmp_path_factory.mktemp('report')
    run = lambda prog, *args: _ok(subprocess.run([str(BIN / prog), *map(str, args)], cwd=work, env=ENV, capture_output=True,
                                                 text=True, timeout=600))
    run('sgre_prepare', '--data', 'digits', '--n-train', '300', '--n-test', '60', '--size', '32')
    run('sgre_train', '--data', 'digits', '--max-epochs', '1', '--img-size', '32', '--attn-dim', '32')
    exp = work / 'experiments' / 'mlic_digits' / 'exp1'
    out = run('sgre_evaluate', '--exp-dir', exp)
    return dict(report=exp / 'report.html', stdout=out.stdout, classes=10)


def test_evaluate_writes_the_report(evaluated):
    if GIVEN: pytest.skip('SGRE_REPORT names an existing report')
    last = evaluated['stdout'].strip().splitlines()[-1]
    assert last.startswith('wrote ') and 'report.html' in last.split(' in ')[0], last
    page = evaluated['report'].read_text(encoding='utf-8')
    mAP = re.search(r'^mAP (\d\.\d{4})', evaluated['stdout'], re.M).group(1)
    assert f'mAP {mAP}</span>' in page and 'mlic_digits/exp1' in page


@pytest.fixture(scope='module')
def browser():
    if os.environ.get('SGRE_SKIP_BROWSER') == '1': pytest.skip('SGRE_SKIP_BROWSER=1: browser checks skipped')
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f'{CHROMIUM} is missing: the report is checked in Debian\'s Chromium (apt-get install -y chromium); '
                    'set SGRE_SKIP_BROWSER=1 to skip these checks locally.', pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


def open_offline(browser, report: Path):
    "The report opened from its file:// URL, every other request aborted; (context, page, problems)."
    ctx = browser.new_context(viewport={'width': 1100, 'height': 1000})
    page, problems, url = ctx.new_page(), [], report.resolve().as_uri()
    def route(r):
        if r.request.url == url: r.continue_()
        else: problems.append(f'request leaving the file: {r.request.url}'); r.abort()
    page.route('**/*', route)
    page.on('console', lambda m: m.type == 'error' and problems.append(f'console error: {m.text}'))
    page.on('pageerror', lambda e: problems.append(f'page error: {e}'))
    page.on('dialog', lambda d: (problems.append(f'a dialog opened: {d.message}'), d.dismiss()))
    page.on('request', lambda r: r.url != url and not r.url.startswith('data:') and problems.append(f'request: {r.url}'))
    page.goto(url, wait_until='load')
    return ctx, page, problems


def images(page) -> list:
    "Every <img> of the page once decoded: (section id, alt, complete, naturalWidth)."
    return page.evaluate('''async () => {
        const imgs = [...document.images];
        await Promise.all(imgs.map(i => i.decode().catch(() => null)));
        return imgs.map(i => [i.closest('section').id, i.alt, i.complete, i.naturalWidth]);
    }''')


def test_report_in_chromium(evaluated, browser, tmp_path):
    ctx, page, problems = open_offline(browser, evaluated['report'])
    try:
        rows = page.eval_on_selector_all('#per-class tbody tr', 'rs => rs.map(r => r.cells[1].innerText)')
        summary = page.inner_text('#summary')
        C = evaluated['classes'] or int(re.search(r'over \d+ of (\d+) classes', summary).group(1))
        assert len(rows) == C and len(set(rows)) == C, rows
        assert page.evaluate('document.scripts.length') == 0
        imgs = images(page)
        bad = [i for i in imgs if not (i[2] and i[3] > 0)]
        assert not bad, f'pictures that did not decode: {bad}'
        thumbs = [i for i in imgs if i[0] == 'errors']
        figures = [i for i in imgs if i[0] == 'figures']
        assert len(figures) == 2 and len(thumbs) >= (30 if evaluated['classes'] else 1), imgs
        assert 'CF1' in summary and re.search(r'mAP \d\.\d{4}', summary), summary
        shot = ROOT / 'nbs' / 'images' / 'report.png' if os.environ.get('SGRE_UPDATE_SCREENSHOT') == '1' else tmp_path / 'report.png'
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 0
    finally:
        ctx.close()
    assert not problems, problems


HOSTILE = ['<script>alert(1)</script>', '<img src=x onerror=alert(2)>', '</style><script>alert(3)</script>',
           '" onmouseover="alert(4)', "url(http://example.com/leak.png)", 'plain']


def test_hostile_labels_in_chromium(browser, tmp_path):
    from PIL import Image
    from sgre.report import write_report
    rng = np.random.default_rng(0)
    n, C = 60, len(HOSTILE)
    Y = (rng.random((n, C)) < 0.3).astype(np.uint8)
    S = np.clip(0.3 + 0.4 * Y + rng.normal(0, 0.25, (n, C)), 0, 1).astype(np.float32)
    folder = tmp_path / '"><img src=http:'                  # a folder name that tries to close the attribute too
    folder.mkdir()
    for i in range(n): Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    items = [str(folder / f'{i}.png') for i in range(n)]
    report = write_report(tmp_path / 'report.html', S, Y, HOSTILE, items=items, title='<script>alert(5)</script>',
                          notes=['<img src="http://example.com/x.png">'], class_notes={'plain': '<b onclick=alert(6)>x</b>'})
    ctx, page, problems = open_offline(browser, report)
    try:
        assert page.evaluate('document.scripts.length') == 0
        assert page.evaluate("document.querySelectorAll('[onerror],[onmouseover],[onclick]').length") == 0
        rows = page.eval_on_selector_all('#per-class tbody tr', 'rs => rs.map(r => r.cells[1].innerText)')
        assert sorted(rows) == sorted(HOSTILE), rows                   # each label shown as the text it is
        assert page.inner_text('header .title') == '<script>alert(5)</script>'
        assert '<img src="http://example.com/x.png">' in page.inner_text('header ul')
        imgs = images(page)
        assert imgs and all(i[2] and i[3] > 0 for i in imgs), imgs
        assert all(page.evaluate('[...document.images].map(i => i.src.slice(0, 5))')) and \
            set(page.evaluate('[...document.images].map(i => i.src.slice(0, 11))')) == {'data:image/'}
    finally:
        ctx.close()
    assert not problems, problems
