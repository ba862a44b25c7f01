"""Build the project's documents without Quarto: the docs site in `_docs/` and README.md.

    python tools/build_docs.py                # the site into _docs/, and README.md from nbs/index.ipynb
    python tools/build_docs.py --no-readme    # the site only (the docs test uses this)
    python tools/build_docs.py --readme-only  # README.md only: no site, no npm
    python tools/build_docs.py --force        # rebuild the site even when _docs/ is current
    python tools/build_docs.py --check        # fail if README.md is not what the notebook gives

The site is what `nbdev_docs` makes, rendered without Quarto, which cannot be installed everywhere:

1. nbdev's own pre-Quarto steps, called from Python (not `nbdev_docs`/`nbdev_proc_nbs`, which try to
   install Quarto): `refresh_quarto_yml` writes nbs/_quarto.yml and nbs/nbdev.yml, `nbdev_sidebar`
   writes nbs/sidebar.yml, and `proc_nbs` runs nbdev's notebook processors into `_proc/` (so
   `show_doc` output is there), with one change (tools/docs_processors.py): of a cell that mixes
   imports with other code, only the imports run. The module index (sgre/_modidx.py) is
   `nbdev_export`'s: it is only checked here, never written. The three .yml files are regenerated
   by every build (gitignored); nbs/styles.css is the site's own stylesheet.
2. A staged copy of `_proc/` is adapted for smalldocs: notebooks are renamed to their `output-file`
   (so nbdev's `module.html#symbol` links hold), with links and the sidebar following; nbdev's
   links to the published site (doc_host) become relative, so they work offline; Quarto-only keys
   are dropped.
3. `smalldocs render --strict` renders it; any warning fails the build.
4. KaTeX comes from the `katex` npm package, copied into the site, so
   equations render offline; the theme's Google Fonts import is dropped (its fallback fonts are used);
   the build fails if a page or stylesheet still loads anything from the network. When tools/node_modules
   lacks the pinned version (a fresh clone), the build runs `npm ci --prefix tools --no-audit --no-fund`
   itself (the npm registry, once; npm must be installed).
5. The finished site replaces `_docs/` in one rename, with a stamp of its inputs: a failed build
   leaves the previous site, never half of one, and an unchanged tree is not rebuilt.

`nbdev_readme` renders through Quarto too; README.md is made with nbconvert's Markdown exporter
after dropping what nbdev hides (cells marked `#| hide`, directive lines, outputs of `#| echo: false`
cells are kept but their source is dropped: such a cell gives its outputs only, no empty code block).
"""
import argparse, copy, hashlib, json, os, posixpath, re, shutil, subprocess, sys, tempfile, time
from importlib.metadata import version
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / 'tools'
KATEX_DIST = TOOLS / 'node_modules' / 'katex' / 'dist'
STAMP = '.build-stamp.json'   # in _docs/: what the site was built from
# Folders of nbs/ that are not documentation: nbdev's default (`_` and `.` folders) and the data and
# experiment folders that running the notebooks leaves there (gitignored).
SKIP_FOLDERS = r'^[_.]|^(?:data|experiments)$'
_DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(.*)$')


# ---------------------------------------------------------------- README.md

def _directives(src: str) -> tuple[dict, str]:
    "Split nbdev `#| key: value` lines from the rest of a code cell."
    found, keep = {}, []
    for line in src.splitlines():
        m = _DIRECTIVE.match(line)
        if m:
            text = m.group(1).strip()
            key, val = text.split(':', 1) if ':' in text else (text.split(None, 1) + [''])[:2]
            found[key.strip()] = val.strip()
        else: keep.append(line)
    return found, '\n'.join(keep).strip('\n')


def _page_links() -> dict:
    "Docs page name -> notebook path, e.g. 'model.html' -> 'nbs/03_model.ipynb' (nbdev drops the number prefix)."
    return {re.sub(r'^\d+[a-z]?_', '', p.stem) + '.html': f'nbs/{p.name}' for p in sorted((ROOT / 'nbs').glob('*.ipynb'))}


