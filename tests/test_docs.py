"""The docs site: built offline by tools/build_docs.py, then checked in headless Chromium.

The build fails on any `smalldocs render --strict` warning and stamps `_docs/` only when it succeeds, so a
current stamp means a site with zero warnings.

The build runs first (it returns at once when `_docs/` is current for the tree; its stamp is checked
here), then Debian's Chromium, driven by Playwright, loads every page from `python -m http.server` on
127.0.0.1 with every other host blocked. Screenshots of each page go to tests/artifacts/docs/.

Chromium must be at /usr/bin/chromium (`.ci/run` installs it); set SGRE_SKIP_BROWSER=1 to skip the
browser checks on a machine without it (the build is still checked).
"""
import ast, json, os, re, socket, subprocess, sys, time, urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / '_docs'
NBS = ROOT / 'nbs'
ART = ROOT / 'tests' / 'artifacts' / 'docs'
sys.path.insert(0, str(ROOT / 'tools'))
import build_docs  # noqa: E402


# ---------------------------------------------------------------- what the site must hold, from nbs/ and sgre/

def _directives(cell) -> dict:
    return build_docs._directives(''.join(cell['source']))[0]


def notebooks() -> dict[str, dict]:
    "Each notebook that nbdev documents, by its page (nbs/00_core.ipynb -> core.html), found as nbdev finds them."
    from nbdev.doclinks import _nbpath2html, nbglob
    out, cwd = {}, os.getcwd()
    os.chdir(ROOT)   # nbdev reads settings.ini from the working directory
    try: found = sorted(nbglob(NBS, func=Path, skip_folder_re=build_docs.SKIP_FOLDERS))
    finally: os.chdir(cwd)
    for f in found:
        nb = json.loads(Path(f).read_text(encoding='utf-8'))
        visible = [c for c in nb['cells'] if c['cell_type'] != 'code'
                   or not ('hide' in _directives(c) or _directives(c).get('include') == 'false')]
        out[_nbpath2html(Path(f).relative_to(NBS)).as_posix()] = dict(
            module=next((m.group(1) for c in nb['cells'] if c['cell_type'] == 'code'
                         for m in [re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)] if m), None),
            plots=sum(1 for c in visible if c['cell_type'] == 'code' and _directives(c).get('output') != 'false'
                      for o in c.get('outputs', []) if {'image/png', 'image/jpeg', 'image/svg+xml'} & o.get('data', {}).keys()))
    return out


def public_api(module: str) -> dict[str, str]:
    "The module's public functions and classes (its `__all__`), each with the anchor nbdev's index gives it."
    src = ROOT / 'sgre' / (module.replace('.', '/') + '.py')
    names = []
    for node in ast.parse(src.read_text(encoding='utf-8')).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in node.targets):
            names = ast.literal_eval(node.value)
    g = {}
    exec((ROOT / 'sgre' / '_modidx.py').read_text(encoding='utf-8'), g)
    syms = g['d']['syms'].get(f'sgre.{module}', {})
    return {n: syms[f'sgre.{module}.{n}'][0].split('#', 1)[1] for n in names if f'sgre.{module}.{n}' in syms}


PAGES = notebooks()
MODULE_PAGES = sorted(p for p, v in PAGES.items() if v['module'])   # the pages that export a module


# ---------------------------------------------------------------- the build

@pytest.fixture(scope='module')
def site() -> Path:
    "Build the site as CI does (a no-op when it is current), and make sure what is served is this tree's."
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_docs.py'), '--no-readme'], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    if r.returncode: pytest.fail(f'python tools/build_docs.py failed:\n{r.stdout}\n{r.stderr}', pytrace=False)
    print(f'build: {time.perf_counter() - t:.1f} s: {r.stdout.strip()}')
    return DOCS


