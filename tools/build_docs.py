"""Build the project's documents without Quarto.

    python tools/build_docs.py            # README.md from nbs/index.ipynb
    python tools/build_docs.py --check    # fail if README.md is not what the notebook gives

`nbdev_readme` renders through Quarto, which cannot be installed everywhere; this does the same
job with nbconvert's Markdown exporter after dropping what nbdev hides (cells marked `#| hide`,
directive lines, outputs of `#| echo: false` cells are kept but their source is dropped).
"""
import argparse, copy, re, sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
_DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(.*)$')


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


def readme_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "The index notebook as the README shows it."
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'code':
            d, src = _directives(cell.source)
            if 'hide' in d or 'default_exp' in d and not src: continue
            if d.get('echo') == 'false': src = ''
            cell.source = src
            cell.outputs = [o for o in cell.outputs if o.get('output_type') != 'stream' or o.get('name') != 'stderr']
        cells.append(cell)
    nb.cells = cells
    nb.metadata['language_info'] = {'name': 'python'}   # fenced code blocks get highlighted
    return nb


def build_readme() -> str:
    nb = nbformat.read(ROOT / 'nbs' / 'index.ipynb', as_version=4)
    body, _ = MarkdownExporter().from_notebook_node(readme_notebook(nb))
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    return '<!-- Generated from nbs/index.ipynb by tools/build_docs.py: edit the notebook, not this file. -->\n\n' + body


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='fail when README.md is stale')
    a = ap.parse_args(argv)
    text = build_readme()
    readme = ROOT / 'README.md'
    if a.check:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is stale: run `python tools/build_docs.py` and commit it.')
        print('README.md is current.')
        return
    tmp = readme.with_suffix('.md.tmp')
    tmp.write_text(text, encoding='utf-8')
    tmp.replace(readme)
    print(f'wrote {readme.relative_to(ROOT)}')


if __name__ == '__main__':
    main()