def readme_notebook(nb):
    "The index notebook as the README shows it: links to doc pages point at their notebooks."
    nb = copy.deepcopy(nb)
    pages = _page_links()
    link = re.compile(r'\]\(([A-Za-z0-9_]+\.html)(#[^)]*)?\)')
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            cell.source = link.sub(lambda m: f'](' + pages.get(m.group(1), m.group(1)) + (m.group(2) or '') + ')', cell.source)
        if cell.cell_type == 'code':
            d, src = _directives(cell.source)
            if 'hide' in d or 'default_exp' in d and not src: continue
            if d.get('echo') == 'false': src = ''
            cell.source = src
            if not src: cell.metadata['transient'] = {'remove_source': True}   # its outputs only, no empty code block
            cell.outputs = [o for o in cell.outputs if o.get('output_type') != 'stream' or o.get('name') != 'stderr']
            for o in cell.outputs:   # fastprogress's tables carry a <style> block that Markdown viewers print as text
                html = o.get('data', {}).get('text/html')
                if html: o['data']['text/html'] = re.sub(r'<style>.*?</style>\s*', '', ''.join(html), flags=re.S)
        cells.append(cell)
    nb.cells = cells
    nb.metadata['language_info'] = {'name': 'python'}   # fenced code blocks get highlighted
    return nb


def build_readme() -> tuple:
    "README.md's text and its images (file name -> PNG bytes, shown from README_files/)."
    import nbformat
    from nbconvert import MarkdownExporter
    nb = nbformat.read(ROOT / 'nbs' / 'index.ipynb', as_version=4)
    body, res = MarkdownExporter().from_notebook_node(readme_notebook(nb), resources={'output_files_dir': 'README_files'})
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    images = {Path(k).name: v for k, v in res.get('outputs', {}).items()}
    return '<!-- Generated from nbs/index.ipynb by tools/build_docs.py: edit the notebook, not this file. -->\n\n' + body, images


def write_readme():
    readme, files = ROOT / 'README.md', ROOT / 'README_files'
    text, images = build_readme()
    files.mkdir(exist_ok=True)
    for old in files.glob('*'):
        if old.name not in images: old.unlink()
    for name, data in images.items():
        tmp = files / f'.{name}.tmp'
        tmp.write_bytes(data); tmp.replace(files / name)
    tmp = readme.with_suffix('.md.tmp')
    tmp.write_text(text, encoding='utf-8')
    tmp.replace(readme)
    print(f'wrote {readme.relative_to(ROOT)}' + (f' and {len(images)} image(s) in README_files/' if images else ''))


def check_readme():
    readme, files = ROOT / 'README.md', ROOT / 'README_files'
    text, images = build_readme()
    have = {p.name: p.read_bytes() for p in files.glob('*')} if files.exists() else {}
    if not readme.exists() or readme.read_text(encoding='utf-8') != text or have != images:
        sys.exit('README.md (or README_files/) is stale: run `python tools/build_docs.py --readme-only` and commit them.')
    print('README.md is current.')


# ---------------------------------------------------------------- step 1: nbdev's pre-Quarto steps

class BuildFailed(Exception): "A build that cannot go on; the message says what to do."


def nbdev_config_files(nbs: Path):
    "nbdev's first pre-Quarto steps: nbs/_quarto.yml (when missing) and nbs/nbdev.yml from settings.ini, and nbs/sidebar.yml."
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    refresh_quarto_yml()
    nbdev_sidebar.__wrapped__(path=nbs, skip_folder_re=SKIP_FOLDERS)


def process_notebooks(cfg, nbs: Path, force: bool) -> Path:
    "nbdev's last pre-Quarto step: the notebooks through its processors into `_proc/`, with `show_doc` output."
    from nbdev import serve
    if str(TOOLS) not in sys.path: sys.path.insert(0, str(TOOLS))   # nbdev's workers import it by this name
    from docs_processors import SafeFilterDefaults
    check_modidx(cfg, nbs)
    orig = serve.FilterDefaults
    serve.FilterDefaults = SafeFilterDefaults   # what `_proc_file` hands to each worker
    try:
        return serve.proc_nbs(nbs, n_workers=min(2, os.cpu_count() or 1), force=force, skip_folder_re=SKIP_FOLDERS)
    except Exception as e:   # a cell that show_doc needs failed: nbdev names the notebook's title and the cell
        raise BuildFailed(f'nbdev could not process the notebooks (cells are counted from 0): {e}') from e
    finally: serve.FilterDefaults = orig