def test_build_is_current_and_complete(site):
    stamp = json.loads((site / build_docs.STAMP).read_text())
    from nbdev.config import get_config
    now = build_docs.fingerprint(get_config(ROOT / 'settings.ini'), NBS)
    changed = sorted(f for f in {*stamp['files'], *now['files']} if stamp['files'].get(f) != now['files'].get(f))
    assert stamp['code'] == now['code'] and not changed, \
        f'_docs/ was not built from this tree (changed since: {changed or "the library or the build"}): build again'
    missing = [p for p in PAGES if not (site / p).is_file()]
    assert not missing, f'pages missing from _docs/: {missing}'
    assert (site / 'search.json').is_file() and (site / 'site_libs' / 'katex' / 'katex.min.js').is_file()


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope='module')
def server(site):
    "`python -m http.server` on 127.0.0.1, serving _docs/ (search fetches search.json, so file:// will not do)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory', str(site)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=1).close(); break
            except OSError: time.sleep(0.1)
        else: pytest.fail('python -m http.server did not start', pytrace=False)
        yield base
    finally:
        p.terminate(); p.wait(10)


@pytest.fixture(scope='module')
def browser():
    if os.environ.get('SGRE_SKIP_BROWSER') == '1': pytest.skip('SGRE_SKIP_BROWSER=1: browser checks skipped')
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f'{CHROMIUM} is missing: the docs are checked in Debian\'s Chromium, which .ci/run installs '
                    '(apt-get install -y chromium); set SGRE_SKIP_BROWSER=1 to skip these checks locally.', pytrace=False)
    try: from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('playwright is missing: pip install -e ".[dev]" installs it (no `playwright install` is needed).', pytrace=False)
    with sync_playwright() as pw:
        # Playwright gives each launch a fresh temporary profile (--user-data-dir).
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


class Page:
    "A page open in Chromium, with what went wrong while it loaded: console errors, page errors, failed and outside requests."
    def __init__(self, browser, base: str, name: str):
        self.ctx = browser.new_context(viewport={'width': 1280, 'height': 900})
        self.page, self.base, self.name, self.problems = self.ctx.new_page(), base, name, []
        host = urlparse(base).netloc
        def route(r):
            if urlparse(r.request.url).netloc == host: r.continue_()
            else:
                self.problems.append(f'request outside the site: {r.request.url}'); r.abort()
        self.page.route('**/*', route)
        self.page.on('console', lambda m: m.type == 'error' and self.problems.append(f'console error: {m.text} ({m.location})'))
        self.page.on('pageerror', lambda e: self.problems.append(f'page error: {e}'))
        self.page.on('requestfailed', lambda r: self.problems.append(f'request failed: {r.url} {r.failure}'))
        self.page.on('response', lambda r: r.status >= 400 and self.problems.append(f'HTTP {r.status}: {r.url}'))
        self.page.goto(base + name, wait_until='networkidle')
        self.page.evaluate('document.fonts.ready.then(() => true)')

    def shot(self, tag: str = ''):
        ART.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ART / f'{tag}{Path(self.name).stem}.png'))

    def fail(self, msg: str):
        self.shot('FAILED-')
        pytest.fail(f'{self.name}: {msg}', pytrace=False)

    def close(self): self.ctx.close()


@pytest.fixture(scope='module')
def pages(browser, server):
    "Every page, opened once; screenshots of each go to tests/artifacts/docs/."
    for old in ART.glob('*.png'): old.unlink()
    opened = {}
    for name in PAGES:
        opened[name] = Page(browser, server, name)
        opened[name].shot()
    yield opened
    for p in opened.values(): p.close()


@pytest.mark.parametrize('name', sorted(PAGES))
def test_page_loads_cleanly(pages, name):
    p = pages[name]
    if p.problems: p.fail('\n'.join(p.problems))
    title = p.page.title()
    assert title and 'sgre' in title.lower(), title
    main = p.page.inner_text('main')
    assert len(main) > 200, f'{name} is nearly empty: {main[:200]!r}'


def test_sidebar_links_every_module(pages, server):
    p = pages['index.html']
    hrefs = p.page.eval_on_selector_all('#quarto-sidebar a[href]', 'els => els.map(e => e.href)')
    linked = {urlparse(h).path.lstrip('/') for h in hrefs}
    missing = [m for m in PAGES if m not in linked]
    if missing: p.fail(f'the sidebar does not link to {missing}; it links to {sorted(linked)}')


