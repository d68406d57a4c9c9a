// Corridor console: renders the state the server streams on
// /ui/api/watch (server-sent events, one "state" event per store revision).
// Every text from the server goes through textContent, never innerHTML.
(function () {
  'use strict';

  var SVGNS = 'http://www.w3.org/2000/svg';
  var R = 34; // class node radius
  var STALE = 180; // seconds: a WireGuard handshake older than this is stale (WireGuard re-keys every 120 s)

  var st = null; // the last state
  var skew = 0; // server clock minus page clock, ms
  var appName = null;
  var selected = null; // {kind: 'class', name} or {kind: 'edge', id}
  var layout = {}; // app -> class -> {x, y}: positions kept across updates
  var force = null;
  var es = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svgEl(tag, cls) {
    var e = document.createElementNS(SVGNS, tag);
    if (cls) e.setAttribute('class', cls);
    return e;
  }
  function badge(text, cls) { return el('span', 'badge ' + (cls || text), text); }
  function now() { return Date.now() + skew; }
  function ageOf(t) {
    if (!t || t.indexOf('0001-') === 0) return -1;
    return Math.max(0, (now() - Date.parse(t)) / 1000);
  }
  function fmtAge(s) {
    if (s < 0 || s === undefined || s === null || isNaN(s)) return 'never';
    s = Math.round(s);
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
  }
  function fmtBytes(n) {
    if (n === undefined || n === null) return '—';
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + u[i];
  }
  function portsText(ports, proto) {
    return (ports || []).join(',') + '/' + (proto || 'tcp');
  }

  // ---- the model of one app ----

  function currentApp() {
    if (!st) return null;
    for (var i = 0; i < st.apps.length; i++) if (st.apps[i].name === appName) return st.apps[i];
    return null;
  }
  function tasksOf(app, cls) {
    return st.tasks.filter(function (t) { return t.app === app && (!cls || t['class'] === cls); });
  }
  function taskState(t) { return t.status ? t.status.state : 'unknown'; }
  function dropsWhere(fn) {
    var n = 0;
    (st.drops || []).forEach(function (h) {
      (h.drops || []).forEach(function (d) { if (fn(d, h.server)) n += d.packets; });
    });
    return n;
  }
  function pairDrops(app, from, to, servers) {
    return dropsWhere(function (d, srv) {
      return (d.kind || 'pair') === 'pair' && d.app === app && d.fromClass === from && d.toClass === to &&
        (!servers || servers.indexOf(srv) >= 0);
    });
  }
  function classDrops(app, cls) {
    return dropsWhere(function (d) {
      return d.app === app && ((d.kind === 'out' && d.fromClass === cls) || (d.kind === 'in' && d.toClass === cls));
    });
  }

  // model builds the graph of the app: classes as nodes, rules (merged per
  // class pair) as edges, and the class pairs no rule allows as denied.
  function model(app) {
    var classes = app.spec.classes || [];
    var nodes = classes.map(function (c) {
      var ts = tasksOf(app.name, c.name);
      return { id: c.name, desired: c.tasks, tasks: ts, drops: classDrops(app.name, c.name) };
    });
    var byPair = {};
    var edges = [];
    (app.spec.rules || []).forEach(function (r) {
      var id = 'rule:' + r.from + '>' + r.to;
      var e = byPair[id];
      if (!e) {
        e = byPair[id] = { id: id, from: r.from, to: r.to, kind: r.encrypt ? 'encrypted' : 'plain', ports: [] };
        edges.push(e);
      }
      e.ports.push(portsText(r.ports, r.protocol));
      if (r.encrypt) e.kind = 'encrypted';
    });
    // What lies outside the app's classes: imported services (rules name
    // them as a class), the clients of published ports, and egress
    // destinations. Each is a node of its own, drawn apart, so that every
    // edge has both ends (a rule to an import had none).
    var known = {};
    nodes.forEach(function (n) { known[n.id] = true; });
    function external(id, label, sub, kind) {
      if (known[id]) return;
      known[id] = true;
      nodes.push({ id: id, label: label, sub: sub, external: kind, desired: 0, tasks: [], drops: 0 });
    }
    (app.spec.imports || []).forEach(function (im) {
      var as = im.as || im.service.split('/').pop();
      external(as, as, 'service ' + im.service, 'service');
    });
    edges.forEach(function (e) {
      if (!known[e.to]) external(e.to, e.to, 'not a class of ' + app.name, 'service');
    });
    classes.forEach(function (c) {
      (c.publish || []).forEach(function (p) {
        var id = 'clients>' + c.name, from = p.from || [];
        external(id, 'clients', from.slice(0, 2).join(' ') + (from.length > 2 ? ' +' + (from.length - 2) : ''), 'clients');
        var eid = 'publish:' + c.name, e = byPair[eid];
        if (!e) {
          e = byPair[eid] = { id: eid, from: id, to: c.name, kind: p.encrypt === false ? 'plain' : 'encrypted', ports: [], published: true };
          edges.push(e);
        }
        var to = p.to || p.port;
        e.ports.push(':' + p.port + (to !== p.port ? '→' + to : '') + '/' + (p.protocol || 'tcp'));
        if (p.encrypt !== false) e.kind = 'encrypted';
      });
    });
    (app.spec.egress || []).forEach(function (g, i) {
      var to = g.to || [];
      var id = 'outside:' + to.join(',');
      external(id, 'outside', to.slice(0, 2).join(' ') + (to.length > 2 ? ' +' + (to.length - 2) : ''), 'outside');
      var eid = 'egress:' + g.from + '>' + id, e = byPair[eid];
      if (!e) {
        e = byPair[eid] = { id: eid, from: g.from, to: id, kind: 'egress', ports: [] };
        edges.push(e);
      }
      e.ports.push(portsText(g.ports, g.protocol));
    });
    edges.forEach(function (e) {
      e.drops = e.kind === 'egress' || e.published ? 0 : pairDrops(app.name, e.from, e.to);
      e.twoWay = !!byPair['rule:' + e.to + '>' + e.from];
    });
    if ($('show-denied').checked) {
      for (var i = 0; i < classes.length; i++) {
        for (var j = i + 1; j < classes.length; j++) {
          var a = classes[i].name, b = classes[j].name;
          if (byPair['rule:' + a + '>' + b] || byPair['rule:' + b + '>' + a]) continue;
          edges.push({ id: 'denied:' + a + '|' + b, from: a, to: b, kind: 'denied', ports: [],
            drops: pairDrops(app.name, a, b) + pairDrops(app.name, b, a) });
        }
      }
    }
    return { nodes: nodes, edges: edges };
  }

  // ---- the graph (D3 v3 force layout) ----

  function renderGraph() {
    var svg = $('graph');
    var app = currentApp();
    if (!app) {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      var t = svgEl('text'); t.setAttribute('x', 20); t.setAttribute('y', 40);
      t.textContent = st && st.apps.length ? 'Choose an app.' : 'No app applied yet (corridor apply -f app.yaml).';
      svg.appendChild(t);
      if (force) force.stop();
      return;
    }
    var m = model(app);
    var w = svg.clientWidth || 800, h = svg.clientHeight || 500;
    var pos = layout[app.name] = layout[app.name] || {};
    m.nodes.forEach(function (n, i) {
      var p = pos[n.id];
      if (!p) {
        // First sight: left to right in spec order, the force does the rest.
        p = pos[n.id] = { x: (i + 1) * w / (m.nodes.length + 1), y: h / 2 + (i % 2 ? 60 : -60) };
      }
      n.x = p.x; n.y = p.y; n.px = p.x; n.py = p.y; n.pos = p; n.fixed = !!p.fixed;
    });
    var index = {};
    m.nodes.forEach(function (n) { index[n.id] = n; });
    m.edges.forEach(function (e) { e.source = index[e.from]; e.target = index[e.to]; });

    var root = d3.select(svg);
    if (root.select('defs').empty()) {
      var defs = root.append('defs');
      ['encrypted', 'plain', 'egress'].forEach(function (k) {
        defs.append('marker').attr('id', 'arrow-' + k).attr('viewBox', '0 -5 10 10')
          .attr('refX', 10).attr('refY', 0).attr('markerWidth', 7).attr('markerHeight', 7)
          .attr('orient', 'auto').append('path').attr('d', 'M0,-5L10,0L0,5');
      });
      root.append('g').attr('class', 'nodes');
      root.append('g').attr('class', 'edges');
    }
    root.selectAll(':scope > text').remove();

    // Nodes (first in the DOM: Tab reaches classes before rules).
    var node = root.select('g.nodes').selectAll('g.node').data(m.nodes, function (d) { return d.id; });
    var ne = node.enter().append('g').attr('class', 'node').attr('tabindex', 0).attr('role', 'button');
    ne.append('circle').attr('class', 'body').attr('r', R);
    ne.append('text').attr('class', 'name').attr('dy', -4);
    ne.append('text').attr('class', 'count').attr('dy', 13);
    ne.append('g').attr('class', 'tasks');
    ne.append('text').attr('class', 'drops').attr('dy', R + 30);
    ne.on('click', function (d) { select({ kind: 'class', name: d.id }); })
      .on('keydown', function (d) { onKey(d3.event, { kind: 'class', name: d.id }); })
      .call(dragger());
    node.exit().remove();
    node.attr('class', function (d) { return 'node' + (d.external ? ' external ' + d.external : ''); })
      .attr('data-class', function (d) { return d.id; })
      .attr('data-tasks', function (d) { return d.desired; })
      .attr('data-placed', function (d) { return d.tasks.length; })
      .attr('aria-label', function (d) {
        return 'class ' + d.id + ', ' + d.desired + ' tasks wanted, ' + d.tasks.length + ' placed, ' +
          d.tasks.filter(function (t) { return taskState(t) === 'running'; }).length + ' running';
      })
      .classed('selected', function (d) { return selected && selected.kind === 'class' && selected.name === d.id; });
    node.select('text.name').text(function (d) { return d.label || d.id; });
    node.select('text.count').text(function (d) { return d.external ? d.sub : d.tasks.length + '/' + d.desired + ' tasks'; });
    node.select('text.drops').text(function (d) { return d.drops ? d.drops + ' dropped' : ''; });
    node.each(function (d) {
      var g = d3.select(this).select('g.tasks');
      var dots = g.selectAll('circle.task').data(d.tasks, function (t) { return t.id; });
      dots.enter().append('circle').attr('r', 6).append('title');
      dots.exit().remove();
      var n = d.tasks.length;
      dots.attr('class', function (t) { return 'task ' + taskState(t); })
        .attr('cx', function (t, i) { return (i - (n - 1) / 2) * 15; })
        .attr('cy', R + 12);
      dots.select('title').text(function (t) { return t.id + ' on ' + t.server + ': ' + taskState(t); });
    });

    // Edges.
    var edge = root.select('g.edges').selectAll('g.edge').data(m.edges, function (d) { return d.id; });
    var ee = edge.enter().append('g').attr('tabindex', 0).attr('role', 'button');
    ee.append('line').attr('class', 'hit');
    ee.append('line').attr('class', 'wire');
    ee.append('g').attr('class', 'label');
    ee.on('click', function (d) { select({ kind: 'edge', id: d.id }); })
      .on('keydown', function (d) { onKey(d3.event, { kind: 'edge', id: d.id }); });
    edge.exit().remove();
    edge.attr('class', function (d) { return 'edge ' + d.kind + (selected && selected.id === d.id ? ' selected' : ''); })
      .attr('data-from', function (d) { return d.from; })
      .attr('data-to', function (d) { return d.to; })
      .attr('data-state', function (d) { return d.kind; })
      .attr('aria-label', function (d) {
        if (d.kind === 'denied') return 'no rule between ' + d.from + ' and ' + d.to + ': denied' + (d.drops ? ', ' + d.drops + ' packets dropped' : '');
        if (d.published) return 'published ports ' + d.ports.join(' ') + ' of ' + d.to + ' to outside clients, ' + d.kind + ' from the entry host';
        if (d.kind === 'egress') return 'egress from ' + d.from + ' to outside destinations, ports ' + d.ports.join(' ') + ', through its host (not encrypted)';
        return 'rule ' + d.from + ' to ' + d.to + ', ports ' + d.ports.join(' ') + ', ' + d.kind + (d.drops ? ', ' + d.drops + ' packets dropped' : '');
      });
    edge.select('line.wire').attr('marker-end', function (d) { return d.kind === 'denied' ? null : 'url(#arrow-' + d.kind + ')'; });
    edge.each(function (d) {
      var lg = this.querySelector('g.label');
      while (lg.firstChild) lg.removeChild(lg.firstChild);
      var x = 0;
      if (d.kind === 'encrypted') {
        var lock = svgEl('svg', 'lock');
        lock.setAttribute('width', 12); lock.setAttribute('height', 14);
        lock.setAttribute('x', -8); lock.setAttribute('y', -12); lock.setAttribute('viewBox', '0 0 12 14');
        var use = svgEl('use'); use.setAttribute('href', '#lock-symbol');
        var title = svgEl('title'); title.textContent = 'encrypted (WireGuard)';
        lock.appendChild(title); lock.appendChild(use);
        lg.appendChild(lock);
        x = 8;
      }
      var t = svgEl('text', 'ports'); t.setAttribute('x', x); t.setAttribute('y', 0);
      t.textContent = d.kind === 'denied' ? 'denied' : d.ports.join(' ');
      lg.appendChild(t);
      if (d.drops) {
        var dt = svgEl('text', 'drops'); dt.setAttribute('x', x); dt.setAttribute('y', 15);
        dt.textContent = d.drops + ' dropped';
        lg.appendChild(dt);
      }
    });

    if (force) force.stop();
    // Edges long enough for their labels: a share of the canvas, fewer
    // classes, longer edges.
    var dist = Math.max(180, Math.min(w, h) * (m.nodes.length <= 4 ? 0.55 : 0.35));
    force = d3.layout.force().size([w, h]).nodes(m.nodes).links(m.edges)
      .linkDistance(function (d) { return d.kind === 'denied' ? dist * 1.3 : dist; })
      .linkStrength(function (d) { return d.kind === 'denied' ? 0.1 : 0.7; })
      .charge(-2500).gravity(0.03).friction(0.85)
      .on('tick', function () { tick(node, edge, w, h); });
    force.start();
    force.alpha(firstDraw(app.name) ? 0.1 : 0.02);
    tick(node, edge, w, h);
  }
  var drawn = {};
  function firstDraw(name) { var f = !drawn[name]; drawn[name] = true; return f; }

  function tick(node, edge, w, h) {
    node.each(function (d) {
      d.x = Math.max(R + 10, Math.min(w - R - 10, d.x));
      d.y = Math.max(R + 10, Math.min(h - R - 50, d.y));
      d.pos.x = d.x; d.pos.y = d.y;
    });
    node.attr('transform', function (d) { return 'translate(' + d.x + ',' + d.y + ')'; });
    edge.each(function (d) {
      var s = d.source, t = d.target;
      var dx = t.x - s.x, dy = t.y - s.y, len = Math.sqrt(dx * dx + dy * dy) || 1;
      var ux = dx / len, uy = dy / len;
      // Two rules in opposite directions: draw them side by side.
      var off = d.twoWay ? 7 : 0;
      var ox = -uy * off, oy = ux * off;
      var x1 = s.x + ux * R + ox, y1 = s.y + uy * R + oy;
      var x2 = t.x - ux * (R + 3) + ox, y2 = t.y - uy * (R + 3) + oy;
      var lines = this.querySelectorAll('line');
      for (var i = 0; i < lines.length; i++) {
        lines[i].setAttribute('x1', x1); lines[i].setAttribute('y1', y1);
        lines[i].setAttribute('x2', x2); lines[i].setAttribute('y2', y2);
      }
      var lx = (x1 + x2) / 2 + ox * 2, ly = (y1 + y2) / 2 + oy * 2 - 6;
      this.querySelector('g.label').setAttribute('transform', 'translate(' + lx + ',' + ly + ')');
    });
  }

  function dragger() {
    return d3.behavior.drag()
      .on('drag', function (d) {
        d.x = d.px = d3.event.x; d.y = d.py = d3.event.y; d.fixed = d.pos.fixed = true;
        if (force) force.resume();
      });
  }

  function onKey(ev, what) {
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      select(what);
    }
  }

  function select(what) {
    selected = what;
    renderGraph();
    renderDetail();
    $('detail').focus();
  }

  // ---- detail pane ----

  function pathRows(paths, tbody, full) {
    var taskIdx = {};
    st.tasks.forEach(function (t) { taskIdx[t.id] = t; });
    paths.forEach(function (p) {
      var tr = el('tr');
      tr.setAttribute('data-from', p.from);
      tr.setAttribute('data-to', p.to);
      var ps = pathState(p, taskIdx);
      tr.setAttribute('data-state', ps.state);
      tr.appendChild(el('td', '', p.from + ' (' + p.fromServer + ')'));
      tr.appendChild(el('td', '', p.to + ' (' + p.toServer + ')'));
      if (full) tr.appendChild(el('td', '', portsText(p.ports, p.protocol)));
      var kind = p.local ? 'local' : p.encrypt ? 'encrypted' : 'plain';
      tr.appendChild(el('td', 'kind-' + kind, kind));
      var s = el('td'); s.appendChild(badge(ps.state)); if (ps.why) s.appendChild(el('span', 'small', ' ' + ps.why));
      tr.appendChild(s);
      tr.appendChild(el('td', 'num', p.encrypt && !p.local ? fmtAge(hsAge(p)) : '—'));
      if (full) {
        tr.appendChild(el('td', 'num', p.peer ? fmtBytes(p.peer.txBytes) + ' / ' + fmtBytes(p.peer.rxBytes) : '—'));
        var d = pairDrops(p.app, p.fromClass, p.toClass, [p.fromServer, p.toServer]);
        tr.appendChild(el('td', 'num', d ? String(d) : '0'));
      }
      tbody.appendChild(tr);
    });
  }
  function hsAge(p) {
    return p.peer && p.peer.lastHandshake ? ageOf(p.peer.lastHandshake) : -1;
  }
  // pathState: what the server knows of one path. WireGuard reports a
  // handshake per host pair; a plain (VXLAN) path has no live signal of
  // its own beyond its two tasks running.
  function pathState(p, taskIdx) {
    var a = taskIdx[p.from], b = taskIdx[p.to];
    var sa = a ? taskState(a) : 'unknown', sb = b ? taskState(b) : 'unknown';
    if (sa !== 'running' || sb !== 'running') {
      return { state: 'waiting', why: (sa !== 'running' ? p.from + ' ' + sa : p.to + ' ' + sb) };
    }
    // Without a tunnel there is no handshake to show: "ready" says both
    // ends run and the path is configured, not that packets flowed.
    if (p.local) return { state: 'ready', why: 'same host' };
    if (!p.encrypt) return { state: 'ready', why: 'VXLAN' };
    var age = hsAge(p);
    if (age < 0) return { state: 'waiting', why: 'no handshake yet' };
    if (age > STALE) return { state: 'stale', why: 'handshake ' + fmtAge(age) + ' ago' };
    return { state: 'up', why: '' };
  }

  function renderDetail() {
    var box = $('detail');
    while (box.firstChild) box.removeChild(box.firstChild);
    var app = currentApp();
    if (!selected || !app) {
      box.appendChild(el('p', 'small', 'Select a class or a rule for its tasks and paths.'));
      return;
    }
    var m = model(app);
    if (selected.kind === 'class') {
      var n = m.nodes.filter(function (x) { return x.id === selected.name; })[0];
      if (!n) { selected = null; return renderDetail(); }
      if (n.external) {
        box.appendChild(el('h2', '', n.label + (n.external === 'service' ? '' : ' (outside Corridor)')));
        box.appendChild(el('p', '', n.external === 'service' ? 'An imported ' + n.sub + ': another app\'s class port, reached like one of this app\'s classes.' :
          n.external === 'clients' ? 'Clients of published ports: ' + n.sub + ' (and the other allowed ranges of the spec).' :
            'Destinations outside Corridor: ' + n.sub + ', reached through the task\'s own host.'));
        var xl = el('ul');
        m.edges.filter(function (e) { return e.from === n.id || e.to === n.id; }).forEach(function (e) {
          xl.appendChild(el('li', '', e.from + ' → ' + e.to + ' ' + e.ports.join(' ') + ' ' + e.kind));
        });
        box.appendChild(xl);
        return;
      }
      box.appendChild(el('h2', '', 'class ' + n.id));
      box.appendChild(el('p', '', n.tasks.length + ' of ' + n.desired + ' tasks placed' + (n.drops ? ', ' + n.drops + ' packets dropped (no rule)' : '')));
      box.appendChild(el('h3', '', 'Tasks'));
      var ul = el('ul');
      n.tasks.forEach(function (t) {
        var li = el('li', '', t.id + ' on ' + t.server + ' (' + (t.address || '') + ') ');
        li.appendChild(badge(taskState(t)));
        if (t.reason && t.reason.chosen) li.appendChild(el('div', 'small', (t.reason.kept ? 'kept; ' : '') + t.reason.chosen));
        ul.appendChild(li);
      });
      box.appendChild(ul);
      box.appendChild(el('h3', '', 'Rules'));
      var rl = el('ul');
      m.edges.filter(function (e) { return e.from === n.id || e.to === n.id; }).forEach(function (e) {
        rl.appendChild(el('li', '', e.kind === 'denied' ? e.from + ' – ' + e.to + ': denied (no rule)' : e.from + ' → ' + e.to + ' ' + e.ports.join(' ') + ' ' + e.kind));
      });
      box.appendChild(rl);
      return;
    }
    var e = m.edges.filter(function (x) { return x.id === selected.id; })[0];
    if (!e) { selected = null; return renderDetail(); }
    if (e.kind === 'denied') {
      box.appendChild(el('h2', '', e.from + ' – ' + e.to + ': denied'));
      box.appendChild(el('p', '', 'No rule between these classes: the firewall drops their connections in both directions (default deny).'));
      box.appendChild(el('p', '', e.drops + ' packets of this pair dropped, as the hosts last reported.'));
      return;
    }
    if (e.published || e.kind === 'egress') {
      box.appendChild(el('h2', '', e.published ? 'published: clients → ' + e.to : 'egress: ' + e.from + ' → outside'));
      box.appendChild(el('p', e.kind === 'encrypted' ? 'kind-encrypted' : '', e.published ?
        e.ports.join(' ') + ' on the entry hosts, to a task of ' + e.to + (e.kind === 'encrypted' ? ': encrypted (WireGuard) from the entry host to the task\'s host' : ': plain (VXLAN) from the entry host to the task\'s host') :
        e.ports.join(' ') + ' to ' + e.to.replace(/^outside:/, '') + ', through the task\'s own host (masqueraded; not encrypted: it leaves Corridor)'));
      return;
    }
    box.appendChild(el('h2', '', e.from + ' → ' + e.to));
    box.appendChild(el('p', e.kind === 'encrypted' ? 'kind-encrypted' : '', e.ports.join(' ') + ', ' + (e.kind === 'encrypted' ? 'encrypted (WireGuard between hosts)' : 'plain (VXLAN between hosts)')));
    box.appendChild(el('p', '', e.drops + ' packets dropped on this pair (wrong port or protocol' + (e.kind === 'encrypted' ? ', or arriving in plain' : '') + ').'));
    box.appendChild(el('h3', '', 'Paths'));
    var tbl = el('table', 'grid');
    var hd = el('tr');
    ['from', 'to', 'kind', 'state', 'handshake'].forEach(function (h) { hd.appendChild(el('th', '', h)); });
    tbl.appendChild(el('thead')).appendChild(hd);
    var tb = tbl.appendChild(el('tbody'));
    pathRows(st.paths.filter(function (p) { return p.app === app.name && p.fromClass === e.from && p.toClass === e.to; }), tb, false);
    box.appendChild(tbl);
  }

  // ---- tables ----

  function clear(tbody) { while (tbody.firstChild) tbody.removeChild(tbody.firstChild); }

  function renderFleet() {
    var tb = $('fleet').querySelector('tbody');
    clear(tb);
    st.servers.forEach(function (s) {
      var tr = el('tr');
      tr.setAttribute('data-server', s.spec.name);
      tr.setAttribute('data-state', s.state);
      tr.appendChild(el('td', '', s.spec.name));
      var sc = el('td'); sc.appendChild(badge(s.state)); tr.appendChild(sc);
      tr.appendChild(el('td', '', s.spec.address));
      var tc = el('td');
      var ts = st.tasks.filter(function (t) { return t.server === s.spec.name; });
      tc.appendChild(el('span', 'num', ts.length + ' '));
      ts.forEach(function (t) {
        var b = badge(t.id, 'task-' + taskState(t) + ' ' + taskState(t));
        b.title = taskState(t);
        tc.appendChild(b); tc.appendChild(document.createTextNode(' '));
      });
      tr.appendChild(tc);
      tr.appendChild(el('td', 'num', s.lastSeen ? fmtAge(ageOf(s.lastSeen)) + ' ago' : 'never'));
      tr.appendChild(el('td', 'num', s.appliedRevision + ' / ' + s.desiredRevision));
      var want = s.spec.keyGeneration || 0;
      var key = 'generation ' + s.keyGeneration + ', age ' + fmtAge(ageOf(s.keySince)) + (s.keyGeneration < want ? ' (rotating to ' + want + ')' : '');
      tr.appendChild(el('td', 'num', key));
      tr.appendChild(el('td', 'small', (s.errors || []).join('; ')));
      tb.appendChild(tr);
    });
  }

  function renderPaths() {
    var tb = $('paths').querySelector('tbody');
    clear(tb);
    var app = currentApp();
    $('paths-app').textContent = app ? 'app ' + app.name : 'no app';
    if (!app) return;
    pathRows(st.paths.filter(function (p) { return p.app === app.name; }), tb, true);
  }

  function renderEvents() {
    var tb = $('events').querySelector('tbody');
    clear(tb);
    var evs = (st.events || []).slice().sort(function (a, b) { return Date.parse(b.time) - Date.parse(a.time); });
    evs.slice(0, 100).forEach(function (e) {
      var tr = el('tr');
      tr.appendChild(el('td', 'num', new Date(e.time).toLocaleString()));
      tr.appendChild(el('td', '', e.who));
      tr.appendChild(el('td', '', e.action));
      tr.appendChild(el('td', '', e.object || ''));
      tr.appendChild(el('td', '', e.message || ''));
      tb.appendChild(tr);
    });
  }

  function renderVerify() {
    var v = $('verify');
    var app = currentApp();
    var run = app && (st.verify || []).filter(function (r) { return r.app === app.name; })[0];
    if (!app) { v.textContent = ''; return; }
    if (!run) {
      v.className = 'verify none';
      v.textContent = 'verify: no verify run recorded';
      return;
    }
    v.className = 'verify ' + (run.passed ? 'pass' : 'fail');
    v.textContent = 'verify ' + (run.passed ? 'passed' : 'FAILED') + ': ' + (run.checks - run.failed) + '/' + run.checks +
      ' checks, ' + fmtAge(ageOf(run.time)) + ' ago (' + new Date(run.time).toLocaleString() + ')';
    v.title = (run.summary || []).join('\n');
  }

  function renderApps() {
    var sel = $('app-select');
    var names = st.apps.map(function (a) { return a.name; });
    if (!appName || names.indexOf(appName) < 0) {
      var h = /(?:^#|&)app=([^&]+)/.exec(location.hash);
      var want = h ? decodeURIComponent(h[1]) : null;
      appName = want && names.indexOf(want) >= 0 ? want : (names[0] || null);
    }
    var same = sel.options.length === names.length && names.every(function (n, i) { return sel.options[i].value === n; });
    if (!same) {
      clear(sel);
      names.forEach(function (n) { var o = el('option', '', n); o.value = n; sel.appendChild(o); });
    }
    if (appName) sel.value = appName;
  }

  function render() {
    if (!st) return;
    renderApps();
    renderVerify();
    renderGraph();
    renderDetail();
    renderFleet();
    renderPaths();
    renderEvents();
  }

  function update(next) {
    st = next;
    st.apps = st.apps || []; st.servers = st.servers || []; st.tasks = st.tasks || []; st.paths = st.paths || [];
    skew = Date.parse(st.now) - Date.now();
    document.body.setAttribute('data-revision', String(st.revision));
    render();
  }

  function setLive(ok, text) {
    var l = $('live');
    l.className = 'live ' + (ok ? 'ok' : 'down');
    l.textContent = text;
  }

  function connect() {
    if (es) es.close();
    es = new EventSource('/ui/api/watch');
    es.addEventListener('state', function (ev) {
      update(JSON.parse(ev.data));
      setLive(true, 'live · revision ' + st.revision);
    });
    es.addEventListener('failure', function (ev) {
      setLive(false, 'server error: ' + JSON.parse(ev.data).error);
    });
    es.onerror = function () {
      setLive(false, 'reconnecting…');
      // A lost session is not a lost connection: back to the login page.
      fetch('/ui/api/state', { credentials: 'same-origin' }).then(function (r) {
        if (r.status === 401) location.assign('/ui/login');
      }, function () {});
    };
  }

  function showTab(id) {
    ['graph', 'fleet', 'paths', 'events'].forEach(function (t) {
      var on = t === id;
      $('tab-' + t).setAttribute('aria-selected', on ? 'true' : 'false');
      $('tab-' + t).tabIndex = on ? 0 : -1;
      $('view-' + t).hidden = !on;
    });
    if (id === 'graph') renderGraph();
  }

  function init() {
    var tabs = ['graph', 'fleet', 'paths', 'events'];
    tabs.forEach(function (t, i) {
      var b = $('tab-' + t);
      b.addEventListener('click', function () { showTab(t); });
      b.addEventListener('keydown', function (ev) {
        var d = ev.key === 'ArrowRight' ? 1 : ev.key === 'ArrowLeft' ? -1 : 0;
        if (!d) return;
        var n = tabs[(i + d + tabs.length) % tabs.length];
        showTab(n); $('tab-' + n).focus();
      });
    });
    showTab('graph');
    $('app-select').addEventListener('change', function () {
      appName = this.value; selected = null;
      history.replaceState(null, '', '#app=' + encodeURIComponent(appName));
      render();
    });
    $('show-denied').addEventListener('change', function () { renderGraph(); renderDetail(); });
    document.addEventListener('keydown', function (ev) {
      if (ev.key === 'Escape' && selected) { selected = null; renderGraph(); renderDetail(); }
    });
    window.addEventListener('resize', function () { if (st) renderGraph(); });
    // Ages move with the clock, not only with new states.
    setInterval(function () { if (st) { renderFleet(); renderPaths(); renderVerify(); } }, 2000);
    connect();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
