// The scripts' XML helpers: a read-only DOM (`XMLUtils.DOMParser`), an XPath 1.0 evaluator
// (`XMLUtils.xpath`) and JXON (`XMLUtils.JXON`). Evaluated once per warm context as one function
// expression and called with `markup(text, mime)`, the host parser (scripts/src/xml/mod.rs), which
// answers a flat node table as JSON or throws. Nothing here parses markup; everything here is
// created once and frozen, so a run cannot leave state behind for the next one.
(function (markup) {
  'use strict';
  var freeze = Object.freeze;
  var hasOwn = Object.prototype.hasOwnProperty;
  var ORDER = Symbol('document order');
  var ELEMENT_NODE = 1, ATTRIBUTE_NODE = 2, TEXT_NODE = 3, PROCESSING_INSTRUCTION_NODE = 7,
    COMMENT_NODE = 8, DOCUMENT_NODE = 9;

  function table(text, mime) {
    return JSON.parse(markup(String(text), mime === undefined ? 'text/xml' : String(mime)));
  }

  // ---- DOM ------------------------------------------------------------------------------------
  class NodeList extends Array {
    item(i) { return i >= 0 && i < this.length ? this[i] : null; }
  }
  function nodeList() { return new NodeList(); }

  function descendants(node, test, out) {
    var kids = node.childNodes;
    for (var i = 0; i < kids.length; i++) {
      if (test(kids[i])) out.push(kids[i]);
      if (kids[i].nodeType === ELEMENT_NODE) descendants(kids[i], test, out);
    }
    return out;
  }
  function textOf(node) {
    if (node.nodeType === TEXT_NODE || node.nodeType === COMMENT_NODE ||
        node.nodeType === PROCESSING_INSTRUCTION_NODE) return node.data;
    if (node.nodeType === ATTRIBUTE_NODE) return node.value;
    var parts = [];
    descendants(node, function (n) { return n.nodeType === TEXT_NODE; }, []).forEach(function (t) { parts.push(t.data); });
    return parts.join('');
  }
  function escapeXml(s, attribute) {
    s = s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    return attribute ? s.replace(/"/g, '&quot;') : s;
  }
  function serialize(node) {
    switch (node.nodeType) {
      case TEXT_NODE: return escapeXml(node.data, false);
      case COMMENT_NODE: return '<!--' + node.data + '-->';
      case PROCESSING_INSTRUCTION_NODE: return '<?' + node.target + (node.data ? ' ' + node.data : '') + '?>';
      case ATTRIBUTE_NODE: return node.name + '="' + escapeXml(node.value, true) + '"';
      case DOCUMENT_NODE: return node.childNodes.map(serialize).join('');
      default: {
        var open = '<' + node.nodeName + node.attributes.map(function (a) { return ' ' + serialize(a); }).join('');
        if (node.childNodes.length === 0) return open + '/>';
        return open + '>' + node.childNodes.map(serialize).join('') + '</' + node.nodeName + '>';
      }
    }
  }

  class Node {
    get firstChild() { return this.childNodes.length ? this.childNodes[0] : null; }
    get lastChild() { return this.childNodes.length ? this.childNodes[this.childNodes.length - 1] : null; }
    get nextSibling() { return sibling(this, 1); }
    get previousSibling() { return sibling(this, -1); }
    get textContent() { return this.nodeType === DOCUMENT_NODE ? null : textOf(this); }
    get nodeValue() { return this.nodeType === ELEMENT_NODE || this.nodeType === DOCUMENT_NODE ? null : textOf(this); }
    hasChildNodes() { return this.childNodes.length > 0; }
    getElementsByTagName(name) {
      name = String(name);
      var html = this.ownerDocument === null ? this.isHtml : this.ownerDocument.isHtml;
      var lower = name.toLowerCase();
      return descendants(this, function (n) {
        return n.nodeType === ELEMENT_NODE && (name === '*' || n.nodeName === name ||
          (html && n.nodeName.toLowerCase() === lower));
      }, nodeList());
    }
    getElementsByTagNameNS(ns, local) {
      return descendants(this, function (n) {
        return n.nodeType === ELEMENT_NODE && (ns === '*' || (n.namespaceURI || null) === (ns || null)) &&
          (local === '*' || n.localName === local);
      }, nodeList());
    }
    toString() { return serialize(this); }
  }
  function sibling(node, step) {
    var parent = node.parentNode;
    if (parent === null) return null;
    var i = parent.childNodes.indexOf(node) + step;
    return i >= 0 && i < parent.childNodes.length ? parent.childNodes[i] : null;
  }

  class Element extends Node {
    getAttributeNode(name) {
      name = String(name);
      var html = this.ownerDocument.isHtml;
      for (var i = 0; i < this.attributes.length; i++) {
        var a = this.attributes[i];
        if (a.name === name || (html && a.name === name.toLowerCase())) return a;
      }
      return null;
    }
    // As in xmldom (the DOM Nashorn-era scripts were written against): '' when absent.
    getAttribute(name) { var a = this.getAttributeNode(name); return a === null ? '' : a.value; }
    getAttributeNS(ns, local) {
      for (var i = 0; i < this.attributes.length; i++) {
        var a = this.attributes[i];
        if ((a.namespaceURI || null) === (ns || null) && a.localName === local) return a.value;
      }
      return '';
    }
    hasAttribute(name) { return this.getAttributeNode(name) !== null; }
    hasAttributes() { return this.attributes.length > 0; }
    get children() { return this.childNodes.filter(function (n) { return n.nodeType === ELEMENT_NODE; }); }
    get innerHTML() { return this.childNodes.map(serialize).join(''); }
    get outerHTML() { return serialize(this); }
  }
  class Attr extends Node {}
  class CharacterData extends Node {}
  class Document extends Node {
    get documentElement() {
      for (var i = 0; i < this.childNodes.length; i++) if (this.childNodes[i].nodeType === ELEMENT_NODE) return this.childNodes[i];
      return null;
    }
    getElementById(id) {
      var found = descendants(this, function (n) { return n.nodeType === ELEMENT_NODE && n.getAttribute('id') === String(id); }, []);
      return found.length ? found[0] : null;
    }
    get body() { var b = this.getElementsByTagName('body'); return b.length ? b[0] : null; }
  }

  // Build the DOM from the host's node table: [kind, parent, name, localName, namespaceURI,
  // prefix, value, attributes].
  function buildDocument(parsed) {
    var doc = new Document();
    var order = 0;
    doc.nodeType = DOCUMENT_NODE;
    doc.nodeName = '#document';
    doc.parentNode = null;
    doc.ownerDocument = null;
    doc.childNodes = nodeList();
    doc.isHtml = parsed.html;
    doc[ORDER] = order++;
    var built = [];
    var rows = parsed.nodes;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      var parent = row[1] < 0 ? doc : built[row[1]];
      var node;
      if (row[0] === ELEMENT_NODE) {
        node = new Element();
        node.nodeName = node.tagName = parsed.html && row[4] === 'http://www.w3.org/1999/xhtml' ? row[2].toUpperCase() : row[2];
        node.localName = row[3];
        node.namespaceURI = row[4];
        node.prefix = row[5];
        node.attributes = nodeList();
        node.childNodes = nodeList();
        node[ORDER] = order++;
        var attrs = row[7];
        for (var j = 0; j < attrs.length; j += 5) {
          var a = new Attr();
          a.nodeType = ATTRIBUTE_NODE;
          a.nodeName = a.name = attrs[j];
          a.localName = attrs[j + 1];
          a.namespaceURI = attrs[j + 2];
          a.prefix = attrs[j + 3];
          a.value = attrs[j + 4];
          a.specified = true;
          a.ownerElement = node;
          a.parentNode = null;
          a.ownerDocument = doc;
          a.childNodes = nodeList();
          a[ORDER] = order++;
          node.attributes.push(a);
        }
      } else {
        node = new CharacterData();
        node.nodeName = row[0] === TEXT_NODE ? '#text' : row[0] === COMMENT_NODE ? '#comment' : row[2];
        if (row[0] === PROCESSING_INSTRUCTION_NODE) node.target = row[2];
        node.data = row[6] === null ? '' : row[6];
        node.length = node.data.length;
        node.childNodes = nodeList();
        node[ORDER] = order++;
      }
      node.nodeType = row[0];
      node.parentNode = parent;
      node.ownerDocument = doc;
      parent.childNodes.push(node);
      built.push(node);
    }
    return doc;
  }

  function DOMParser() {
    if (!(this instanceof DOMParser)) throw new TypeError("DOMParser must be called with 'new'");
  }
  DOMParser.prototype.parseFromString = function parseFromString(text, mime) {
    return buildDocument(table(text, mime));
  };

  // ---- XPath 1.0 --------------------------------------------------------------------------------
  var TOKEN = /\s*(?:(\d+(?:\.\d*)?|\.\d+)|("[^"]*"|'[^']*')|(\/\/|::|!=|<=|>=|\.\.|[\/\[\]\(\)@,|.=<>+\-*$])|((?:[A-Za-z_][\w.\-]*:)?(?:[A-Za-z_][\w.\-]*|\*)))/y;
  function tokenize(expr) {
    var tokens = [];
    var pos = 0;
    TOKEN.lastIndex = 0;
    while (pos < expr.length) {
      TOKEN.lastIndex = pos;
      var m = TOKEN.exec(expr);
      if (m === null) {
        if (/^\s*$/.test(expr.slice(pos))) break;
        throw new SyntaxError('xpath: unexpected character at offset ' + pos + ' in ' + JSON.stringify(expr));
      }
      pos = TOKEN.lastIndex;
      if (m[1] !== undefined) tokens.push({ t: 'num', v: parseFloat(m[1]) });
      else if (m[2] !== undefined) tokens.push({ t: 'str', v: m[2].slice(1, -1) });
      else if (m[3] !== undefined) tokens.push({ t: 'op', v: m[3] });
      else tokens.push({ t: 'name', v: m[4] });
    }
    return tokens;
  }
  var NODE_TYPES = ['node', 'text', 'comment', 'processing-instruction'];
  var AXES = ['child', 'descendant', 'descendant-or-self', 'self', 'parent', 'ancestor',
    'ancestor-or-self', 'following-sibling', 'preceding-sibling', 'attribute'];

  function Parser(expr) { this.expr = expr; this.tokens = tokenize(expr); this.i = 0; }
  Parser.prototype = {
    peek(k) { return this.tokens[this.i + (k || 0)]; },
    isOp(v, k) { var t = this.peek(k); return t !== undefined && t.t === 'op' && t.v === v; },
    isName(v) { var t = this.peek(); return t !== undefined && t.t === 'name' && t.v === v; },
    fail(what) { throw new SyntaxError('xpath: ' + what + ' in ' + JSON.stringify(this.expr)); },
    expect(v) { if (!this.isOp(v)) this.fail("expected '" + v + "'"); this.i++; },
    parse() { var e = this.or(); if (this.i < this.tokens.length) this.fail('unexpected ' + JSON.stringify(this.peek().v)); return e; },
    binary(next, ops, names) {
      var left = next.call(this);
      for (;;) {
        var t = this.peek();
        if (t === undefined) return left;
        var op = (t.t === 'op' && ops.indexOf(t.v) !== -1) || (t.t === 'name' && names.indexOf(t.v) !== -1 && this.i > 0) ? t.v : null;
        if (op === null) return left;
        this.i++;
        left = { k: 'bin', op: op, l: left, r: next.call(this) };
      }
    },
    or() { return this.binary(this.and, [], ['or']); },
    and() { return this.binary(this.equality, [], ['and']); },
    equality() { return this.binary(this.relational, ['=', '!='], []); },
    relational() { return this.binary(this.additive, ['<', '<=', '>', '>='], []); },
    additive() { return this.binary(this.multiplicative, ['+', '-'], []); },
    multiplicative() { return this.binary(this.unary, ['*'], ['div', 'mod']); },
    unary() {
      if (this.isOp('-')) { this.i++; return { k: 'neg', e: this.unary() }; }
      return this.binary(this.path, ['|'], []);
    },
    path() {
      var t = this.peek();
      if (t === undefined) this.fail('unexpected end');
      var filter = null;
      if (t.t === 'num' || t.t === 'str') { this.i++; filter = { k: 'lit', v: t.v }; }
      else if (this.isOp('(')) { this.i++; filter = this.or(); this.expect(')'); }
      else if (t.t === 'name' && this.isOp('(', 1) && NODE_TYPES.indexOf(t.v) === -1) filter = this.call();
      if (filter !== null) {
        var preds = this.predicates();
        if (preds.length) filter = { k: 'filter', e: filter, preds: preds };
        if (this.isOp('/') || this.isOp('//')) return { k: 'path', from: filter, steps: this.steps() };
        return filter;
      }
      if (this.isOp('/')) {
        this.i++;
        var next = this.peek();
        var startsStep = next !== undefined && (next.t === 'name' || this.isOp('@') || this.isOp('.') || this.isOp('..') || this.isOp('*'));
        return { k: 'path', root: true, steps: startsStep ? this.relative() : [] };
      }
      if (this.isOp('//')) return { k: 'path', root: true, steps: this.steps() };
      return { k: 'path', steps: this.relative() };
    },
    call() {
      var name = this.peek().v;
      this.i += 2;
      var args = [];
      if (!this.isOp(')')) {
        args.push(this.or());
        while (this.isOp(',')) { this.i++; args.push(this.or()); }
      }
      this.expect(')');
      return { k: 'call', name: name, args: args };
    },
    steps() {
      var steps = [];
      if (this.isOp('//')) { this.i++; steps.push({ axis: 'descendant-or-self', test: { type: 'node' }, preds: [] }); }
      else this.expect('/');
      return steps.concat(this.relative());
    },
    relative() {
      var steps = [this.step()];
      for (;;) {
        if (this.isOp('//')) { this.i++; steps.push({ axis: 'descendant-or-self', test: { type: 'node' }, preds: [] }); }
        else if (this.isOp('/')) this.i++;
        else return steps;
        steps.push(this.step());
      }
    },
    step() {
      if (this.isOp('.')) { this.i++; return { axis: 'self', test: { type: 'node' }, preds: [] }; }
      if (this.isOp('..')) { this.i++; return { axis: 'parent', test: { type: 'node' }, preds: [] }; }
      var axis = 'child';
      if (this.isOp('@')) { this.i++; axis = 'attribute'; }
      else if (this.peek() !== undefined && this.peek().t === 'name' && this.isOp('::', 1)) {
        axis = this.peek().v;
        if (AXES.indexOf(axis) === -1) this.fail('unsupported axis ' + axis);
        this.i += 2;
      }
      var t = this.peek();
      var test;
      if (this.isOp('*')) { this.i++; test = { type: 'name', prefix: null, local: '*' }; }
      else if (t !== undefined && t.t === 'name') {
        this.i++;
        if (NODE_TYPES.indexOf(t.v) !== -1 && this.isOp('(')) {
          this.i++;
          if (this.peek() !== undefined && this.peek().t === 'str') this.i++;
          this.expect(')');
          test = { type: t.v };
        } else {
          var colon = t.v.indexOf(':');
          test = colon === -1 ? { type: 'name', prefix: null, local: t.v }
            : { type: 'name', prefix: t.v.slice(0, colon), local: t.v.slice(colon + 1) };
        }
      } else this.fail('expected a step');
      return { axis: axis, test: test, preds: this.predicates() };
    },
    predicates() {
      var preds = [];
      while (this.isOp('[')) { this.i++; preds.push(this.or()); this.expect(']'); }
      return preds;
    }
  };

  function inOrder(nodes) {
    var seen = new Set();
    var out = [];
    for (var i = 0; i < nodes.length; i++) if (!seen.has(nodes[i])) { seen.add(nodes[i]); out.push(nodes[i]); }
    return out.sort(function (a, b) { return a[ORDER] - b[ORDER]; });
  }
  function parentOf(n) { return n.nodeType === ATTRIBUTE_NODE ? n.ownerElement : n.parentNode; }
  function axisNodes(axis, n) {
    var out = [];
    switch (axis) {
      case 'child': return n.childNodes.slice();
      case 'attribute': return n.nodeType === ELEMENT_NODE ? n.attributes.slice() : [];
      case 'self': return [n];
      case 'parent': { var p = parentOf(n); return p ? [p] : []; }
      case 'descendant': return descendants(n, function () { return true; }, out);
      case 'descendant-or-self': out.push(n); return descendants(n, function () { return true; }, out);
      case 'ancestor': case 'ancestor-or-self': {
        if (axis === 'ancestor-or-self') out.push(n);
        for (var a = parentOf(n); a; a = parentOf(a)) out.push(a);
        return out;
      }
      case 'following-sibling': case 'preceding-sibling': {
        var parent = n.parentNode;
        if (!parent || n.nodeType === ATTRIBUTE_NODE) return [];
        var i = parent.childNodes.indexOf(n);
        return axis === 'following-sibling' ? parent.childNodes.slice(i + 1) : parent.childNodes.slice(0, i).reverse();
      }
    }
    return out;
  }
  function matches(test, axis, n, ctx) {
    switch (test.type) {
      case 'node': return true;
      case 'text': return n.nodeType === TEXT_NODE;
      case 'comment': return n.nodeType === COMMENT_NODE;
      case 'processing-instruction': return n.nodeType === PROCESSING_INSTRUCTION_NODE;
    }
    var principal = axis === 'attribute' ? ATTRIBUTE_NODE : ELEMENT_NODE;
    if (n.nodeType !== principal) return false;
    if (test.prefix === null) {
      if (test.local === '*') return true;
      var html = n.ownerDocument !== null && n.ownerDocument.isHtml;
      if (html) return n.localName.toLowerCase() === test.local.toLowerCase();
      return n.localName === test.local && (principal === ATTRIBUTE_NODE || !n.namespaceURI);
    }
    var uri = ctx.namespaces !== null && hasOwn.call(ctx.namespaces, test.prefix) ? ctx.namespaces[test.prefix] : undefined;
    if (uri === undefined) throw new Error("xpath: the namespace prefix '" + test.prefix + "' is not declared (use xpath.useNamespaces)");
    return n.namespaceURI === uri && (test.local === '*' || n.localName === test.local);
  }
  function filterByPredicates(nodes, preds, ctx) {
    for (var p = 0; p < preds.length; p++) {
      var kept = [];
      for (var i = 0; i < nodes.length; i++) {
        var v = evaluate(preds[p], { node: nodes[i], position: i + 1, size: nodes.length, namespaces: ctx.namespaces });
        if (typeof v === 'number' ? v === i + 1 : toBoolean(v)) kept.push(nodes[i]);
      }
      nodes = kept;
    }
    return nodes;
  }
  function applySteps(start, steps, ctx) {
    var current = start;
    for (var s = 0; s < steps.length; s++) {
      var step = steps[s];
      var next = [];
      for (var i = 0; i < current.length; i++) {
        var candidates = axisNodes(step.axis, current[i]).filter(function (n) { return matches(step.test, step.axis, n, ctx); });
        // Predicates count positions along the axis (reverse axes count backwards).
        next = next.concat(filterByPredicates(candidates, step.preds, ctx));
      }
      current = inOrder(next);
    }
    return current;
  }
  function rootOf(n) { while (parentOf(n)) n = parentOf(n); return n; }

  var stringValue = textOf;
  function toStr(v) {
    if (Array.isArray(v)) return v.length ? stringValue(v[0]) : '';
    if (typeof v === 'number') return Number.isInteger(v) ? String(v) : isNaN(v) ? 'NaN' : String(v);
    return String(v);
  }
  function toNumber(v) {
    if (typeof v === 'number') return v;
    if (typeof v === 'boolean') return v ? 1 : 0;
    var s = toStr(v).trim();
    return s === '' || !/^-?(\d+(\.\d*)?|\.\d+)$/.test(s) ? NaN : parseFloat(s);
  }
  function toBoolean(v) {
    if (Array.isArray(v)) return v.length > 0;
    if (typeof v === 'number') return v !== 0 && !isNaN(v);
    if (typeof v === 'string') return v.length > 0;
    return Boolean(v);
  }
  function compareAtoms(op, a, b) {
    if (op === '=' || op === '!=') {
      var eq;
      if (typeof a === 'boolean' || typeof b === 'boolean') eq = toBoolean(a) === toBoolean(b);
      else if (typeof a === 'number' || typeof b === 'number') eq = toNumber(a) === toNumber(b);
      else eq = toStr(a) === toStr(b);
      return op === '=' ? eq : !eq;
    }
    var x = toNumber(a), y = toNumber(b);
    return op === '<' ? x < y : op === '<=' ? x <= y : op === '>' ? x > y : x >= y;
  }
  function compare(op, a, b) {
    var aSet = Array.isArray(a), bSet = Array.isArray(b);
    if (aSet && bSet) return a.some(function (x) { return b.some(function (y) { return compareAtoms(op, stringValue(x), stringValue(y)); }); });
    if (aSet) return typeof b === 'boolean' ? compareAtoms(op, toBoolean(a), b) : a.some(function (x) { return compareAtoms(op, stringValue(x), b); });
    if (bSet) return typeof a === 'boolean' ? compareAtoms(op, a, toBoolean(b)) : b.some(function (y) { return compareAtoms(op, a, stringValue(y)); });
    return compareAtoms(op, a, b);
  }
  function nodeSet(v, fn) {
    if (!Array.isArray(v)) throw new TypeError('xpath: ' + fn + '() expects a node-set');
    return v;
  }
  var FUNCTIONS = {
    last(c) { return c.size; },
    position(c) { return c.position; },
    count(c, a) { return nodeSet(a[0], 'count').length; },
    name(c, a) { var s = a.length ? nodeSet(a[0], 'name') : [c.node]; return s.length ? (s[0].nodeName || '') : ''; },
    'local-name'(c, a) { var s = a.length ? nodeSet(a[0], 'local-name') : [c.node]; return s.length ? (s[0].localName || '') : ''; },
    'namespace-uri'(c, a) { var s = a.length ? nodeSet(a[0], 'namespace-uri') : [c.node]; return s.length ? (s[0].namespaceURI || '') : ''; },
    string(c, a) { return a.length ? toStr(a[0]) : stringValue(c.node); },
    concat(c, a) { return a.map(toStr).join(''); },
    'starts-with'(c, a) { return toStr(a[0]).startsWith(toStr(a[1])); },
    'ends-with'(c, a) { return toStr(a[0]).endsWith(toStr(a[1])); },
    contains(c, a) { return toStr(a[0]).indexOf(toStr(a[1])) !== -1; },
    'substring-before'(c, a) { var s = toStr(a[0]), i = s.indexOf(toStr(a[1])); return i === -1 ? '' : s.slice(0, i); },
    'substring-after'(c, a) { var s = toStr(a[0]), t = toStr(a[1]), i = s.indexOf(t); return i === -1 ? '' : s.slice(i + t.length); },
    substring(c, a) {
      var s = toStr(a[0]), start = Math.round(toNumber(a[1]));
      var end = a.length > 2 ? start + Math.round(toNumber(a[2])) : Infinity;
      var out = '';
      for (var i = 0; i < s.length; i++) if (i + 1 >= start && i + 1 < end) out += s[i];
      return out;
    },
    'string-length'(c, a) { return (a.length ? toStr(a[0]) : stringValue(c.node)).length; },
    'normalize-space'(c, a) { return (a.length ? toStr(a[0]) : stringValue(c.node)).trim().replace(/\s+/g, ' '); },
    translate(c, a) {
      var from = toStr(a[1]), to = toStr(a[2]);
      return toStr(a[0]).split('').map(function (ch) { var i = from.indexOf(ch); return i === -1 ? ch : i < to.length ? to[i] : ''; }).join('');
    },
    'lower-case'(c, a) { return toStr(a[0]).toLowerCase(); },
    'upper-case'(c, a) { return toStr(a[0]).toUpperCase(); },
    not(c, a) { return !toBoolean(a[0]); },
    true() { return true; },
    false() { return false; },
    boolean(c, a) { return toBoolean(a[0]); },
    number(c, a) { return toNumber(a.length ? a[0] : [c.node]); },
    sum(c, a) { return nodeSet(a[0], 'sum').reduce(function (t, n) { return t + toNumber(stringValue(n)); }, 0); },
    floor(c, a) { return Math.floor(toNumber(a[0])); },
    ceiling(c, a) { return Math.ceil(toNumber(a[0])); },
    round(c, a) { return Math.round(toNumber(a[0])); }
  };
  function evaluate(e, ctx) {
    switch (e.k) {
      case 'lit': return e.v;
      case 'neg': return -toNumber(evaluate(e.e, ctx));
      case 'call': {
        if (!hasOwn.call(FUNCTIONS, e.name)) throw new Error('xpath: unknown function ' + e.name + '()');
        return FUNCTIONS[e.name](ctx, e.args.map(function (a) { return evaluate(a, ctx); }));
      }
      case 'filter': return filterByPredicates(nodeSet(evaluate(e.e, ctx), 'filter'), e.preds, ctx);
      case 'path': {
        var start = e.root ? [rootOf(ctx.node)] : e.from ? nodeSet(evaluate(e.from, ctx), 'path') : [ctx.node];
        return applySteps(start, e.steps, ctx);
      }
      case 'bin': {
        if (e.op === 'or') return toBoolean(evaluate(e.l, ctx)) || toBoolean(evaluate(e.r, ctx));
        if (e.op === 'and') return toBoolean(evaluate(e.l, ctx)) && toBoolean(evaluate(e.r, ctx));
        var l = evaluate(e.l, ctx), r = evaluate(e.r, ctx);
        switch (e.op) {
          case '|': return inOrder(nodeSet(l, 'union').concat(nodeSet(r, 'union')));
          case '=': case '!=': case '<': case '<=': case '>': case '>=': return compare(e.op, l, r);
          case '+': return toNumber(l) + toNumber(r);
          case '-': return toNumber(l) - toNumber(r);
          case '*': return toNumber(l) * toNumber(r);
          case 'div': return toNumber(l) / toNumber(r);
          case 'mod': return toNumber(l) % toNumber(r);
        }
      }
    }
    throw new Error('xpath: cannot evaluate ' + e.k);
  }
  function select(namespaces, expr, node, single) {
    if (node === null || typeof node !== 'object' || !(node instanceof Node)) {
      throw new TypeError('xpath.select expects a node from XMLUtils.DOMParser as its second argument');
    }
    var result = evaluate(new Parser(String(expr)).parse(), { node: node, position: 1, size: 1, namespaces: namespaces });
    if (!Array.isArray(result)) return result;
    if (single) return result.length ? result[0] : undefined;
    return result;
  }
  var xpath = {
    select(expr, node, single) { return select(null, expr, node, single); },
    select1(expr, node) { return select(null, expr, node, true); },
    useNamespaces(map) {
      var namespaces = Object.assign(Object.create(null), map);
      return function (expr, node, single) { return select(namespaces, expr, node, single); };
    }
  };

  // ---- JXON ---------------------------------------------------------------------------------------
  // XML text to plain objects, the way xMatters' XMLUtils.JXON builds them. The defaults are
  // those of the JXON library line whose options xMatters documents (lowerCaseTags and
  // trueIsEmpty on, values parsed, dates recognised). Built straight from the host's node table:
  // no DOM objects are made.
  var JXON_DEFAULTS = freeze({
    valueKey: 'keyValue', attrPrefix: '@', lowerCaseTags: true, trueIsEmpty: true,
    parseValues: true, autoDate: true, ignorePrefixedNodes: false
  });
  // autoDate recognises the ECMAScript date-time format only (2024-03-01, 2024-03-01T10:00Z,
  // ...): QuickJS's Date.parse also reads free text such as "Server 1" as a date in 2001, which
  // would turn ordinary values into Dates.
  var ISO_DATE = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})?)?$/;
  function jxonParse(text, options) {
    var rows = table(text, 'text/xml').nodes;
    var children = rows.map(function () { return []; });
    var top = [];
    for (var i = 0; i < rows.length; i++) (rows[i][1] < 0 ? top : children[rows[i][1]]).push(i);
    function name(n) { return options.lowerCaseTags ? n.toLowerCase() : n; }
    function value(s) {
      if (!options.parseValues) return s;
      if (/^\s*$/.test(s)) return null;
      if (/^(true|false)$/i.test(s)) return s.toLowerCase() === 'true';
      if (isFinite(s)) return parseFloat(s);
      if (options.autoDate && ISO_DATE.test(s) && isFinite(Date.parse(s))) return new Date(s);
      return s;
    }
    function put(obj, key, v) {
      if (!hasOwn.call(obj, key)) obj[key] = v;
      else if (Array.isArray(obj[key])) obj[key].push(v);
      else obj[key] = [obj[key], v];
    }
    function build(index) {
      var row = rows[index];
      var text = '';
      var elements = [];
      var kids = children[index];
      for (var k = 0; k < kids.length; k++) {
        var kid = rows[kids[k]];
        if (kid[0] === TEXT_NODE) text += kid[6].trim();
        else if (kid[0] === ELEMENT_NODE && !(options.ignorePrefixedNodes && kid[5])) elements.push(kids[k]);
      }
      var attrs = row[7];
      if (elements.length === 0 && attrs.length === 0) {
        if (text !== '') return value(text);
        return options.trueIsEmpty ? true : '';
      }
      var obj = {};
      for (var e = 0; e < elements.length; e++) put(obj, name(rows[elements[e]][2]), build(elements[e]));
      for (var a = 0; a < attrs.length; a += 5) obj[options.attrPrefix + name(attrs[a])] = value(attrs[a + 4].trim());
      if (text !== '') obj[options.valueKey] = value(text);
      return obj;
    }
    var out = {};
    for (var t = 0; t < top.length; t++) if (rows[top[t]][0] === ELEMENT_NODE) put(out, name(rows[top[t]][2]), build(top[t]));
    return out;
  }

  [NodeList, Node, Element, Attr, CharacterData, Document, DOMParser, Parser].forEach(function (c) {
    freeze(c.prototype);
    freeze(c);
  });
  freeze(FUNCTIONS);
  return freeze({
    DOMParser: DOMParser,
    xpath: freeze(xpath),
    jxonParse: jxonParse,
    JXON_DEFAULTS: JXON_DEFAULTS
  });
})