@pytest.mark.parametrize('name', MODULE_PAGES)
def test_module_page_shows_its_api(pages, name):
    """Each public function and class of the page's module has nbdev's anchor (`core.html#atomic_write`, which
    its links use) and a `show_doc` block: its name, its signature and its docstring."""
    module = PAGES[name]['module']
    api = public_api(module)
    assert api, f'sgre.{module} has no public functions or classes in its __all__'
    found = pages[name].page.evaluate(r'''api => api.map(([name, anchor]) => {
        const esc = anchor.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        const re = new RegExp('^' + esc + '(-\\d+)?$');   // a heading of the same name before it takes the bare id
        const heads = [...document.querySelectorAll('main .cell-output :is(h2, h3, h4)')]
            .filter(h => re.test(h.id) && h.textContent.trim() === name);
        let sig = '', doc = '';
        for (const h of heads)
            for (let n = h.nextElementSibling; n && !/^(H[1-4]|HR)$/.test(n.tagName); n = n.nextElementSibling) {
                const pre = n.matches('pre, .sourceCode') ? n : n.querySelector('pre');
                if (!sig && pre) sig = pre.innerText;
                else if (sig && !doc && n.tagName === 'P') doc = n.innerText.trim();
            }
        return [name, !!document.getElementById(anchor), heads.length, sig, doc];
    })''', list(api.items()))
    problems = []
    for sym, target, heads, sig, doc in found:
        if not target: problems.append(f'{sym}: no #{api[sym]} on the page (nbdev links to it)')
        if not heads: problems.append(f'{sym}: no show_doc heading')
        elif not re.search(rf'\b(def|class)\s+{re.escape(sym)}\b', sig): problems.append(f'{sym}: no signature: {sig[:80]!r}')
        elif not doc: problems.append(f'{sym}: no docstring under its signature')
    if problems: pages[name].fail('\n'.join(problems))
    block = pages[name].page.locator('main .cell-output-markdown', has=pages[name].page.locator('h3, h4')).first
    block.scroll_into_view_if_needed()
    block.screenshot(path=str(ART / f'{Path(name).stem}-api.png'))


def test_links_between_pages_land(pages, server):
    """Every link from one page of the site to another (nbdev links each backticked symbol) reaches a page and its
    anchor. Private names (`_helper`) are in nbdev's index but get no show_doc, so their links reach the page only."""
    ids = {n: set(p.page.eval_on_selector_all('[id]', 'els => els.map(e => e.id)')) for n, p in pages.items()}
    problems = []
    for name, p in pages.items():
        hrefs = p.page.eval_on_selector_all('main a[href]', 'els => els.map(e => e.href)')
        for h in hrefs:
            u = urlparse(h)
            if not h.startswith(server): continue
            target = u.path.lstrip('/') or 'index.html'
            if target not in ids: problems.append(f'{name}: {h} is not a page of the site')
            elif u.fragment and u.fragment not in ids[target] and not u.fragment.startswith('_'): problems.append(f'{name}: {h}: no #{u.fragment} on {target}')
    assert not problems, '\n'.join(problems[:30])
    external = [h for p in pages.values() for h in p.page.eval_on_selector_all('a[href]', 'els => els.map(e => e.href)')
                if urlparse(h).netloc == urlparse(build_docs_site_url()).netloc]
    assert not external, f'links to the published site, not this one: {external[:10]}'


def build_docs_site_url() -> str:
    from nbdev.config import get_config
    cfg = get_config(ROOT / 'settings.ini')
    return f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}"


def test_search_finds_the_model_page(pages):
    p = pages['index.html'].page
    box = p.locator('.smalldocs-search:visible input').first
    box.click(); box.fill('SGRE')
    p.wait_for_selector('.smalldocs-search-results.show a.search-result', timeout=10_000)
    hits = p.eval_on_selector_all('.smalldocs-search-results.show a.search-result', 'els => els.map(e => e.href)')
    pages['index.html'].shot('search-')
    assert any(urlparse(h).path.endswith('/model.html') for h in hits), f'a search for SGRE gives {hits}'
    p.keyboard.press('Escape')