def check_modidx(cfg, nbs: Path):
    "Warn when sgre/_modidx.py (nbdev's symbol index, written by `nbdev_export`) is not what the library gives."
    from nbdev.doclinks import _build_modidx
    lib = cfg.lib_path
    idx = lib / '_modidx.py'
    with tempfile.TemporaryDirectory() as d:   # built in a copy of the library: the build never writes to sgre/
        shutil.copytree(lib, Path(d) / lib.name, ignore=shutil.ignore_patterns('__pycache__'))
        (Path(d) / nbs.name).symlink_to(nbs)
        _build_modidx(dest=Path(d) / lib.name, nbs_path=nbs)
        fresh = Path(d) / lib.name / '_modidx.py'
        fresh = fresh.read_text(encoding='utf-8') if fresh.exists() else None   # nbdev makes none when IN_TEST is set
    if fresh is not None and (not idx.exists() or idx.read_text(encoding='utf-8') != fresh):
        print(f'warning: {idx.relative_to(ROOT)} is stale, so some symbol links may be missing: run nbdev_export', file=sys.stderr)


# ---------------------------------------------------------------- step 2: adapt _proc/ for smalldocs

_FRONT = re.compile(r'\A---\s*\n(.*?)\n---\s*\n?', re.S)
QUARTO_ONLY_PAGE_KEYS = ('output-file', 'keep-md', 'commonmark')


def _sources(nbs: Path) -> list[Path]:
    "The files of nbs/ that `proc_nbs` puts in `_proc/`, relative to nbs/ (so files gone from nbs/ are left behind)."
    from nbdev.doclinks import nbglob
    files = [Path(f).relative_to(nbs) for f in nbglob(nbs, func=Path, file_glob='', file_re='', skip_folder_re=SKIP_FOLDERS)]
    return sorted(files + [Path(n) for n in ('_quarto.yml', '_brand.yml') if (nbs / n).exists()])


def _notebook_front(nb: dict) -> tuple[dict | None, dict]:
    "The raw front-matter cell nbdev's processors put first, and what it says."
    import yaml
    for cell in nb['cells']:
        if cell['cell_type'] == 'raw':
            m = _FRONT.match(''.join(cell['source']))
            if m: return cell, yaml.safe_load(m.group(1)) or {}
        if cell['cell_type'] != 'raw': break
    return None, {}


def _rewrite_links(text: str, page: PurePosixPath, renamed: dict, site_url: str) -> str:
    """Point links at renamed notebooks, and nbdev's links into this site (`{site_url}/model.html#sgre`,
    from its symbol index) at the page itself, relative, so they work offline; other links are left as written."""
    def fix(target: str) -> str:
        if site_url and target.startswith(site_url + '/'):
            path, _, hashpart = target[len(site_url) + 1:].partition('#')
            return posixpath.relpath(path or 'index.html', str(page.parent) or '.') + ('#' + hashpart if hashpart else '')
        path, _, hashpart = target.partition('#')
        if not path or re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:|^/', path): return target
        full = PurePosixPath(posixpath.normpath(posixpath.join(str(page.parent), path)))
        if full not in renamed: return target
        new = posixpath.relpath(str(renamed[full]), str(page.parent) or '.')
        return new + ('#' + hashpart if hashpart else '')
    text = re.sub(r'(\]\()([^)\s]+)', lambda m: m.group(1) + fix(m.group(2)), text)
    return re.sub(r'''(\bhref=["'])([^"']+)''', lambda m: m.group(1) + fix(m.group(2)), text)


def _rename_sidebar(entries, renamed: dict):
    "The sidebar's contents with renamed notebooks."
    out = []
    for e in entries:
        if isinstance(e, str): out.append(str(renamed.get(PurePosixPath(e), e)))
        elif isinstance(e, dict):
            e = dict(e)
            for k in ('href', 'file'):
                if isinstance(e.get(k), str): e[k] = str(renamed.get(PurePosixPath(e[k]), e[k]))
            if isinstance(e.get('contents'), list): e['contents'] = _rename_sidebar(e['contents'], renamed)
            out.append(e)
        else: out.append(e)
    return out


