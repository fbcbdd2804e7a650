// faceprep review page: plain JS, no build step, no network. Data comes from check.js
// (window.FACEPREP_CHECK) and, once rank has run, ranking.js (window.FACEPREP_RANKING).
// Every panel of the page is rendered here, into the places index.html.j2 gives them.
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
  const plural = (n, one, many) => n + ' ' + (n === 1 ? one : many);
  const counted = (n, unit) => n + ' ' + (n === 1 ? unit.replace(/s$/, '') : unit);  // '1 face', '2 faces'

  // ------------------------------------------------------------ tabs
  // the grid first; drop galleries, near misses, scores and help behind tabs (or #links)
  const TABS = ['review', 'drops', 'near', 'ranking', 'help'];
  // the drop galleries and near misses are built the first time their tab opens: the grid
  // comes first (at 100k images they cost ~a third of the opening time)
  const lazyTabs = {};
  let shownTab = null;
  function showTab(name) {
    if (!TABS.includes(name)) name = 'review';
    shownTab = name;
    if (lazyTabs[name]) { const build = lazyTabs[name]; delete lazyTabs[name]; build(); }
    for (const sec of document.querySelectorAll('section.tab')) sec.hidden = sec.dataset.tab !== name;
    for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', a.dataset.tab === name);
    if (name === 'review') renderGrid(true);
  }
  // a tab opens on its click, not a task later when 'hashchange' fires: what was clicked is
  // there as soon as the click returns (the hash still changes, for the back button and links)
  window.addEventListener('hashchange', () => { const name = location.hash.slice(1); if (name !== shownTab) showTab(name); });
  for (const a of document.querySelectorAll('#tabs a')) a.addEventListener('click', () => showTab(a.dataset.tab));

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
  // a drop of a whole file (ingest, or crop finding no face) counts as a file, the rest as faces
  const reasonIsFile = C.reasons.map((r) => r.startsWith('ingest: ') || r.startsWith('crop: '));
  const isFile = (i) => reasonIsFile[I.reason[i]];

  const score = new Float64Array(N).fill(NaN);
  const stdev = new Float64Array(N).fill(NaN);
  const rankPos = new Int32Array(N).fill(-1);
  const decided = new Int8Array(N).fill(-1);
  const status = new Array(N).fill('');
  const signalNames = K ? Object.keys(K.signals) : [];
  const signalInfo = (K && K.signalInfo) || {};
  const signals = {}, worseThan = {};
  const stdShown = !!(K && K.stdMeaningful);
  let order = [];
  if (K) {
    for (const n of signalNames) { signals[n] = new Float64Array(N).fill(NaN); worseThan[n] = new Int8Array(N).fill(-1); }
    K.ids.forEach((id, k) => {
      const i = idIndex.get(id);
      if (i === undefined) return;
      score[i] = K.score[k]; stdev[i] = K.std[k]; rankPos[i] = k + 1;
      if (K.decided) decided[i] = K.decided[k];
      for (const n of signalNames) {
        if (K.signals[n][k] !== null) signals[n][i] = K.signals[n][k];
        if (K.worseThan && K.worseThan[n][k] !== null) worseThan[n][i] = K.worseThan[n][k];
      }
      order.push(i);
    });
    for (const [id, why] of Object.entries(K.status)) { const i = idIndex.get(id); if (i !== undefined) status[i] = 'ranked: ' + why; }
  }
  // the whole dataset in score order (ids rank has not seen after them), then every drop
  const ranked = new Set(order);
  for (let i = 0; i < N; i++) if (isData(i) && !ranked.has(i)) order.push(i);
  for (let i = 0; i < N; i++) if (!isData(i)) order.push(i);

  // which signal pulled an image down, in words; its percentile among the dataset
  const signalWords = (n) => (signalInfo[n] && signalInfo[n].lowMeans) || ('low ' + n);
  const decidedText = (i) => {
    if (rankPos[i] <= 0 || !signalNames.length) return '';
    const d = decided[i];
    return d >= 0 ? 'low: ' + signalWords(signalNames[d]) : 'no signal stands out';
  };
  const pctText = (n, i) => worseThan[n][i] >= 0 ? ' (worse than ' + worseThan[n][i] + '% of the dataset)' : '';
  const scoreText = (i) => '#' + rankPos[i] + ' score ' + score[i].toFixed(3) + (stdShown ? ' \u00b1 ' + stdev[i].toFixed(3) : '');

  // ------------------------------------------------------------ header: problems, warnings, summary, funnel
  const problems = $('problems');
  const addProblem = (text) => {  // the same problem from the page and the server: once
    if (![...problems.children].some((li) => li.textContent === text)) problems.append(el('li', {text}));
  };
  if (K) {
    (K.problems || []).forEach(addProblem);
    // the console's end-of-run line says the same (pipeline/console.py stale_outputs)
    if (K.datasetFingerprint !== C.datasetFingerprint) {
      addProblem('warning: the dataset changed after the network was trained: the ranking below, rank/scores.tsv, '
        + 'ranked/ (and model/, generate/ where made) come from the older data; snakemake ranked_dataset refreshes '
        + 'them (export_model and generate the model and figures).');
    }
  }
  const warnings = $('warnings');
  for (const w of C.warnings || []) if (![...warnings.children].some((li) => li.textContent === w)) warnings.append(el('li', {text: w}));
  const nData = I.reason.filter((r) => r === 0).length;
  let nFiles = 0;
  for (let i = 0; i < N; i++) if (!isData(i) && isFile(i)) nFiles++;
  const nDropFaces = N - nData - nFiles;
  $('summary').textContent = plural(nData, 'face', 'faces') + ' in the dataset; dropped on the way: ' +
    plural(nFiles, 'file', 'files') + ' and ' + plural(nDropFaces, 'face', 'faces') +
    (K ? '. Ranked worst first by the fine-tuned Discriminator.' : '. Not ranked yet.');

  // the funnel: one column per stage; every number is a link that filters the grid
  const stageOrder = (C.funnel || []).map((f) => f.stage);
  const stageIndex = (s) => { const k = stageOrder.indexOf(s); return k < 0 ? stageOrder.length : k; };
  const reasonStage = C.reasons.map((r) => r ? stageIndex(r.slice(0, r.indexOf(':'))) : Infinity);
  // where an image left: the stage that dropped it (the ranked export's verdict too), else never
  const leftAt = (i) => status[i] ? stageIndex('ranked') : reasonStage[I.reason[i]];
  function filterLink(text, value, title) {
    const a = el('a', {href: '#review', 'data-filter': value, text, title: title || ''});
    a.addEventListener('click', (ev) => { ev.preventDefault(); setReasonFilter(value); location.hash = 'review'; showTab('review'); });
    return a;
  }
  function buildFunnel() {
    const t = $('funnel');
    t.textContent = '';
    const F = C.funnel || [];
    if (!F.length) return;
    const head = el('tr', {}, el('th', {text: 'stage'}));
    const rowIn = el('tr', {}, el('th', {text: 'in'}));
    const rowKept = el('tr', {}, el('th', {text: 'kept'}));
    const rowDrop = el('tr', {}, el('th', {text: 'dropped'}));
    for (const f of F) {
      const [uIn, uKept, uDrop] = f.units;
      head.append(el('th', {text: f.stage}));
      rowIn.append(el('td', {}, filterLink(counted(f.in, uIn), 'reached:' + f.stage, 'show what reached ' + f.stage)));
      const kept = el('td', {}, filterLink(counted(f.kept, uKept), 'kept:' + f.stage, 'show what ' + f.stage + ' kept'));
      if (f.keptFiles !== null && f.keptFiles !== undefined) kept.append(el('div', {class: 'sub', text: 'from ' + plural(f.keptFiles, 'file', 'files')}));
      rowKept.append(kept);
      const nd = f.dropped.reduce((a, d) => a + d[1], 0);
      const drop = el('td', {class: 'reasons'});
      if (nd) {
        drop.append(filterLink(counted(nd, uDrop), 'dropped:' + f.stage, 'show what ' + f.stage + ' dropped'));
        for (const [r, n, words] of f.dropped) {
          const value = f.stage + ': ' + r;
          drop.append(el('div', {class: 'sub'}, filterLink(r + ' ' + n, C.reasons.includes(value) ? value : 'dropped:' + f.stage, words || r)));
        }
      } else drop.textContent = '0';
      rowDrop.append(drop);
    }
    t.append(head, rowIn, rowKept, rowDrop);
  }

  // ------------------------------------------------------------ rejects (with undo)
  const rejects = new Set(C.preset);
  let saved = null;
  const undoStack = [];
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
    undoStack.length = 0;
  }
  // each id with its source as a comment (on one line: a name may hold any character)
  const sourceComment = (id) => {
    const i = idIndex.get(id);
    return i === undefined ? '' : '  # ' + C.sources[I.src[i]].replace(/[\r\n]+/g, ' ');
  };
  function rejectsText() {
    return C.header.map((l) => '# ' + l).join('\n') + '\n' + Array.from(rejects).sort().map((id) => id + sourceComment(id) + '\n').join('');
  }
  // one user action: set ``on`` for every dataset image of ``list``; undo puts them back
  function setMany(list, on) {
    const ids = [], was = [];
    for (const i of list) {
      if (!isData(i)) continue;
      const id = I.id[i];
      if (rejects.has(id) === on) continue;
      ids.push(id); was.push(!on);
      if (on) rejects.add(id); else rejects.delete(id);
    }
    if (ids.length) undoStack.push({ids, was});
    changed();
  }
  function toggle(i, on) {
    if (!isData(i)) return;
    setMany([i], on === undefined ? !rejects.has(I.id[i]) : on);
  }
  function undo() {
    const step = undoStack.pop();
    if (!step) return;
    step.ids.forEach((id, k) => { if (step.was[k]) rejects.add(id); else rejects.delete(id); });
    changed();
  }
  $('undo').addEventListener('click', undo);
  $('select-all').addEventListener('click', () => setMany(filtered, true));
  function changed() {
    let matched = 0;
    for (const id of rejects) { const i = idIndex.get(id); if (i !== undefined && isData(i)) matched++; }
    $('reject-count').textContent = String(matched);
    // lines naming no image are kept in the file, and counted apart
    $('unmatched-count').textContent = rejects.size > matched ? '(+' + (rejects.size - matched) + ' lines that match no image, kept)' : '';
    $('undo').disabled = !undoStack.length;
    $('undo').textContent = undoStack.length ? 'undo (' + undoStack[undoStack.length - 1].ids.length + ')' : 'undo';
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
    // lines that match no image are listed first; "save anyway" confirms them
    const anyway = el('button', {type: 'button', id: 'save-anyway', hidden: ''}, 'save anyway');
    save.after(anyway);
    async function doSave(confirmed) {
      const text = rejectsText();
      $('save-status').textContent = 'saving...';
      anyway.hidden = true;
      try {
        const r = await fetch('../rejects' + (confirmed ? '?confirm=1' : ''), {method: 'POST', body: text, headers: {'Content-Type': 'text/plain; charset=utf-8'}});
        const body = await r.json();
        if (r.status === 409 && body.unmatched) { anyway.hidden = false; throw new Error(body.error); }
        if (!r.ok) throw new Error(body.error || r.statusText);
        saved = text;
        $('save-status').textContent = 'saved ' + body.count + ' lines to ' + body.path + (body.backup ? ' (previous kept in its .history folder)' : '');
      } catch (e) {
        $('save-status').textContent = 'NOT saved: ' + e.message;
      }
    }
    save.addEventListener('click', () => doSave(false));
    anyway.addEventListener('click', () => doSave(true));
    // the file on disk wins over what was baked into the page (it may have been saved since)
    fetch('../rejects').then((r) => r.ok ? r.json() : null).then((body) => {
      if (!body) return;
      (body.problems || []).forEach(addProblem);
      if (body.lines) { setRejects(body.lines); saved = rejectsText(); changed(); }
    }).catch(() => {});
  }

  // ------------------------------------------------------------ cards
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
  // a caption line: one line on a grid card (the full text on hover and in the viewer)
  const line = (cls, text) => el('div', {class: cls, text, title: text});
  let lastClicked = -1;  // grid position of the last reject box clicked (shift-click ranges)
  // a gallery card (drops, clusters, near misses); the grid's are gridCard below
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
    if (label) cap.append(line('label', label));
    if (rankPos[i] > 0) cap.append(line('score', scoreText(i)));
    const why = decidedText(i);
    if (why) cap.append(line('decided' + (decided[i] >= 0 ? ' low' : ''), why));
    // the source before the rest: a long caption must not hide where the image came from
    cap.append(line('src', C.sources[I.src[i]]));
    const reason = C.reasons[I.reason[i]] || status[i];
    if (reason) cap.append(line('reason', reason));
    if (rankPos[i] > 0 && signalNames.length) {
      const parts = signalNames.filter((n) => !isNaN(signals[n][i])).map((n) => n + ' ' + signals[n][i].toFixed(2) +
        (worseThan[n][i] >= 0 ? ' (' + worseThan[n][i] + '%)' : ''));
      cap.append(line('signal', parts.join(' \u00b7 ')));
    }
    if (I.note[i]) cap.append(line('note', I.note[i]));
    cap.append(line('id', I.id[i]));
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

  // ------------------------------------------------------------ drops tab: folders, galleries
  function buildFolders() {
    const F = C.folders || [];
    const root = $('folders');
    root.textContent = '';
    if (!F.length) return;
    const t = el('table', {id: 'folder-table'}, el('tr', {},
      ...['raw folder', 'files', 'read', 'files with a face', 'files without', 'faces'].map((h) => el('th', {text: h}))));
    for (const f of F) {
      t.append(el('tr', {class: f.warn ? 'warn' : ''}, el('td', {class: 'stage', text: f.folder}),
        ...[f.files, f.read, f.withFace, f.noFace, f.faces].map((v) => el('td', {text: String(v)}))));
    }
    root.append(el('h3', {text: 'Coverage per raw folder (files in, faces out)'}), t);
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
    const jump = el('p', {class: 'jumps'}, 'Jump to: ');
    root.append(jump);
    // duplicates: each cluster side by side with the image kept
    const clusters = C.clusters;
    if (clusters.length) {
      const sec = el('section', {class: 'drop-section', 'data-reason': 'duplicates', id: 'drop-duplicates'});
      const nd = clusters.reduce((a, c) => a + c[1].length, 0);
      sec.append(el('h3', {text: 'Duplicates: ' + plural(nd, 'face', 'faces') + ' dropped in ' + plural(clusters.length, 'cluster', 'clusters') + ' (Hamming distance to the image kept)'}));
      jump.append(el('a', {href: '#drop-duplicates', text: 'duplicates (' + nd + ')'}), ' ');
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
    let k = 0;
    for (const [reason, list] of [...byReason.entries()].sort()) {
      if (/: (exact|near)_duplicate$/.test(reason)) continue;
      const anchor = 'drop-' + (k++);
      const sec = el('section', {class: 'drop-section', 'data-reason': reason, id: anchor});
      const unit = list.every(isFile) ? 'files' : 'faces';
      sec.append(el('h3', {text: reason + ' (' + counted(list.length, unit) + ')'}));
      jump.append(el('a', {href: '#' + anchor, text: reason + ' (' + list.length + ')'}), ' ');
      const g = el('div', {class: 'gallery'});
      sec.append(g, paged(g, list.length, (j) => card(list[j], '', false, list)));
      root.append(sec);
    }
    for (const a of jump.querySelectorAll('a')) a.addEventListener('click', (ev) => {
      ev.preventDefault();
      document.getElementById(a.getAttribute('href').slice(1)).scrollIntoView();
    });
  }

  // ------------------------------------------------------------ generated figures
  // figures.js (the `generate` target) lists the truncation/mixing grids, the video and seeds
  function buildFigures() {
    const F = window.FACEPREP_FIGURES;
    if (!F || !F.length) return;
    const list = el('ul', {id: 'figures'});
    for (const f of F) list.append(el('li', {}, el('a', {href: fileUrl(f.href), text: f.label})));
    $('figures-panel').append(el('h3', {text: 'Generated by the trained network'}), list);
  }

  // ------------------------------------------------------------ cleaning rounds
  // rounds.js (rule rounds): per round the network's run, what it trained on and what its
  // ranking dropped; a line when the ranking is older than the data it claims
  function buildRounds() {
    const D = window.FACEPREP_ROUNDS;
    if (!D || !D.rounds || !D.rounds.length) return;
    const sec = el('section', {id: 'rounds-panel'});
    sec.append(el('h3', {text: 'Cleaning rounds'}));
    const last = D.rounds[D.rounds.length - 1];
    sec.append(el('p', {id: 'rounds-network', text: 'Scores, model and figures come from run ' + (last.run || '?')
      + ', round ' + last.round + ' of ' + D.rounds.length + (last.kimg != null ? ' (kimg ' + last.kimg + ')' : '') + '.'}));
    if (K && K.problems) for (const p of K.problems) if (/older/.test(p)) sec.append(el('p', {class: 'stale', text: p}));
    const now = new Set(C.preset.filter((i) => idIndex.has(i)));
    const saw = new Set(D.rejected || []);
    if (now.size !== saw.size || [...now].some((i) => !saw.has(i)))
      sec.append(el('p', {class: 'stale', id: 'rounds-stale', text: 'The network is older than the rejects file: it trained with '
        + saw.size + ' rejects, the file now has ' + now.size + '; rerun ranked_dataset.'}));
    // rank.drop_below (present only when set): each round's own scores against one threshold
    if (D.drop_below != null) sec.append(el('p', {id: 'rounds-threshold', text: 'rank.drop_below = ' + D.drop_below
      + ': each round also dropped every image its own network scored below it (each round scores on its own scale).'}));
    const below = (i) => / below_threshold$/.test(D.dropped[i] || '') ? ', below rank.drop_below' : '';
    const t = el('table', {id: 'rounds-table'});
    t.append(el('tr', {}, el('th', {text: 'round'}), el('th', {text: 'run'}), el('th', {text: 'trained on'}), el('th', {text: 'its ranking dropped'})));
    for (const r of D.rounds) {
      const ids = r.dropped.map((i) => i + ' (' + (D.scores[i] || []).map((v) => v == null ? '-' : v).join(' / ') + below(i) + ')');
      t.append(el('tr', {}, el('td', {text: String(r.round)}), el('td', {text: r.run || '?'}),
        el('td', {text: r.trained_on + ' images'}), el('td', {text: r.dropped.length + (ids.length ? ': ' + ids.join(', ') : '')})));
    }
    sec.append(t, el('p', {class: 'hint', text: 'score in round 1 / 2 / ... after each id; every image: rank/rounds.tsv'}));
    const root = $('rounds') || $('ranking');  // the place the page shell keeps for it
    (root || document.body).append(sec);
  }

  // ------------------------------------------------------------ histograms + threshold
  let threshold = NaN;
  const hists = [];
  function buildRanking() {
    if (!K) return;
    const root = $('ranking');
    root.textContent = '';
    const row = el('div', {class: 'hists'});
    const tools = el('div', {class: 'threshold'},
      el('label', {}, 'reject everything below score t = ', el('input', {id: 'threshold', type: 'number', step: 'any', size: '8'})),
      ' ', el('button', {id: 'reject-below', type: 'button', text: 'reject below t'}),
      ' ', el('span', {id: 'below-count', text: '0'}), ' images below t (click the histogram to set t)');
    root.append(el('h3', {text: 'Score histogram (left = worst)'}), tools, row);
    const addHist = (name, values, withT, caption) => {
      const cv = el('canvas', {class: 'hist', width: withT ? 640 : 320, height: withT ? 220 : 140, 'data-signal': name});
      row.append(el('figure', {}, cv, el('figcaption', {text: caption || name})));
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
    if (dataScores.length) {
      addHist('score', dataScores, true, 'score, n=' + dataScores.length);
      for (const n of signalNames) {
        const info = signalInfo[n] || {};
        addHist('signal: ' + n, order.filter((i) => rankPos[i] > 0).map((i) => signals[n][i]), false,
          n + ': ' + (info.label || n) + ' (' + (info.worse || 'low') + ' is bad)');
      }
      $('threshold').addEventListener('input', (ev) => setThreshold(parseFloat(ev.target.value), true));
      $('reject-below').addEventListener('click', () => {
        if (isNaN(threshold)) return;
        setMany(order.filter((i) => rankPos[i] > 0 && score[i] < threshold), true);
      });
    }
    if (K.samples) root.append(el('h3', {text: 'Latest training samples'}), el('img', {class: 'wide', src: fileUrl(K.samples), alt: 'latest training samples'}));
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

  // ------------------------------------------------------------ near misses
  // the score threshold: the kept images just above t and those just below it
  function buildNear() {
    const root = $('near');
    root.textContent = '';
    root.append(el('p', {text: 'Images closest to each threshold: the kept ones just inside it and the dropped ones just past it, with the value.'}));
    const near = (C.nearMisses || []).slice();
    // the score cut (rank.drop_bottom_fraction: what only the fraction dropped, the threshold
    // takes the rest): the kept images just above it, the dropped just below
    if (K) {
      // both score cuts show the same kept images (the best-scored just inside either) and
      // the dropped ones just past their own cut
      const inside = order.filter((i) => rankPos[i] > 0 && !status[i]).slice(0, 6);
      const scoreItems = (past) => [...inside.map((i) => [I.id[i], score[i].toFixed(4), true]),
        ...past.map((i) => [I.id[i], score[i].toFixed(4), false])];
      const cut = order.filter((i) => status[i] === 'ranked: bottom_fraction');
      if (cut.length) {
        const past = cut.slice(-6).reverse();
        const n = K.ids.length;
        near.push({setting: 'rank.drop_bottom_fraction', value: +(cut.length / n).toFixed(4), measure: 'score',
          advice: 'lowering rank.drop_bottom_fraction to ' + ((cut.length - 1) / n).toFixed(4) + ' adds 1 face (each 1/' + n + ' is one face)',
          items: scoreItems(past)});
      }
      // the score threshold (rank.drop_below, rounds.js has it when set) on the last round's
      // scores: the kept images just above it, that round's images just below it
      const D = window.FACEPREP_ROUNDS;
      if (D && D.drop_below != null) {
        const t = D.drop_below, last = 'round ' + D.rounds.length;
        const under = order.filter((i) => D.dropped[I.id[i]] === last + ' below_threshold');
        const past = under.slice(-6).reverse();
        const alsoWorst = order.some((i) => D.dropped[I.id[i]] === last);  // that round's fraction dropped more
        near.push({setting: 'rank.drop_below', value: t, measure: 'score',
          advice: under.length ? (alsoWorst ? 'the worst rank.drop_bottom_fraction of ' + last + ' holds every image below it: lowering it keeps none'
            : 'lowering rank.drop_below to ' + score[past[0]] + ' keeps ' + I.id[past[0]] + ' (unless rank.drop_bottom_fraction drops it)')
            : 'nothing in ' + last + ' scored below it',
          items: scoreItems(past)});
      }
    }
    if (!near.length) root.append(el('p', {text: 'No threshold dropped or nearly dropped anything.'}));
    for (const nm of near) {
      const sec = el('section', {class: 'near-section', 'data-setting': nm.setting});
      sec.append(el('h3', {text: nm.setting + ' = ' + nm.value + (nm.unit ? ' ' + nm.unit : '')}));
      if (nm.advice) sec.append(el('p', {class: 'advice', text: nm.advice}));
      const g = el('div', {class: 'gallery'});
      const list = nm.items.map(([id]) => idIndex.get(id)).filter((i) => i !== undefined);
      for (const [id, value, kept] of nm.items) {
        const i = idIndex.get(id);
        if (i === undefined) continue;
        const c = card(i, (kept ? 'kept, ' : 'dropped, ') + nm.measure + ' ' + value, false, list);
        c.classList.add(kept ? 'near-kept' : 'near-dropped');
        g.append(c);
      }
      sec.append(g);
      root.append(sec);
    }
  }

  // ------------------------------------------------------------ filters and sort
  const fFolder = $('folder'), fReason = $('reason'), fMin = $('score-min'), fMax = $('score-max');
  const fSort = $('sort'), fSignal = $('filter-signal'), fDecided = $('decided');
  const folders = [...new Set(order.map(folderOf))].sort();
  fFolder.append(el('option', {value: '', text: 'all folders'}));
  for (const f of folders) fFolder.append(el('option', {value: f, text: f}));
  const reasonChoices = [['dataset', 'the dataset (' + nData + ' faces)'], ['all', 'everything, drops too']];
  for (const s of [...new Set(status.filter((s) => s))].sort()) reasonChoices.push([s, s]);
  for (const r of C.reasons.slice(1)) reasonChoices.push([r, r]);
  for (const [v, t] of reasonChoices) fReason.append(el('option', {value: v, text: t}));
  function setReasonFilter(value) {
    if (![...fReason.options].some((o) => o.value === value)) {
      const [kind, stage] = value.split(':');
      const words = {reached: 'what reached ', kept: 'what was kept by ', dropped: 'what was dropped by '}[kind] || '';
      fReason.append(el('option', {value, text: words + stage}));
    }
    fReason.value = value;
    applyFilters();
  }
  // sort keys: the score, each signal (worst first), the source, the id
  const sortKeys = [['score', 'score, worst first']];
  for (const n of signalNames) sortKeys.push(['signal:' + n, n + ', worst first']);
  sortKeys.push(['source', 'source path'], ['id', 'id']);
  for (const [v, t] of sortKeys) fSort.append(el('option', {value: v, text: t}));
  for (const [v, t] of [['score', 'score'], ...signalNames.map((n) => ['signal:' + n, n])]) fSignal.append(el('option', {value: v, text: t}));
  fDecided.append(el('option', {value: '', text: 'any signal'}));
  signalNames.forEach((n, k) => fDecided.append(el('option', {value: String(k), text: n + ': ' + signalWords(n)})));
  fDecided.append(el('option', {value: '-1', text: 'none stands out'}));
  if (!K) for (const e of [fSort, fSignal, fDecided, fMin, fMax]) e.closest('label').hidden = true;
  if (!signalNames.length) fDecided.closest('label').hidden = true;
  const keyValue = (key) => key === 'score' ? score : signals[key.slice(7)];
  function sorted(list) {
    const key = fSort.value;
    if (key === 'score' || !key) return list;  // `order` is already worst first
    if (key === 'source') return list.slice().sort((a, b) => C.sources[I.src[a]] < C.sources[I.src[b]] ? -1 : C.sources[I.src[a]] > C.sources[I.src[b]] ? 1 : 0);
    if (key === 'id') return list.slice().sort((a, b) => I.id[a] < I.id[b] ? -1 : I.id[a] > I.id[b] ? 1 : 0);
    const v = keyValue(key), n = key.slice(7);
    const sign = signalInfo[n] && signalInfo[n].worse === 'high' ? -1 : 1;  // worst first
    return list.slice().sort((a, b) => {
      const x = v[a], y = v[b];
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);
      return sign * (x - y);
    });
  }
  let filtered = order.slice();
  function applyFilters() {
    const folder = fFolder.value, reason = fReason.value;
    const lo = fMin.value === '' ? -Infinity : parseFloat(fMin.value);
    const hi = fMax.value === '' ? Infinity : parseFloat(fMax.value);
    const valueFilter = lo > -Infinity || hi < Infinity;
    const values = keyValue(fSignal.value || 'score');
    const dec = fDecided.value === '' ? null : parseInt(fDecided.value, 10);
    const [kind, stage] = reason.includes(':') && !reason.includes(': ') ? reason.split(':') : ['', ''];
    const si = stageIndex(stage);
    filtered = sorted(order.filter((i) => {
      if (kind) {
        const at = leftAt(i);
        if (kind === 'reached' && !(at >= si)) return false;
        if (kind === 'kept' && !(at > si)) return false;
        if (kind === 'dropped' && at !== si) return false;
      } else if (reason === 'dataset') { if (!isData(i)) return false; }
      else if (reason !== 'all' && C.reasons[I.reason[i]] !== reason && status[i] !== reason) return false;
      if (folder && folderOf(i) !== folder) return false;
      if (valueFilter && !(values[i] >= lo && values[i] <= hi)) return false;
      if (dec !== null && !(rankPos[i] > 0 && decided[i] === dec)) return false;
      return true;
    }));
    cursor = Math.max(0, Math.min(cursor, filtered.length - 1));
    lastClicked = -1;
    $('shown-count').textContent = String(filtered.length);
    let files = 0;
    for (const i of filtered) if (!isData(i) && isFile(i)) files++;
    $('shown-units').textContent = plural(filtered.length - files, 'face', 'faces') + (files ? ', ' + plural(files, 'file', 'files') : '');
    $('select-all').textContent = 'reject all shown (' + filtered.filter(isData).length + ')';
    renderGrid(true);
  }
  [fFolder, fReason, fSort, fSignal, fDecided].forEach((e) => e.addEventListener('change', applyFilters));
  [fMin, fMax].forEach((e) => e.addEventListener('input', applyFilters));

  // ------------------------------------------------------------ the virtualized grid
  // Only the rows in view (and one either side) have cards. Cards are kept in a pool and
  // refilled in place (no new elements, no listeners: the grid listens for them all), and
  // while the view jumps (a scrollbar drag) their thumbnails wait until it settles, so a
  // frame costs text updates only (bench/bench_report.py, bench/RESULTS.md).
  const grid = $('grid');
  const CW = 168, CH = 300;  // a card (review.css: 292 px, its lines at 14 px) and its gap
  let cursor = 0, cols = 1, lastRange = '', lastTop = null, settle = 0;
  const alive = new Map();  // grid position -> its card
  const pool = [];
  const LINES = ['score', 'decided', 'src', 'reason', 'signal', 'note', 'id'];
  function gridCard() {
    const img = el('img', {alt: ''});
    const pic = el('div', {class: 'pic'}, img);
    const nopic = el('div', {class: 'nopic', text: 'not decodable'});
    const box = el('input', {type: 'checkbox', class: 'reject'});
    const lab = el('label', {class: 'reject-label'}, box, ' reject');
    const cap = el('figcaption', {}, lab);
    const lines = {};
    for (const k of LINES) { lines[k] = el('div', {class: k}); cap.append(lines[k]); }
    const c = el('figure', {class: 'card'}, pic, nopic, cap);
    c._parts = {img, pic, nopic, box, lab, lines};
    return c;
  }
  function setLine(e, text) { e.textContent = text; e.title = text; e.hidden = !text; }
  // ``light``: a jump frame: the thumbnail and every line but the rank and score wait
  function fillGridCard(c, i, pos, light) {
    const deferImage = light;
    const {img, pic, nopic, box, lab, lines} = c._parts;
    c.dataset.id = I.id[i]; c.dataset.idx = i; c.dataset.pos = pos;
    c.style.transform = 'translate(' + ((pos % cols) * CW) + 'px,' + (Math.floor(pos / cols) * CH) + 'px)';
    const t = thumbOf(i);
    pic.hidden = !t; nopic.hidden = !!t;
    img.alt = C.sources[I.src[i]];
    if (t && deferImage) { img.removeAttribute('src'); img.dataset.src = t; }
    else if (t) { if (img.getAttribute('src') !== t) img.src = t; delete img.dataset.src; }
    const old = pic.querySelector('svg');
    if (old) old.remove();
    const p = I.prev[i], g = I.geom[i];
    if (t && p >= 0 && g && g.length && Array.isArray(g[0]) && g[0].length === 4) {  // small faces over their source
      const svg = document.createElementNS(SVG, 'svg');
      overlay(svg, i, C.previews[p][1], C.previews[p][2]);
      pic.append(svg);
    }
    const data = isData(i);
    lab.hidden = !data;
    box.dataset.id = I.id[i];
    box.checked = data && rejects.has(I.id[i]);
    c.classList.toggle('rejected', box.checked);
    setLine(lines.score, rankPos[i] > 0 ? scoreText(i) : '');
    if (light) {
      for (const k of ['decided', 'src', 'reason', 'signal', 'note', 'id']) setLine(lines[k], '');
      c.dataset.light = '1';
      return;
    }
    delete c.dataset.light;
    setLine(lines.src, C.sources[I.src[i]]);
    setLine(lines.decided, decidedText(i));
    lines.decided.className = 'decided' + (decided[i] >= 0 ? ' low' : '');
    setLine(lines.reason, C.reasons[I.reason[i]] || status[i]);
    setLine(lines.signal, rankPos[i] > 0 && signalNames.length ? signalNames.filter((n) => !isNaN(signals[n][i]))
      .map((n) => n + ' ' + signals[n][i].toFixed(2) + (worseThan[n][i] >= 0 ? ' (' + worseThan[n][i] + '%)' : '')).join(' \u00b7 ') : '');
    setLine(lines.note, I.note[i]);
    setLine(lines.id, I.id[i]);
  }
  function loadDeferred() {
    for (const [k, c] of alive) if (c.dataset.light) fillGridCard(c, filtered[k], k, false);
  }
  const gridStats = {renders: 0, ms: 0};  // for bench/bench_report.py: script time per frame
  function renderGrid(force) {
    const t0 = performance.now();
    renderGridNow(force);
    gridStats.renders++; gridStats.ms += performance.now() - t0;
  }
  function renderGridNow(force) {
    if (grid.offsetParent === null) return;  // its tab is hidden
    cols = Math.max(1, Math.floor(grid.clientWidth / CW));
    const rows = Math.ceil(filtered.length / cols);
    grid.style.height = (rows * CH) + 'px';
    const top = grid.getBoundingClientRect().top;
    // a jump of more than a screen (a scrollbar drag): only the rows in view, and their
    // thumbnails and all lines but the score wait until the view settles
    const jumped = !force && lastTop !== null && Math.abs(top - lastTop) > window.innerHeight;
    const extra = jumped ? 0 : 1;
    const first = Math.max(0, Math.floor(-top / CH) - extra);
    const last = Math.min(rows, Math.ceil((window.innerHeight - top) / CH) + extra);
    const key = first + ':' + last + ':' + cols + ':' + cursor;
    if (!force && key === lastRange) return;
    lastRange = key;
    lastTop = top;
    if (force) { for (const c of alive.values()) { c.remove(); pool.push(c); } alive.clear(); }
    const lo = first * cols, hi = Math.min(filtered.length, last * cols);
    for (const [k, c] of alive) if (k < lo || k >= hi) { c.remove(); pool.push(c); alive.delete(k); }
    const frag = document.createDocumentFragment();
    for (let k = lo; k < hi; k++) {
      let cd = alive.get(k);
      if (!cd) {
        cd = pool.pop() || gridCard();
        fillGridCard(cd, filtered[k], k, jumped);
        alive.set(k, cd);
        frag.append(cd);
      }
      cd.classList.toggle('cursor', k === cursor);
    }
    grid.append(frag);
    clearTimeout(settle);
    if (jumped) settle = setTimeout(loadDeferred, 120);
    else loadDeferred();
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
  // one listener for every grid card: open, reject (shift-click: the range from the last box clicked)
  grid.addEventListener('click', (ev) => {
    const c = ev.target.closest('.card');
    if (!c || c.dataset.pos === undefined) return;
    const pos = parseInt(c.dataset.pos, 10), i = +c.dataset.idx;
    cursor = pos;
    if (ev.target.matches('input.reject')) {
      const on = ev.target.checked;
      if (ev.shiftKey && lastClicked >= 0 && lastClicked !== pos) {
        const [a, b] = lastClicked < pos ? [lastClicked, pos] : [pos, lastClicked];
        setMany(filtered.slice(a, b + 1), on);
      } else toggle(i, on);
      lastClicked = pos;
    } else if (ev.target.closest('.pic')) openItem(i);
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
      lines.push('rank #' + rankPos[i] + ' of ' + K.ids.length + ', score ' + score[i].toFixed(4) +
        (stdShown ? ' \u00b1 ' + stdev[i].toFixed(4) + ' (spread over reshuffled batches)' : ''));
      const why = decidedText(i);
      if (why) lines.push(why);
      for (const n of signalNames) if (!isNaN(signals[n][i])) {
        const info = signalInfo[n] || {};
        lines.push(n + ' ' + signals[n][i].toFixed(4) + pctText(n, i) + ': ' + (info.label || n) + ', ' + (info.worse || 'low') + ' is bad');
      }
    }
    const why = C.reasons[I.reason[i]] || status[i];
    if (why) lines.push(why);
    if (I.note[i]) lines.push(I.note[i]);
    if (I.geom[i]) lines.push((isData(i) ? 'crop region ' : 'boxes ') + JSON.stringify(I.geom[i]));
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
        (isData(i) ? 'crop region in green' : 'faces below min_face in red');
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
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'z') { undo(); ev.preventDefault(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === 'ArrowRight' || ev.key === 'j') { if (viewing >= 0) viewStep(1); else moveCursor(cursor + 1); }
    else if (ev.key === 'ArrowLeft' || ev.key === 'k') { if (viewing >= 0) viewStep(-1); else moveCursor(cursor - 1); }
    else if (ev.key === 'ArrowDown' && viewing < 0) moveCursor(cursor + cols);
    else if (ev.key === 'ArrowUp' && viewing < 0) moveCursor(cursor - cols);
    else if (ev.key === 'x') { if (viewing >= 0) toggle(viewing); else if (filtered.length) toggle(filtered[cursor]); }
    else if (ev.key === 'u') undo();
    else if (ev.key === 'Enter') { if (filtered.length) openItem(filtered[cursor]); }
    else return;
    ev.preventDefault();
  });

  if (!K) document.querySelector("#tabs a[data-tab='review']").textContent = 'Review (not ranked yet)';
  buildFunnel();
  lazyTabs.drops = () => { buildFolders(); buildDrops(); };
  lazyTabs.near = buildNear;
  buildRanking();
  buildFigures();
  buildRounds();
  showTab(location.hash.slice(1));
  changed();
  applyFilters();
  window.faceprepReview = {ready: true, startedAt, readyAt: performance.now(), shown: () => filtered.length,
                          rejects: () => Array.from(rejects).sort(), showTab, gridStats};
})();