def test_model_equations_render_with_katex(pages):
    p = pages['model.html']
    res = p.page.evaluate('''() => {
        const main = document.querySelector('main').cloneNode(true);
        main.querySelectorAll('pre, code, .katex').forEach(e => e.remove());
        const fonts = [...document.fonts].filter(f => f.family.includes('KaTeX'));
        return {katex: document.querySelectorAll('main .katex').length,
                display: document.querySelectorAll('main .katex-display').length,
                errors: [...document.querySelectorAll('main .katex-error')].map(e => e.title || e.innerText),
                raw: (main.innerText.match(/\\\\\\(|\\\\\\[|\\$\\$|\\$[^$\\s][^$]*\\$/g) || []).slice(0, 5),
                fonts: fonts.filter(f => f.status === 'loaded').length,
                typeset: typeof renderMathInElement};
    }''')
    if res['typeset'] != 'function': p.fail('KaTeX did not load (renderMathInElement is missing)')
    if res['katex'] < 10 or res['display'] < 1: p.fail(f'too few equations typeset: {res}')
    if res['errors']: p.fail(f'KaTeX could not typeset: {res["errors"][:5]}')
    if res['raw']: p.fail(f'raw TeX left in the page: {res["raw"]}')
    if not res['fonts']: p.fail('no KaTeX font was loaded')
    eq = p.page.locator('main .katex-display').first
    eq.scroll_into_view_if_needed()
    ART.mkdir(parents=True, exist_ok=True)
    eq.locator('xpath=..').screenshot(path=str(ART / 'model-equation.png'))


@pytest.mark.parametrize('name', sorted(n for n, v in PAGES.items() if v['plots']))
def test_plots_are_images(pages, name):
    p = pages[name]
    imgs = p.page.evaluate('''async () => {
        const imgs = [...document.querySelectorAll('main .cell-output img, main figure img')];
        await Promise.all(imgs.map(i => i.decode().catch(() => null)));
        return imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
    }''')
    good = [i for i in imgs if i[0] and i[1] > 0 and i[2] > 0]
    if not good: p.fail(f'the notebook has {PAGES[name]["plots"]} plot output(s), the page no decoded image: {imgs}')
    first = p.page.locator('main .cell-output img, main figure img').first
    first.scroll_into_view_if_needed()
    ART.mkdir(parents=True, exist_ok=True)
    first.screenshot(path=str(ART / f'{Path(name).stem}-plot.png'))


# ---------------------------------------------------------------- what a page announces, it shows

_SHOWN = {'table', 'ol', 'ul', 'dl', 'pre', 'figure', 'img', 'blockquote'}
_SHOWN_DIVS = {'sd-table', 'code-copy-outer-scaffold', 'sourceCode'}


def _announces(el) -> bool:
    "Does `el`, the element after a paragraph that ends in a colon, hold something to read (a table, code, a list, math, a figure)?"
    if el is None or el.name in ('h1', 'h2', 'h3', 'h4', 'h5', 'h6'): return False
    if el.name in _SHOWN: return True
    if el.find(class_=['math display', 'katex-display']) is not None or 'display' in (el.get('class') or []): return True
    if el.name == 'div':
        cls = set(el.get('class') or [])
        if cls & _SHOWN_DIVS: return True
        if 'cell' in cls: return bool(el.get_text(strip=True)) or el.find('img') is not None
    return el.name != 'p' and el.find(['pre', 'table', 'img', 'ul', 'ol']) is not None


@pytest.mark.parametrize('name', sorted(PAGES))
def test_a_colon_is_followed_by_what_it_announces(site, name):
    """A paragraph that ends in a colon ("The aliases:") announces what comes next; nbdev shows no source for exported
    cells, so a sentence before a hidden or exported cell can be left hanging. Every such paragraph must be followed by
    something a reader sees: a table, code, a list, display math, a figure, or a cell with output or source."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup((site / name).read_text(encoding='utf-8'), 'html.parser')
    hanging = [p.get_text(' ', strip=True)[-100:] for p in soup.find('main').find_all('p')
               if p.get_text(strip=True).endswith(':') and not _announces(p.find_next_sibling())]
    assert not hanging, f'{name}: paragraphs that announce something the page does not show:\n' + '\n'.join(hanging)
