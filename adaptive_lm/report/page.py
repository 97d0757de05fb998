"""The HTML page every report shares: one self-contained file (inline CSS, inline script, plots as
embedded PNG), viewable with no network.

A report is a list of sections; ``page(title, sections)`` wraps them. Data a script animates travels
as JSON in ``<script type="application/json">`` blocks (``data_block``); the script (``SCRIPT``)
draws every ``.timeline`` from its block — a DAEDAL canvas or a Sudoku board, one frame per
denoising step, with a slider, a play button and the step's caption — and marks each section it
drew ``data-ready="1"`` (the browser test checks it).
"""
from __future__ import annotations

import html
import json
import math
from typing import Optional

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:1.2em 2em} header h1{margin:0;font-size:1.5em}
header p{margin:.3em 0 0;opacity:.85} nav a{color:#cfe3ff;margin-right:1em}
main{max-width:74em;margin:0 auto;padding:1em 2em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em 1.4em;margin:1.2em 0}
section h2{margin-top:0;font-size:1.25em} .muted{color:#666;font-size:90%}
.mono,.canvas{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.canvas{white-space:pre-wrap;line-height:1.7;border:1px solid #e3e3e3;padding:.6em;min-height:3em;font-size:90%}
.canvas span{border-radius:2px}
.k-mask{background:#d9d9d9;color:#d9d9d9} .k-new{background:#8fd694} .k-ins{background:#ffb347;color:#ffb347}
.k-eos{color:#bbb} .k-prompt{color:#1f3a5f;font-weight:600}
.row2{display:flex;gap:1.5em;flex-wrap:wrap} .row2>div{flex:1 1 30em;min-width:0}
.controls{display:flex;align-items:center;gap:.8em;margin:.4em 0} .controls input[type=range]{flex:1}
.caption{font-size:90%;color:#444;min-height:1.3em}
table.data{border-collapse:collapse;font-size:90%;margin:.5em 0} table.data td,table.data th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
table.data th{background:#f0f3f7} table.data td:first-child,table.data th:first-child{text-align:left}
table.board{border-collapse:collapse;margin:.3em 0} table.board td{width:1.9em;height:1.9em;text-align:center;border:1px solid #ccc;font-family:ui-monospace,monospace;font-size:105%}
table.board td.given{font-weight:700;background:#eef1f5} table.board td.new{background:#8fd694} table.board td.bad{color:#c00;background:#ffd6d6}
table.board tr:nth-child(3n) td{border-bottom:2px solid #333} table.board td:nth-child(3n){border-right:2px solid #333}
table.board tr:first-child td{border-top:2px solid #333} table.board td:first-child{border-left:2px solid #333}
.tok{border-radius:3px;padding:0 1px} .legend span{display:inline-block;min-width:2.6em;text-align:center;font-size:80%;margin-right:2px;border-radius:2px}
.bar{height:1.1em;background:#4a7ab5;display:inline-block;vertical-align:middle} .ok{color:#197a1f;font-weight:600} .bad{color:#c00;font-weight:600}
img.plot{max-width:100%;border:1px solid #eee}
"""

SCRIPT = r"""
(function(){
  function el(tag, cls, text){ var e=document.createElement(tag); if(cls) e.className=cls; if(text!==undefined) e.textContent=text; return e; }
  function drawCanvas(stage, data, k){
    var f=data.frames[k], isNew={}, isIns={}; stage.textContent='';
    (f.new||[]).forEach(function(p){isNew[p]=1;}); (f.ins||[]).forEach(function(p){isIns[p]=1;});
    stage.appendChild(el('span','k-prompt',data.prompt));
    f.c.forEach(function(id,p){
      var cls='', txt=data.vocab[id]; if(txt===undefined) txt='?';
      if(id===data.mask){ cls=isIns[p]?'k-ins':'k-mask'; txt='\u2588'; }
      else if(id===data.eos){ cls='k-eos'; txt='\u00b7'; }
      if(isNew[p]) cls+=' k-new';
      stage.appendChild(el('span',cls,txt));
    });
    var masks=f.c.filter(function(x){return x===data.mask;}).length;
    return 'step '+(k+1)+' / '+data.frames.length+' \u00b7 '+(f.stage===1?'stage 1: length adjustment':'denoising')+
      ' \u00b7 canvas '+f.c.length+' \u00b7 masks '+masks+' \u00b7 committed '+(f.new||[]).length+' \u00b7 inserted '+(f.ins||[]).length;
  }
  function drawBoard(stage, data, k){
    var g=data.frames[k], t=el('table','board'), isNew={}, bad={}; stage.textContent='';
    (data.new[k]||[]).forEach(function(c){isNew[c]=1;});
    if(k===data.frames.length-1) (data.bad||[]).forEach(function(c){bad[c]=1;});
    for(var r=0;r<9;r++){ var tr=el('tr');
      for(var c=0;c<9;c++){ var i=9*r+c, ch=g[i], cls=data.givens[i]!=='.'?'given':(bad[i]?'bad':(isNew[i]?'new':''));
        tr.appendChild(el('td',cls,ch==='.'?'':ch)); }
      t.appendChild(tr); }
    stage.appendChild(t);
    var filled=0; for(var j=0;j<81;j++) if(g[j]!=='.') filled++;
    return 'step '+k+' / '+(data.frames.length-1)+' \u00b7 cells filled '+filled+' / 81 \u00b7 new this step '+(data.new[k]||[]).length;
  }
  var DRAW={canvas:drawCanvas, sudoku:drawBoard};
  function setup(box){
    var data=JSON.parse(document.getElementById(box.dataset.src).textContent), draw=DRAW[box.dataset.kind];
    var ctl=el('div','controls'), play=el('button','', '\u25b6 play'), slider=el('input'), cap=el('div','caption'), stage=el('div', box.dataset.kind==='canvas'?'canvas':'');
    slider.type='range'; slider.min=0; slider.max=data.frames.length-1; slider.value=data.frames.length-1;
    ctl.appendChild(play); ctl.appendChild(slider); box.appendChild(ctl); box.appendChild(cap); box.appendChild(stage);
    function show(){ cap.textContent=draw(stage, data, +slider.value); }
    slider.addEventListener('input', show);
    var timer=null;
    play.addEventListener('click', function(){
      if(timer){ clearInterval(timer); timer=null; play.textContent='\u25b6 play'; return; }
      if(+slider.value>=data.frames.length-1) slider.value=0;
      play.textContent='\u275a\u275a pause'; show();
      timer=setInterval(function(){ if(+slider.value>=data.frames.length-1){ clearInterval(timer); timer=null; play.textContent='\u25b6 play'; return; }
        slider.value=+slider.value+1; show(); }, Math.max(40, 4000/data.frames.length));
    });
    show(); box.dataset.ready='1';
  }
  document.querySelectorAll('.timeline').forEach(setup);
  document.querySelectorAll('section').forEach(function(s){
    var boxes=s.querySelectorAll('.timeline'), ok=true;
    boxes.forEach(function(b){ if(b.dataset.ready!=='1') ok=false; });
    if(ok) s.dataset.ready='1';
  });
  document.body.dataset.ready='1';
})();
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>{title}</h1><p>{subtitle}</p><nav>{nav}</nav></header>
<main>{body}</main>
<script>{script}</script></body></html>
"""


def esc(x) -> str:
    return html.escape(str(x))


def page(title: str, sections: list[tuple[str, str, str]], *, subtitle: str = "") -> str:
    """The whole document. ``sections``: (id, heading, inner HTML)."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(head)}</a>' for sid, head, _ in sections)
    body = "".join(f'<section id="{esc(sid)}"><h2>{esc(head)}</h2>{inner}</section>' for sid, head, inner in sections)
    return PAGE.format(title=esc(title), subtitle=esc(subtitle), nav=nav, body=body, css=CSS, script=SCRIPT)


def data_block(block_id: str, obj) -> str:
    """JSON for the script; ``</`` is escaped so no string can close the script element."""
    text = json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{esc(block_id)}">{text}</script>'


def timeline(block_id: str, kind: str, obj) -> str:
    """A scrubbable step-by-step view (kind ``canvas`` or ``sudoku``; see SCRIPT for the frame format)."""
    return data_block(block_id, obj) + f'<div class="timeline" data-src="{esc(block_id)}" data-kind="{esc(kind)}"></div>'


def fmt(v) -> str:
    """A table cell: floats to 4 significant digits, None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def table(rows: list[dict], cols: Optional[list[str]] = None) -> str:
    """An HTML table of dict rows (columns: the union of keys in first-seen order, or ``cols``)."""
    if not rows:
        return "<p class='muted'>no rows</p>"
    if cols is None:
        cols = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (dict, list))))
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table class='data'><tr>{head}</tr>{body}</table>"


def heat(x: Optional[float], top: float) -> str:
    """White (0) to red (``top`` and above); grey where there is no value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "#e8e8e8"
    g = int(255 - 200 * max(0.0, min(1.0, x / top)))
    return f"rgb(255,{g},{g})"


def layer_color(layer: int, n_layer: int) -> str:
    """Early exit (layer 1) green to full depth (n_layer) dark blue."""
    f = 0.0 if n_layer <= 1 else (layer - 1) / (n_layer - 1)
    r, g, b = (int(a + (z - a) * f) for a, z in ((120, 40), (220, 70), (120, 160)))
    return f"rgb({r},{g},{b})"
