// The xMatters script API, set up once per warm context. Evaluated as one function expression and
// called with the host hooks (`native`) and the integration's constants as JSON. Nothing here is
// made global except the Java-compatible String methods: everything else reaches scripts only as
// arguments of the script function.
(function (native, constantsJson) {
  'use strict';
  var G = globalThis;
  var hasOwn = Object.prototype.hasOwnProperty;
  var jsonStringify = JSON.stringify;
  var objectPrototype = Object.prototype;
  var jsonParse = JSON.parse;
  var defineProperty = Object.defineProperty;
  var getDescriptor = Object.getOwnPropertyDescriptor;
  var deleteProperty = Reflect.deleteProperty;
  var reflectDefine = Reflect.defineProperty;

  function put(obj, key, value) {
    defineProperty(obj, key, { value: value, writable: true, enumerable: true, configurable: true });
  }

  // ---- Java String methods used by Nashorn-era scripts -------------------------------------
  function javaMethod(name, fn) {
    defineProperty(String.prototype, name, { value: fn, writable: true, enumerable: false, configurable: true });
  }
  javaMethod('equalsIgnoreCase', function (other) {
    return other !== null && other !== undefined && String(this).toLowerCase() === String(other).toLowerCase();
  });
  javaMethod('equals', function (other) {
    return (typeof other === 'string' || other instanceof String) && String(this) === String(other);
  });
  javaMethod('contains', function (part) { return String(this).indexOf(String(part)) !== -1; });
  javaMethod('isEmpty', function () { return String(this).length === 0; });

  // ---- the built-ins ---------------------------------------------------------------------------
  // Creating functions is what made a warm run expensive: every closure is an allocation and
  // (with its `prototype`) a reference cycle that only the cycle collector frees, and that
  // collector walks the whole context. So the function-valued built-ins (`form`, `http`,
  // `console`, `require`, `JXON`, `XMLUtils`) are created once per context and frozen, methods
  // included, so a run cannot leave state on them for the next one. Per-run data (`request`,
  // `trigger`, `constants`, the `require` cache) lives in fresh objects and in `current`, which
  // belongs to the latest run.
  var freeze = Object.freeze;
  var constantsTemplate = jsonParse(constantsJson);
  var libraries = Object.create(null);
  var script = null;
  var current = null;

  function deepFreeze(obj) {
    freeze(obj);
    for (var k in obj) {
      var v = obj[k];
      if (hasOwn.call(obj, k) && ((typeof v === 'object' && v !== null) || typeof v === 'function')) deepFreeze(v);
    }
    return obj;
  }

  // Case-insensitive reads of a headers object: own names first, then any spelling. One handler
  // serves every run; it keeps no state.
  function headerKey(t, p) {
    var l = p.toLowerCase();
    var keys = Object.keys(t);
    for (var i = 0; i < keys.length; i++) if (keys[i].toLowerCase() === l) return keys[i];
    return undefined;
  }
  var headerHandler = freeze({
    get(t, p, r) {
      if (typeof p === 'string' && !hasOwn.call(t, p)) {
        var k = headerKey(t, p);
        if (k !== undefined) return t[k];
      }
      return Reflect.get(t, p, r);
    },
    has(t, p) {
      return Reflect.has(t, p) || (typeof p === 'string' && headerKey(t, p) !== undefined);
    }
  });

  function text(args) {
    var parts = [];
    for (var i = 0; i < args.length; i++) parts.push(String(args[i]));
    return parts.join(' ');
  }
  var console = {
    log() { native.log('log', text(arguments)); },
    info() { native.log('info', text(arguments)); },
    warn() { native.log('warn', text(arguments)); },
    error() { native.log('error', text(arguments)); },
    debug() { native.log('log', text(arguments)); },
    trace() { native.log('log', text(arguments)); }
  };

  var form = {
    post(obj) {
      if (obj === null || typeof obj !== 'object') throw new TypeError('form.post expects an object');
      var id = native.post(obj, objectPrototype);
      return { statusCode: 202, body: '{"requestId":"' + id + '"}' };
    }
  };

  var http = {
    request(options) {
      if (options === null || typeof options !== 'object') throw new TypeError('http.request expects an options object');
      var call = {
        endpoint: options.endpoint === undefined || options.endpoint === null ? null : String(options.endpoint),
        method: options.method === undefined || options.method === null ? 'GET' : String(options.method).toUpperCase(),
        path: options.path === undefined || options.path === null ? '' : String(options.path),
        headers: [],
        body: null,
        autoEncodeURI: options.autoEncodeURI !== false
      };
      var h = options.headers;
      if (h !== null && typeof h === 'object') {
        for (var k in h) if (hasOwn.call(h, k) && h[k] !== undefined && h[k] !== null) call.headers.push(k, String(h[k]));
      }
      return {
        write(body) {
          call.body = body === undefined || body === null ? null : typeof body === 'string' ? body : jsonStringify(body);
          if (call.body === undefined) call.body = null;
          var reply = native.http(call);
          reply.headers = new Proxy(reply.headers, headerHandler);
          return reply;
        }
      };
    }
  };

  // The XML helpers (scripts/src/xml/dom.js) are big: evaluating them in every context would
  // triple the cost of a new context and slow every run's garbage collection, and most scripts
  // never read XML. So they are evaluated on first use in a context and kept (frozen) from then
  // on; what scripts see are these small stand-ins.
  var xmlHelpers = null;
  function xml() {
    if (xmlHelpers === null) xmlHelpers = native.xmlHelpers()(native.markup);
    return xmlHelpers;
  }
  // JXON options belong to the run that set them (`XMLUtils.JXON.config`); every run starts
  // from xMatters' defaults (`jxon: null`).
  function jxonOptions() {
    return current === null || current.jxon === null ? xml().JXON_DEFAULTS : current.jxon;
  }
  var JXON = {
    parse(text) { return xml().jxonParse(text, jxonOptions()); },
    config(options) {
      if (current === null) throw new Error('JXON.config is only available while a script runs');
      // As in the JXON library: without an argument, the options in force.
      if (options === undefined) return Object.assign({}, jxonOptions());
      if (options === null || typeof options !== 'object') throw new TypeError('JXON.config expects an options object');
      var merged = Object.assign({}, jxonOptions());
      for (var k in xml().JXON_DEFAULTS) if (hasOwn.call(options, k)) merged[k] = options[k];
      current.jxon = freeze(merged);
    }
  };
  function DOMParser() {
    if (!(this instanceof DOMParser)) throw new TypeError("DOMParser must be called with 'new'");
  }
  DOMParser.prototype.parseFromString = function parseFromString(text, mime) {
    return new (xml().DOMParser)().parseFromString(text, mime);
  };
  freeze(DOMParser.prototype);
  var xpath = {
    select(expr, node, single) { return xml().xpath.select(expr, node, single); },
    select1(expr, node) { return xml().xpath.select1(expr, node); },
    useNamespaces(map) { return xml().xpath.useNamespaces(map); }
  };
  var XMLUtils = { JXON: JXON, DOMParser: DOMParser, xpath: xpath };

  // CommonJS for the integration's libraries; the cache lives for one run.
  var require = {
    require(name) {
      if (current === null) throw new Error('require is only available while a script runs');
      name = String(name);
      var cache = current.cache;
      if (name in cache) return cache[name].exports;
      var lib = libraries[name];
      if (lib === undefined) throw new Error("Cannot find library '" + name + "': it is not configured for this integration");
      var module = { exports: {}, id: name };
      cache[name] = module;
      try {
        lib.call(G, module.exports, module, require, console, http, form, current.constants,
          JXON, XMLUtils, current.request, current.trigger);
      } catch (e) {
        delete cache[name];
        throw e;
      }
      return module.exports;
    }
  }.require;

  deepFreeze(console);
  deepFreeze(form);
  deepFreeze(http);
  deepFreeze(XMLUtils);
  deepFreeze(require);

  // ---- built-ins that forget ------------------------------------------------------------------
  // Every built-in object except the global object (constructors, methods, prototypes, `Math`,
  // `JSON`, `Reflect`, the iterator and generator prototypes...) is frozen once per context, so no
  // run can leave anything on them: `Math.stash = ...`, `JSON.parse = ...` or
  // `String.prototype.toUpperCase = ...` are ignored (a TypeError in strict code), whatever the
  // nesting. Freezing costs nothing per run, unlike comparing hundreds of objects after each one.
  // Frozen prototypes would break a common ES5 idiom through the "override mistake" (assigning
  // `Child.prototype.constructor` or `obj.toString` fails when the inherited property is read-only),
  // so the names scripts override on their own objects become accessors: reading gives the
  // built-in, assigning to an object that inherits it creates the object's own property, and
  // assigning to the built-in itself is ignored. Adding methods to a built-in prototype
  // (`String.prototype.format = ...`) is not possible either; scripts define functions instead.
  var ownKeys = Reflect.ownKeys;
  var isExtensible = Object.isExtensible;
  var arrayPrototype = Array.prototype;
  var overridable = ['constructor', 'toString', 'toLocaleString', 'valueOf', 'hasOwnProperty',
    'isPrototypeOf', 'propertyIsEnumerable', 'name', 'message', 'toJSON'];
  function tameOverride(o, key) {
    var d = getDescriptor(o, key);
    if (d === undefined || !('value' in d) || !d.configurable) return;
    var value = d.value;
    defineProperty(o, key, {
      get: freeze(function () { return value; }),
      set: freeze(function (v) {
        if (this === o || Object(this) !== this || !isExtensible(this)) return;
        defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      }),
      enumerable: d.enumerable,
      configurable: false
    });
  }
  function harden(o) {
    if (typeof o !== 'function') {
      for (var i = 0; i < overridable.length; i++) tameOverride(o, overridable[i]);
    } else if (o === Function.prototype) {
      tameOverride(o, 'toString');
      tameOverride(o, 'constructor');
    }
    if (o !== arrayPrototype) return freeze(o);
    // Array.prototype is an array: freezing would make `length` read-only for every object that
    // inherits it. Its `length` stays writable and is reset after each run.
    var keys = ownKeys(o);
    for (var k = 0; k < keys.length; k++) {
      if (keys[k] !== 'length') defineProperty(o, keys[k], { configurable: false });
      var d = getDescriptor(o, keys[k]);
      if (keys[k] !== 'length' && 'value' in d) defineProperty(o, keys[k], { writable: false });
    }
    Object.preventExtensions(o);
  }
  function hardenBuiltIns() {
    var seen = new Set();
    var pending = [];
    function visit(v) {
      if ((typeof v === 'object' && v !== null) || typeof v === 'function') {
        if (v !== G && !seen.has(v)) {
          seen.add(v);
          pending.push(v);
        }
      }
    }
    function walk(o) {
      var keys = ownKeys(o);
      for (var i = 0; i < keys.length; i++) {
        var d = getDescriptor(o, keys[i]);
        if ('value' in d) visit(d.value);
        else { visit(d.get); visit(d.set); }
      }
      visit(Object.getPrototypeOf(o));
    }
    walk(G);
    // Intrinsics no global names: reached through instances.
    [function* () {}, async function () {}, async function* () {}, [][Symbol.iterator](),
      new Map()[Symbol.iterator](), new Set()[Symbol.iterator](), ''[Symbol.iterator](),
      /x/[Symbol.matchAll](''), (function* () {})(), (async function* () {})(), Promise.resolve()
    ].forEach(function (instance) { visit(Object.getPrototypeOf(instance)); });
    for (var n = 0; n < pending.length; n++) walk(pending[n]);
    pending.forEach(harden);
  }
  hardenBuiltIns();

  // One run: the request's parts arrive as arguments (headers and parameters as plain objects
  // built by the host). Returns what `cleanup` returns.
  function run(method, body, headers, parameters, requestId, integrationUuid, remoteAddress) {
    var request = {
      method: method, body: body, headers: new Proxy(headers, headerHandler), parameters: parameters,
      requestId: requestId, integrationUuid: integrationUuid, remoteAddress: remoteAddress
    };
    var trigger = { properties: {} };
    var constants = Object.assign({}, constantsTemplate);
    // Flow Designer HTTP triggers set their outputs here (`output['Name'] = value`).
    var output = {};
    // Kept until the next run replaces it, so promise jobs the host runs after `run` returns can
    // still `require`.
    current = {
      request: request, trigger: trigger, constants: constants, cache: Object.create(null),
      jxon: null
    };
    script.call(G, request, trigger, form, http, console, constants, require, JXON, XMLUtils, output);
    for (var name in output) {
      native.outputs(jsonStringify(output));
      break;
    }
    return cleanup();
  }

  function setScript(fn) { script = fn; }
  function registerLibrary(name, fn) { libraries[name] = fn; }

  // ---- leak guard for the global object -------------------------------------------------------
  // The built-ins are frozen (above); the global object cannot be, since scripts legitimately
  // assign globals (`x = 1` without `var`, `this.x = ...`). After each successful run the guard
  // deletes the global properties that were not there after setup (enumerable or not, named by
  // strings or symbols), puts back every original global binding a script replaced or deleted,
  // and empties `Array.prototype` again (its `length` stays writable, see `harden`). `cleanup`
  // returns false when something could not be undone (a non-configurable global made with
  // `Object.defineProperty`): the host then drops the context, as it does after a failed run.
  //
  // The usual run changed nothing, so both checks have a fast path: the count of own keys, and a
  // function generated at setup that compares each original binding by a constant name.
  var baseKeys = [];
  var bindings = [];
  var bindingValues = [];
  var bindingsIntact = null;
  var globalPrototype = Object.getPrototypeOf(G);
  var identifier = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
  function snapshot() {
    baseKeys = ownKeys(G);
    bindings = baseKeys.map(function (key) { return getDescriptor(G, key); });
    bindingValues = bindings.map(function (d) { return d.value; });
    var checks = [];
    baseKeys.forEach(function (key, i) {
      var d = bindings[i];
      // Read-only, non-configurable globals (NaN, undefined, Infinity) cannot change.
      if ((!d.configurable && !d.writable) || !('value' in d)) return;
      var read = typeof key === 'string' && identifier.test(key) ? 'g.' + key : 'g[k[' + i + ']]';
      checks.push(read + ' === v[' + i + ']');
    });
    bindingsIntact = Function('g', 'k', 'v', 'return ' + (checks.length ? checks.join(' && ') : 'true') + ';');
  }
  function cleanup() {
    if (arrayPrototype.length !== 0) arrayPrototype.length = 0;
    // A global object made non-extensible cannot be undone; a replaced prototype can.
    if (!isExtensible(G)) return false;
    if (Object.getPrototypeOf(G) !== globalPrototype) Object.setPrototypeOf(G, globalPrototype);
    var keys = ownKeys(G);
    if (keys.length === baseKeys.length && bindingsIntact(G, baseKeys, bindingValues)) return true;
    var clean = true;
    for (var j = 0; j < keys.length; j++) {
      if (baseKeys.indexOf(keys[j]) === -1 && !deleteProperty(G, keys[j])) clean = false;
    }
    for (var k = 0; k < baseKeys.length; k++) {
      var now = getDescriptor(G, baseKeys[k]);
      var then = bindings[k];
      var same = now !== undefined && ('value' in then ? now.value === then.value || then.value !== then.value
        : now.get === then.get && now.set === then.set);
      if (!same && !reflectDefine(G, baseKeys[k], then)) clean = false;
    }
    return clean && ownKeys(G).length === baseKeys.length;
  }

  return { run: run, cleanup: cleanup, snapshot: snapshot, registerLibrary: registerLibrary, setScript: setScript };
})