def stage_project(proc: Path, nbs: Path, proj: Path, out_dir: Path, site_url: str):
    "Copy `_proc/` into `proj` as smalldocs reads it; the site is to be written to `out_dir`."
    import yaml
    for rel in _sources(nbs):
        src = proc / (rel.with_suffix('') if rel.suffix == '.py' else rel)
        if not src.exists(): raise BuildFailed(f'{src.relative_to(ROOT)} is missing: nbdev did not process nbs/{rel}')
        (proj / src.relative_to(proc)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, proj / src.relative_to(proc))

    # Notebooks become their `output-file` (00_core.ipynb -> core.ipynb -> core.html), as Quarto names them.
    pages, renamed = {}, {}
    for f in sorted(proj.rglob('*.ipynb')):
        rel = PurePosixPath(f.relative_to(proj).as_posix())
        nb = json.loads(f.read_text(encoding='utf-8'))
        cell, front = _notebook_front(nb)
        target = rel
        if front.get('output-file'):
            target = rel.parent / (PurePosixPath(str(front['output-file'])).stem + '.ipynb')
        if cell is not None:
            kept = {k: v for k, v in front.items() if k not in QUARTO_ONLY_PAGE_KEYS}
            cell['source'] = '---\n' + yaml.safe_dump(kept, sort_keys=False, allow_unicode=True, width=10_000) + '---\n'
        pages[rel] = nb
        renamed[rel] = target
    clash = {t for t in renamed.values() if list(renamed.values()).count(t) > 1}
    if clash: raise BuildFailed(f'two notebooks would both become {", ".join(map(str, sorted(clash)))}: rename one')
    for rel, nb in pages.items():
        def fix(text): return _rewrite_links(''.join(text), renamed[rel], renamed, site_url)
        for cell in nb['cells']:
            if cell['cell_type'] == 'markdown': cell['source'] = fix(cell['source'])
            for out in cell.get('outputs', []):   # show_doc output: docstrings are linked too
                for mime in ('text/markdown', 'text/html'):
                    if mime in out.get('data', {}): out['data'][mime] = fix(out['data'][mime])
        (proj / rel).unlink()
        (proj / renamed[rel]).write_text(json.dumps(nb, ensure_ascii=False, indent=1), encoding='utf-8')
    for f in list(proj.rglob('*.qmd')) + list(proj.rglob('*.md')):
        rel = PurePosixPath(f.relative_to(proj).as_posix())
        f.write_text(_rewrite_links(f.read_text(encoding='utf-8'), rel, renamed, site_url), encoding='utf-8')

    sidebar = proj / 'sidebar.yml'
    if sidebar.exists():
        sb = yaml.safe_load(sidebar.read_text(encoding='utf-8')) or {}
        side = sb.get('website', {}).get('sidebar', {})
        if isinstance(side.get('contents'), list): side['contents'] = _rename_sidebar(side['contents'], renamed)
        sidebar.write_text(yaml.safe_dump(sb, sort_keys=False), encoding='utf-8')

    # Quarto-only keys of nbdev's _quarto.yml (smalldocs warns about each); the site goes to `out_dir`.
    qy = proj / '_quarto.yml'
    q = yaml.safe_load(qy.read_text(encoding='utf-8')) or {}
    fmt = q.get('format') or {}
    for k in QUARTO_ONLY_PAGE_KEYS:
        fmt.pop(k, None)
        if isinstance(fmt.get('html'), dict): fmt['html'].pop(k, None)
    q.setdefault('project', {})['output-dir'] = os.path.relpath(out_dir, proj)
    qy.write_text(yaml.safe_dump(q, sort_keys=False), encoding='utf-8')
    for meta in (proj / 'nbdev.yml',):   # nbdev.yml sets output-dir too, and _quarto.yml must win
        if meta.exists():
            m = yaml.safe_load(meta.read_text(encoding='utf-8')) or {}
            m.get('project', {}).pop('output-dir', None)
            meta.write_text(yaml.safe_dump(m, sort_keys=False), encoding='utf-8')
    return {str(new): str(old) for old, new in renamed.items()}


# ---------------------------------------------------------------- steps 3 and 4: smalldocs, KaTeX

def _where(line: str, nbs: Path, sources: dict) -> str:
    "A smalldocs warning about a staged page, with the notebook (and for a broken link, the cells) it comes from."
    m = re.match(r'warning: ([^:\s]+\.ipynb): (?:broken link (\S+))?', line)
    if not m or m.group(1) not in sources: return line
    src = nbs / sources[m.group(1)]
    cells = []
    if m.group(2):
        nb = json.loads(src.read_text(encoding='utf-8'))
        cells = [str(i) for i, c in enumerate(nb['cells']) if m.group(2) in ''.join(c['source'])]
    return f"{line}  [{src.relative_to(ROOT)}{', cell ' + ', '.join(cells) if cells else ''}]"


