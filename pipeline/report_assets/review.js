// faceprep review page: plain JS, no build step, no network. Data comes from check.js
// (window.FACEPREP_CHECK) and, once rank has run, ranking.js (window.FACEPREP_RANKING).
// Every string from the data goes in through textContent or setAttribute, never as markup.
(function () {
  'use strict';
  const startedAt = performance.now();  // the data files are parsed by now
  const C = window.FACEPREP_CHECK;
  const K = window.FACEPREP_RANKING || null;
  const $ = (id) => document.getElementById(id);
  if (!C) { $('drops').textContent = 'check.js is missing beside this page: rebuild it with snakemake dataset.'; return; }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v; else if (k === 'class') e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  // a relative file path as a URL: each segment encoded, so '#', '?' or '%' in a name stay a name
  const fileUrl = (rel) => rel.split('/').map((s) => (s === '..' || s === '.') ? s : encodeURIComponent(s)).join('/');

  // ------------------------------------------------------------ items
  const I = C.items;
  const N = I.id.length;
  const idIndex = new Map();
  for (let i = 0; i < N; i++) idIndex.set(I.id[i], i);
  const isData = (i) => I.reason[i] === 0;
  const thumbOf = (i) => { const t = I.thumb[i]; return t === 0 ? '' : 'thumbs/' + fileUrl(t === 1 ? I.id[i] + '.jpg' : t); };
  // the full-size file: a number is <fullDirs[n / 4]>/<id><fullExts[n % 4]>, a string the path itself
  const fullOf = (i) => {
    const f = I.full[i];
    if (typeof f === 'number') {
      const nx = C.fullExts.length;
      return fileUrl(C.fullDirs[Math.floor(f / nx)] + '/' + I.id[i] + C.fullExts[f % nx]);
    }
    return f ? fileUrl(f) : '';
  };
  const folderOf = (i) => { const s = C.sources[I.src[i]]; const k = s.lastIndexOf('/'); return k < 0 ? '.' : s.slice(0, k); };

  const score = new Float64Array(N).fill(NaN);
  const stdev = new Float64Array(N).fill(NaN);
  const rankPos = new Int32Array(N).fill(-1);
  const status = new Array(N).fill('');
  const signalNames = K ? Object.keys(K.signals) : [];
  const signals = {};
  let order = [];
  if (K) {
    for (const n of signalNames) signals[n] = new Float64Array(N).fill(NaN);
    K.ids.forEach((id, k) => {
      const i = idIndex.get(id);
      if (i === undefined) return;
      score[i] = K.score[k]; stdev[i] = K.std[k]; rankPos[i] = k + 1;
      for (const n of signalNames) if (K.signals[n][k] !== null) signals[n][i] = K.signals[n][k];
      order.push(i);
    });
    for (const [id, why] of Object.entries(K.status)) { const i = idIndex.get(id); if (i !== undefined) status[i] = 'ranked: ' + why; }
  }
  // the whole dataset in score order (ids rank has not seen after them), then every drop
  const ranked = new Set(order);
  for (let i = 0; i < N; i++) if (isData(i) && !ranked.has(i)) order.push(i);
  for (let i = 0; i < N; i++) if (!isData(i)) order.push(i);

  // ------------------------------------------------------------ problems
  const problems = $('problems');
  const addProblem = (text) => {  // the same problem from the page and the server: once
    if (![...problems.children].some((li) => li.textContent === text)) problems.append(el('li', {text}));
  };
  if (K) {
    (K.problems || []).forEach(addProblem);
    if (K.datasetFingerprint !== C.datasetFingerprint) {
      addProblem('The ranking below was made for an older dataset than the one on this page: rerun snakemake ranked_dataset.');
    }
  }
  const nData = I.reason.filter((r) => r === 0).length;
  $('summary').textContent = nData + ' images in the dataset; ' + (N - nData) + ' files or faces dropped on the way' +
    (K ? '; ranked by the fine-tuned Discriminator (lowest score = least like the rest).' : '; not ranked yet.');

  // ------------------------------------------------------------ rejects
  const rejects = new Set(C.preset);
  let saved = null;
  function setRejects(lines) {
    // ids as they are; a source path stands for every image cut from it
    rejects.clear();
    const bySource = new Map();
    for (let i = 0; i < N; i++) if (isData(i)) {
      const s = C.sources[I.src[i]];
      if (!bySource.has(s)) bySource.set(s, []);
      bySource.get(s).push(I.id[i]);
    }
    for (const line of lines) {
      if (bySource.has(line)) bySource.get(line).forEach((id) => rejects.add(id)); else rejects.add(line);
    }
  }
  function rejectsText() {
    return C.header.map((l) => '# ' + l).join('\n') + '\n' + Array.from(rejects).sort().map((id) => id + '\n').join('');
  }
  function toggle(i, on) {
    if (!isData(i)) return;
    const id = I.id[i];
    if (on === undefined) on = !rejects.has(id);
    if (on) rejects.add(id); else rejects.delete(id);
    changed();
  }
  function changed() {
    let matched = 0;
    for (const id of rejects) { const i = idIndex.get(id); if (i !== undefined && isData(i)) matched++; }
    $('reject-count').textContent = String(matched);
    // lines naming no image are kept in the file, and counted apart
    $('unmatched-count').textContent = rejects.size > matched ? '(+' + (rejects.size - matched) + ' lines that match no image, kept)' : '';
    if (saved !== null) $('save-status').textContent = rejectsText() === saved ? 'saved' : 'unsaved changes';
    drawHistograms();
    // update the cards in place (grid and galleries): no re-render, focus and scroll stay
    for (const c of document.querySelectorAll('.card[data-idx]')) {
      const i = +c.dataset.idx;
      if (!isData(i)) continue;
      const on = rejects.has(I.id[i]);
      c.classList.toggle('rejected', on);
      const b = c.querySelector('input.reject');
      if (b) b.checked = on;
    }
    if (viewing >= 0) showViewer(viewing);
  }
  $('download').addEventListener('click', () => {
    const url = URL.createObjectURL(new Blob([rejectsText()], {type: 'text/plain'}));
    const a = el('a', {href: url, download: 'rejects.txt'});
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
  // served by `python -m pipeline.review`: /<token>/report/index.html; save goes to /<token>/rejects
  const served = location.protocol === 'http:' || location.protocol === 'https:';
  if (served) {
    const save = $('save');
    save.hidden = false;
    save.addEventListener('click', async () => {
      const text = rejectsText();
      $('save-status').textContent = 'saving...';
      try {
        const r = await fetch('../rejects', {method: 'POST', body: text, headers: {'Content-Type': 'text/plain; charset=utf-8'}});
        const body = await r.json();
        if (!r.ok) throw new Error(body.error || r.statusText);
        saved = text;
        $('save-status').textContent = 'saved ' + body.count + ' lines to ' + body.path + (body.backup ? ' (previous kept as ' + body.backup + ')' : '');
      } catch (e) {
        $('save-status').textContent = 'NOT saved: ' + e.message;
      }
    });
    // the file on disk wins over what was baked into the page (it may have been saved since)
    fetch('../rejects').then((r) => r.ok ? r.json() : null).then((body) => {
      if (!body) return;
      (body.problems || []).forEach(addProblem);
      if (body.lines) { setRejects(body.lines); saved = rejectsText(); changed(); }
    }).catch(() => {});
  }

  // ------------------------------------------------------------ drop galleries
  function overlay(svg, i, w, h) {
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
    while (svg.firstChild) svg.firstChild.remove();
    const g = I.geom[i];
    if (!g) return;
    const boxes = Array.isArray(g[0]) && g[0].length === 4 ? g : [g];  // small faces: several boxes
    const stroke = Math.max(2, Math.round(Math.max(w, h) / 200));
    for (const b of boxes) {
      let shape;
      if (Array.isArray(b[0])) {
        shape = document.createElementNS(SVG, 'polygon');
        shape.setAttribute('points', b.map((p) => p.join(',')).join(' '));
      } else {
        shape = document.createElementNS(SVG, 'rect');
        shape.setAttribute('x', b[0]); shape.setAttribute('y', b[1]);
        shape.setAttribute('width', b[2] - b[0]); shape.setAttribute('height', b[3] - b[1]);
      }
      shape.setAttribute('class', 'box');
      shape.setAttribute('fill', 'none');
      shape.setAttribute('stroke', isData(i) ? '#0f0' : '#f30');
      shape.setAttribute('stroke-width', stroke);
      svg.append(shape);
    }
  }
  function card(i, label, eager, list) {
    const c = el('figure', {class: 'card', 'data-id': I.id[i], 'data-idx': i});
    const t = thumbOf(i);
    if (t) {
      const pic = el('div', {class: 'pic'}, el('img', eager ? {src: t, alt: C.sources[I.src[i]]} : {src: t, alt: C.sources[I.src[i]], loading: 'lazy'}));
      const p = I.prev[i];
      const g = I.geom[i];
      if (p >= 0 && g && g.length && Array.isArray(g[0]) && g[0].length === 4) {  // small faces over their source
        const svg = document.createElementNS(SVG, 'svg');
        overlay(svg, i, C.previews[p][1], C.previews[p][2]);
        pic.append(svg);
      }
      pic.addEventListener('click', () => openItem(i, list));
      c.append(pic);
    } else {
      c.append(el('div', {class: 'nopic', text: 'not decodable'}));
    }
    const cap = el('figcaption');
    if (isData(i)) {  // first, so a long caption never hides it
      const box = el('input', {type: 'checkbox', class: 'reject', 'data-id': I.id[i]});
      box.checked = rejects.has(I.id[i]);
      box.addEventListener('change', () => toggle(i, box.checked));
      cap.append(el('label', {class: 'reject-label'}, box, ' reject'));
      if (box.checked) c.classList.add('rejected');
    }
    if (label) cap.append(el('div', {class: 'label', text: label}));
    if (rankPos[i] > 0) {
      const line = '#' + rankPos[i] + ' score ' + score[i].toFixed(4) + ' \u00b1 ' + stdev[i].toFixed(4);
      cap.append(el('div', {class: 'score', text: line}));
    }
    // the source before the signals: a long caption must not hide where the image came from
    cap.append(el('div', {class: 'src', title: C.sources[I.src[i]], text: C.sources[I.src[i]]}));
    const why = C.reasons[I.reason[i]] || status[i];
    if (why) cap.append(el('div', {class: 'reason', text: why}));
    if (rankPos[i] > 0 && signalNames.length) {
      const parts = signalNames.filter((n) => !isNaN(signals[n][i])).map((n) => n + ' ' + signals[n][i].toFixed(3));
      cap.append(el('div', {class: 'signal', text: parts.join(' \u00b7 ')}));
    }
    if (I.note[i]) cap.append(el('div', {class: 'note', text: I.note[i]}));
    cap.append(el('div', {class: 'id', text: I.id[i]}));
    c.append(cap);
    return c;
  }
  const PAGE = 24;
  function paged(container, total, renderOne) {
    let shown = 0;
    const more = el('button', {type: 'button', class: 'more'});
    function next() {
      const end = Math.min(total, shown + PAGE);
      for (; shown < end; shown++) container.append(renderOne(shown));
      more.textContent = 'show more (' + (total - shown) + ' left)';
      more.hidden = shown >= total;
    }
    more.addEventListener('click', next);
    next();
    return more;
  }
  function buildDrops() {
    const root = $('drops');
    root.textContent = '';
    const byReason = new Map();
    for (let i = 0; i < N; i++) if (!isData(i)) {
      const r = C.reasons[I.reason[i]];
      if (!byReason.has(r)) byReason.set(r, []);
      byReason.get(r).push(i);
    }
    if (!byReason.size) { root.append(el('p', {text: 'Nothing was dropped.'})); return; }
    // duplicates: each cluster side by side with the image kept
    const clusters = C.clusters;
    if (clusters.length) {
      const sec = el('section', {class: 'drop-section', 'data-reason': 'duplicates'});
      const nd = clusters.reduce((a, c) => a + c[1].length, 0);
      sec.append(el('h3', {text: 'Duplicates: ' + nd + ' dropped in ' + clusters.length + ' clusters (Hamming distance to the image kept)'}));
      const list = el('div');
      sec.append(list, paged(list, clusters.length, (k) => {
        const [keep, dups] = clusters[k];
        const row = el('div', {class: 'cluster', 'data-keep': keep});
        const ki = idIndex.get(keep);
        const members = [ki, ...dups.map(([id]) => idIndex.get(id))].filter((x) => x !== undefined);
        if (ki !== undefined) { const kc = card(ki, 'kept', false, members); kc.classList.add('kept'); row.append(kc); }
        else row.append(el('figure', {class: 'card kept'}, el('div', {class: 'nopic', text: 'kept: ' + keep})));
        for (const [id, dist] of dups) {
          const di = idIndex.get(id);
          if (di !== undefined) row.append(card(di, 'distance ' + (dist === null ? '?' : dist), false, members));
        }
        return row;
      }));
      root.append(sec);
    }
    for (const [reason, list] of [...byReason.entries()].sort()) {
      if (/: (exact|near)_duplicate$/.test(reason)) continue;
      const sec = el('section', {class: 'drop-section', 'data-reason': reason});
      sec.append(el('h3', {text: reason + ' (' + list.length + ')'}));
      const g = el('div', {class: 'gallery'});
      sec.append(g, paged(g, list.length, (k) => card(list[k], '', false, list)));
      root.append(sec);
    }
  }

  // ------------------------------------------------------------ generated figures
  // figures.js (the `generate` target) lists the truncation/mixing grids, the video and seeds
  function buildFigures() {
    const F = window.FACEPREP_FIGURES;
    if (!F || !F.length) return;
    const list = el('ul', {id: 'figures'});
    for (const f of F) list.append(el('li', {}, el('a', {href: fileUrl(f.href), text: f.label})));
    $('ranking').append(el('h3', {text: 'Generated by the trained network'}), list);
  }

  // ------------------------------------------------------------ cleaning rounds
  // rounds.js (rule rounds): per round the network's run, what it trained on and what its
  // ranking dropped; a line when the ranking is older than the data it claims
  function buildRounds() {
    const D = window.FACEPREP_ROUNDS;
    if (!D || !D.rounds || !D.rounds.length) return;
    const sec = el('section', {id: 'rounds'});
    sec.append(el('h3', {text: 'Cleaning rounds'}));
    const last = D.rounds[D.rounds.length - 1];
    sec.append(el('p', {id: 'rounds-network', text: 'Scores, model and figures come from run ' + (last.run || '?')
      + ', round ' + last.round + ' of ' + D.rounds.length + (last.kimg != null ? ' (kimg ' + last.kimg + ')' : '') + '.'}));
    if (K && K.problems) for (const p of K.problems) if (/older|another dataset/.test(p)) sec.append(el('p', {class: 'stale', text: p}));
    const now = new Set(C.preset.filter((i) => idIndex.has(i)));
    const saw = new Set(D.rejected || []);
    if (now.size !== saw.size || [...now].some((i) => !saw.has(i)))
      sec.append(el('p', {class: 'stale', id: 'rounds-stale', text: 'The network is older than the rejects file: it trained with '
        + saw.size + ' rejects, the file now has ' + now.size + '; rerun ranked_dataset.'}));
    const t = el('table', {id: 'rounds-table'});
    t.append(el('tr', {}, el('th', {text: 'round'}), el('th', {text: 'run'}), el('th', {text: 'trained on'}), el('th', {text: 'its ranking dropped'})));
    for (const r of D.rounds) {
      const ids = r.dropped.map((i) => i + ' (' + (D.scores[i] || []).map((v) => v == null ? '-' : v).join(' / ') + ')');
      t.append(el('tr', {}, el('td', {text: String(r.round)}), el('td', {text: r.run || '?'}),
        el('td', {text: r.trained_on + ' images'}), el('td', {text: r.dropped.length + (ids.length ? ': ' + ids.join(', ') : '')})));
    }
    sec.append(t, el('p', {class: 'hint', text: 'score in round 1 / 2 / ... after each id; every image: rank/rounds.tsv'}));
    const root = $('ranking');
    (root || document.body).append(sec);
  }

  // ------------------------------------------------------------ histograms + threshold
  let threshold = NaN;
  const hists = [];
  function buildRanking() {
    if (!K) return;
    const root = $('ranking');
    root.textContent = '';
    if (K.samples) root.append(el('h3', {text: 'Latest training samples'}), el('img', {class: 'wide', src: fileUrl(K.samples), alt: 'latest training samples'}));
    const row = el('div', {class: 'hists'});
    const tools = el('div', {class: 'threshold'},
      el('label', {}, 'reject everything below score t = ', el('input', {id: 'threshold', type: 'number', step: 'any', size: '8'})),
      ' ', el('button', {id: 'reject-below', type: 'button', text: 'reject below t'}),
      ' ', el('span', {id: 'below-count', text: '0'}), ' images below t (click the histogram to set t)');
    root.append(el('h3', {text: 'Score histogram'}), tools, row);
    const addHist = (name, values, withT) => {
      const cv = el('canvas', {class: 'hist', width: withT ? 640 : 320, height: withT ? 220 : 140, 'data-signal': name});
      row.append(el('figure', {}, cv, el('figcaption', {text: name})));
      const finite = values.filter((v) => !isNaN(v));
      let lo = Infinity, hi = -Infinity;  // no Math.min(...v): 100,000 arguments overflow the stack
      for (const v of finite) { if (v < lo) lo = v; if (v > hi) hi = v; }
      const h = {cv, values: finite, withT, lo, hi};
      if (!(h.hi > h.lo)) { h.lo -= 0.5; h.hi += 0.5; }
      if (withT) cv.addEventListener('click', (ev) => {
        const r = cv.getBoundingClientRect();
        setThreshold(h.lo + (h.hi - h.lo) * (ev.clientX - r.left) / r.width);
      });
      hists.push(h);
    };
    const dataScores = order.filter((i) => rankPos[i] > 0).map((i) => score[i]);
    if (!dataScores.length) return;
    addHist('score', dataScores, true);
    for (const n of signalNames) addHist('signal: ' + n, order.filter((i) => rankPos[i] > 0).map((i) => signals[n][i]), false);
    $('threshold').addEventListener('input', (ev) => setThreshold(parseFloat(ev.target.value), true));
    $('reject-below').addEventListener('click', () => {
      if (isNaN(threshold)) return;
      for (let i = 0; i < N; i++) if (rankPos[i] > 0 && score[i] < threshold) rejects.add(I.id[i]);
      changed();
    });
  }
  function setThreshold(t, fromInput) {
    threshold = t;
    if (!fromInput) $('threshold').value = isNaN(t) ? '' : t.toFixed(4);
    let below = 0;
    for (let i = 0; i < N; i++) if (rankPos[i] > 0 && score[i] < t) below++;
    $('below-count').textContent = String(below);
    drawHistograms();
  }
  function drawHistograms() {
    for (const h of hists) {
      const ctx = h.cv.getContext('2d');
      const W = h.cv.width, H = h.cv.height, bins = 40;
      const counts = new Array(bins).fill(0);
      for (const v of h.values) counts[Math.min(bins - 1, Math.floor((v - h.lo) / (h.hi - h.lo) * bins))]++;
      const top = counts.reduce((a, b) => Math.max(a, b), 1);
      ctx.clearRect(0, 0, W, H);
      ctx.fillStyle = '#48c';
      for (let b = 0; b < bins; b++) {
        const bh = (H - 16) * counts[b] / top;
        ctx.fillRect(b * W / bins + 1, H - 14 - bh, W / bins - 2, bh);
      }
      ctx.fillStyle = '#222'; ctx.font = '11px sans-serif';
      ctx.fillText(h.lo.toFixed(3), 2, H - 2);
      const hiText = h.hi.toFixed(3);
      ctx.fillText(hiText, W - ctx.measureText(hiText).width - 2, H - 2);
      if (h.withT && !isNaN(threshold)) {
        const x = (threshold - h.lo) / (h.hi - h.lo) * W;
        ctx.strokeStyle = '#c00'; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H - 14); ctx.stroke();
        ctx.fillStyle = '#c00'; ctx.fillText('t', Math.min(W - 8, x + 3), 10);
      }
    }
  }

  // ------------------------------------------------------------ filters
  const fFolder = $('folder'), fReason = $('reason'), fMin = $('score-min'), fMax = $('score-max');
  const folders = [...new Set(order.map(folderOf))].sort();
  fFolder.append(el('option', {value: '', text: 'all folders'}));
  for (const f of folders) fFolder.append(el('option', {value: f, text: f}));
  const reasonChoices = [['dataset', 'the dataset (all ' + nData + ')'], ['all', 'everything, drops too']];
  for (const s of [...new Set(status.filter((s) => s))].sort()) reasonChoices.push([s, s]);
  for (const r of C.reasons.slice(1)) reasonChoices.push([r, r]);
  for (const [v, t] of reasonChoices) fReason.append(el('option', {value: v, text: t}));
  let filtered = order.slice();
  function applyFilters() {
    const folder = fFolder.value, reason = fReason.value;
    const lo = fMin.value === '' ? -Infinity : parseFloat(fMin.value);
    const hi = fMax.value === '' ? Infinity : parseFloat(fMax.value);
    const scoreFilter = lo > -Infinity || hi < Infinity;
    filtered = order.filter((i) => {
      if (reason === 'dataset') { if (!isData(i)) return false; }
      else if (reason !== 'all' && C.reasons[I.reason[i]] !== reason && status[i] !== reason) return false;
      if (folder && folderOf(i) !== folder) return false;
      if (scoreFilter && !(score[i] >= lo && score[i] <= hi)) return false;
      return true;
    });
    cursor = Math.min(cursor, filtered.length - 1);
    $('shown-count').textContent = String(filtered.length);
    renderGrid(true);
  }
  [fFolder, fReason].forEach((e) => e.addEventListener('change', applyFilters));
  [fMin, fMax].forEach((e) => e.addEventListener('input', applyFilters));

  // ------------------------------------------------------------ the virtualized grid
  const grid = $('grid');
  const CW = 140, CH = 262;  // a card and its gap
  let cursor = 0, cols = 1, lastRange = '';
  const alive = new Map();  // grid position -> its card; cards that stay visible are kept
  function renderGrid(force) {
    cols = Math.max(1, Math.floor(grid.clientWidth / CW));
    const rows = Math.ceil(filtered.length / cols);
    grid.style.height = (rows * CH) + 'px';
    const top = grid.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / CH) - 2);
    const last = Math.min(rows, Math.ceil((window.innerHeight - top) / CH) + 2);
    const key = first + ':' + last + ':' + cols + ':' + cursor;
    if (!force && key === lastRange) return;
    lastRange = key;
    if (force) { for (const c of alive.values()) c.remove(); alive.clear(); }
    const lo = first * cols, hi = Math.min(filtered.length, last * cols);
    for (const [k, c] of alive) if (k < lo || k >= hi) { c.remove(); alive.delete(k); }
    const frag = document.createDocumentFragment();
    for (let k = lo; k < hi; k++) {
      let cd = alive.get(k);
      if (!cd) {
        cd = card(filtered[k], '', true);
        cd.style.left = ((k % cols) * CW) + 'px'; cd.style.top = (Math.floor(k / cols) * CH) + 'px';
        cd.dataset.pos = k;
        alive.set(k, cd);
        frag.append(cd);
      }
      cd.classList.toggle('cursor', k === cursor);
    }
    grid.append(frag);
  }
  let pending = false;
  const onScroll = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; renderGrid(false); }); } };
  window.addEventListener('scroll', onScroll, {passive: true});
  window.addEventListener('resize', () => renderGrid(true));
  function moveCursor(k) {
    if (!filtered.length) return;
    cursor = Math.max(0, Math.min(filtered.length - 1, k));
    const rowTop = grid.getBoundingClientRect().top + window.scrollY + Math.floor(cursor / cols) * CH;
    if (rowTop < window.scrollY + 60 || rowTop + CH > window.scrollY + window.innerHeight) window.scrollTo(0, rowTop - 80);
    renderGrid(false);
    if (viewing >= 0 && viewList === filtered) showViewer(filtered[cursor]);
  }
  grid.addEventListener('click', (ev) => {
    const c = ev.target.closest('.card');
    if (c && c.dataset.pos !== undefined) cursor = parseInt(c.dataset.pos, 10);
  });

  // ------------------------------------------------------------ the full-size viewer
  let viewing = -1, viewList = null, viewPos = -1;
  // the viewer steps through the list it was opened from: the grid, a gallery, a cluster
  function openItem(i, list) {
    viewList = list || filtered;
    viewPos = viewList.indexOf(i);
    if (viewList === filtered && viewPos >= 0) { cursor = viewPos; renderGrid(false); }
    showViewer(i);
  }
  function viewStep(d) {
    if (viewList === filtered || !viewList) { moveCursor(cursor + d); return; }
    viewPos = Math.max(0, Math.min(viewList.length - 1, viewPos + d));
    showViewer(viewList[viewPos]);
  }
  function showViewer(i) {
    viewing = i;
    const v = $('viewer');
    v.hidden = false;
    v.dataset.id = I.id[i];
    const full = $('v-full');
    const f = fullOf(i) || thumbOf(i);
    if (f) { full.src = f; full.hidden = false; } else { full.removeAttribute('src'); full.hidden = true; }
    const lines = [I.id[i], 'source: ' + C.sources[I.src[i]]];
    if (rankPos[i] > 0) {
      lines.push('rank #' + rankPos[i] + ', score ' + score[i].toFixed(4) + ' \u00b1 ' + stdev[i].toFixed(4));
      for (const n of signalNames) if (!isNaN(signals[n][i])) lines.push(n + ': ' + signals[n][i].toFixed(4));
    }
    const why = C.reasons[I.reason[i]] || status[i];
    if (why) lines.push(why);
    if (I.note[i]) lines.push(I.note[i]);
    if (I.geom[i]) lines.push((isData(i) ? 'crop box ' : 'boxes ') + JSON.stringify(I.geom[i]));
    if (isData(i)) lines.push(rejects.has(I.id[i]) ? 'REJECTED' : 'kept');
    $('v-info').textContent = lines.join('\n');
    $('v-reject').hidden = !isData(i);
    $('v-reject').textContent = rejects.has(I.id[i]) ? 'un-reject (x)' : 'reject (x)';
    const p = I.prev[i];
    const fig = $('v-source-fig');
    if (p >= 0) {
      fig.hidden = false;
      $('v-source').src = 'sources/' + fileUrl(C.previews[p][0]);
      overlay($('v-box'), i, C.previews[p][1], C.previews[p][2]);
      $('v-source-info').textContent = 'source ' + C.previews[p][1] + ' x ' + C.previews[p][2] + ' px, ' +
        (isData(i) ? 'crop box in green' : 'faces below min_face in red');
    } else {
      fig.hidden = true;
    }
  }
  function closeViewer() { viewing = -1; viewList = null; $('viewer').hidden = true; grid.focus({preventScroll: true}); }
  $('v-close').addEventListener('click', closeViewer);
  $('v-next').addEventListener('click', () => viewStep(1));
  $('v-prev').addEventListener('click', () => viewStep(-1));
  $('v-reject').addEventListener('click', () => { if (viewing >= 0) toggle(viewing); });

  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') { if (viewing >= 0) { closeViewer(); ev.preventDefault(); } return; }
    const t = ev.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA' || t.tagName === 'BUTTON')) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === 'ArrowRight' || ev.key === 'j') { if (viewing >= 0) viewStep(1); else moveCursor(cursor + 1); }
    else if (ev.key === 'ArrowLeft' || ev.key === 'k') { if (viewing >= 0) viewStep(-1); else moveCursor(cursor - 1); }
    else if (ev.key === 'ArrowDown' && viewing < 0) moveCursor(cursor + cols);
    else if (ev.key === 'ArrowUp' && viewing < 0) moveCursor(cursor - cols);
    else if (ev.key === 'x') { if (viewing >= 0) toggle(viewing); else if (filtered.length) toggle(filtered[cursor]); }
    else if (ev.key === 'Enter') { if (filtered.length) openItem(filtered[cursor]); }
    else return;
    ev.preventDefault();
  });

  buildDrops();
  buildRanking();
  buildFigures();
  buildRounds();
  changed();
  applyFilters();
  window.faceprepReview = {ready: true, startedAt, readyAt: performance.now(), shown: () => filtered.length,
                          rejects: () => Array.from(rejects).sort()};
})();