def render(proj: Path, nbs: Path, sources: dict) -> int:
    "`smalldocs render --strict`: every warning is a problem to fix, reported with the notebook it comes from."
    r = subprocess.run([sys.executable, '-m', 'smalldocs.cli', 'render', str(proj), '--strict', '--quiet'],
                       capture_output=True, text=True)
    warns = [l for l in r.stderr.splitlines() if l.startswith('warning:')]
    if r.returncode or warns:
        notes = [_where(l, nbs, sources) for l in (r.stdout + r.stderr).strip().splitlines()]
        raise BuildFailed(f'smalldocs render --strict failed ({len(warns)} warning(s), exit {r.returncode}); cells '
                          'are counted from 0 in the notebook as saved:\n' + '\n'.join(notes))
    return len(warns)


def _katex_version() -> str | None:
    pkg = KATEX_DIST.parent / 'package.json'
    return json.loads(pkg.read_text())['version'] if pkg.exists() else None


def katex_dist() -> Path:
    """The `katex` npm package that tools/package.json pins, under tools/node_modules: when it is missing
    (a fresh clone) or another version, `npm ci` installs what tools/package-lock.json says, as `.ci/run` does."""
    want = json.loads((TOOLS / 'package.json').read_text())['dependencies']['katex']
    have = _katex_version()
    if have == want: return KATEX_DIST
    cmd = ['npm', 'ci', '--prefix', 'tools', '--no-audit', '--no-fund']
    if not shutil.which('npm'):
        raise BuildFailed(f'KaTeX {want} is needed under tools/node_modules (found {have or "none"}), and npm is not '
                          'installed to fetch it: install Node.js with npm (Debian/Ubuntu: `sudo apt-get install npm`; '
                          f'others: https://nodejs.org), then build again, or run `{" ".join(cmd)}` yourself.')
    print(f'KaTeX {want} is needed under tools/node_modules (found {have or "none"}): {" ".join(cmd)}', flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode or _katex_version() != want:
        raise BuildFailed(f'`{" ".join(cmd)}` did not install KaTeX {want} (exit {r.returncode}, found '
                          f'{_katex_version() or "none"}): it needs the npm registry, once; see npm\'s output above.')
    return KATEX_DIST


_REMOTE_TAG = re.compile(r'''<(script|link|img|iframe|source|video|audio)\b([^>]*?)\b(?:src|href)=["']((?:https?:)?//[^"']+)''', re.I)
_REMOTE_CSS = re.compile(r'''(?:@import\s+|url\(\s*)["']?((?:https?:)?//[^"')\s]+)''', re.I)
# The Bootswatch themes @import their web font from Google Fonts; offline, the theme's own fallback
# fonts (the system's sans-serif) are used instead.
_WEB_FONT_IMPORT = re.compile(r'''@import\s+url\(\s*["']?https://fonts\.googleapis\.com/[^)]*\)\s*;?''', re.I)


def make_offline(out: Path, dist: Path):
    "Serve KaTeX from the site (the package's dist/ files, every page pointed at them), drop web-font imports, and fail on anything else remote."
    from smalldocs.layout import KATEX as CDN
    dest = out / 'site_libs' / 'katex'
    for name in ('katex.min.css', 'katex.min.js', 'contrib/auto-render.min.js'):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist / name, dest / name)
    shutil.copytree(dist / 'fonts', dest / 'fonts', dirs_exist_ok=True)
    shutil.copy2(dist.parent / 'LICENSE', dest / 'LICENSE')
    remote = []
    for page in out.rglob('*.html'):
        text = page.read_text(encoding='utf-8')
        text = text.replace(CDN, os.path.relpath(dest, page.parent).replace(os.sep, '/'))
        page.write_text(text, encoding='utf-8')
        remote += [f'{page.relative_to(out)}: {m.group(3)}' for m in _REMOTE_TAG.finditer(text)
                   if m.group(1).lower() != 'link' or 'stylesheet' in m.group(2) + text[m.end():m.end() + 200].split('>')[0]]
    for css in out.rglob('*.css'):
        text = css.read_text(encoding='utf-8')
        if _WEB_FONT_IMPORT.search(text): css.write_text(text := _WEB_FONT_IMPORT.sub('', text), encoding='utf-8')
        remote += [f'{css.relative_to(out)}: {m.group(1)}' for m in _REMOTE_CSS.finditer(text)]
    if remote:
        raise BuildFailed('the site must work offline, but it loads from the network:\n  ' + '\n  '.join(sorted(set(remote))))


# ---------------------------------------------------------------- step 5: stamp and swap

def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(ROOT)).encode() + b'\0' + p.read_bytes() + b'\0')
    return h.hexdigest()


def fingerprint(cfg, nbs: Path) -> dict:
    """What the site is made from: `code`, what nbdev's processors run and the build itself (a change
    processes every notebook again: show_doc reads the library), and `files`, each file of nbs/."""
    tools = [TOOLS / 'build_docs.py', TOOLS / 'docs_processors.py', TOOLS / 'package.json', ROOT / 'settings.ini']
    vers = ' '.join(f'{p}={version(p)}' for p in ('nbdev', 'execnb', 'fastcore', 'smalldocs'))
    code = hashlib.sha256((_digest(list(cfg.lib_path.rglob('*.py')) + tools) + vers).encode()).hexdigest()
    return {'code': code, 'files': {f.as_posix(): _digest([nbs / f]) for f in _sources(nbs)}}


def _forget_changed(proc: Path, old: dict, new: dict):
    """Drop the `_proc/` copies of the files of nbs/ that changed since the last build. `proc_nbs` goes by
    modification times only, and misses a notebook saved while it ran."""
    for f, h in new['files'].items():
        if old.get('files', {}).get(f) != h:
            (proc / (f[:-3] if f.endswith('.py') else f)).unlink(missing_ok=True)


def build_site(force: bool = False) -> Path:
    "Build the docs site into `_docs/` (as `nbdev_docs` would); returns its folder."
    os.chdir(ROOT)   # nbdev finds settings.ini from the working directory
    from nbdev.config import get_config
    cfg = get_config()
    nbs, docs = Path(cfg.nbs_path), Path(cfg.doc_path)
    dist = katex_dist()
    t0 = time.perf_counter()
    for left in ROOT.glob('.build_docs-*'):   # from builds that were killed
        if time.time() - left.stat().st_mtime > 3600: shutil.rmtree(left, ignore_errors=True)

    nbdev_config_files(nbs)   # before the fingerprint, which covers them
    stamp_file = docs / STAMP
    old = json.loads(stamp_file.read_text()) if stamp_file.exists() else {}
    inputs = fingerprint(cfg, nbs)
    if not force and (old.get('code'), old.get('files')) == (inputs['code'], inputs['files']):
        print(f'{docs.relative_to(ROOT)}/ is current ({len(old.get("pages_built", []))} pages)')
        return docs

    _forget_changed(cfg.config_path / '_proc', old, inputs)   # where proc_nbs writes
    proc = process_notebooks(cfg, nbs, force=force or old.get('code') != inputs['code'])
    t1 = time.perf_counter()
    stage = Path(tempfile.mkdtemp(dir=ROOT, prefix='.build_docs-'))
    try:
        proj, out = stage / 'project', stage / 'site'
        sources = stage_project(proc, nbs, proj, out, site_url=f"{cfg.get('doc_host', '')}{cfg.get('doc_baseurl', '')}".rstrip('/'))
        render(proj, nbs, sources)
        make_offline(out, dist)
        pages = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.html'))
        # The inputs as they were read first: a file saved during the build makes the next build run again.
        (out / STAMP).write_text(json.dumps({**inputs, 'pages_built': pages}, indent=1))
        if docs.exists(): docs.rename(stage / 'previous')
        try: out.rename(docs)
        except OSError:
            if (stage / 'previous').exists(): (stage / 'previous').rename(docs)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    t2 = time.perf_counter()
    print(f'wrote {docs.relative_to(ROOT)}/: {len(pages)} pages, smalldocs render --strict: 0 warnings '
          f'(nbdev steps {t1 - t0:.0f} s, smalldocs and the rest {t2 - t1:.0f} s)')
    return docs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='only check that README.md is current; build nothing')
    ap.add_argument('--no-readme', action='store_true', help='build the site only')
    ap.add_argument('--readme-only', action='store_true', help='write README.md only; build no site')
    ap.add_argument('--force', action='store_true', help='rebuild the site even when _docs/ is current')
    a = ap.parse_args(argv)
    if a.check: return check_readme()
    if a.readme_only: return write_readme()
    try: build_site(force=a.force)
    except BuildFailed as e: sys.exit(f'build_docs: {e}')
    if not a.no_readme: write_readme()


if __name__ == '__main__':
    main()
