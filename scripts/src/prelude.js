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

  // ---- leak guard -----------------------------------------------------------------------------
  // Enumerating every property of the built-ins costs tens of µs per run in QuickJS, so the
  // per-run guard relies on a cheaper fact: built-in properties are non-enumerable, while what a
  // script adds by assignment (implicit globals, `this.x = ...`, `String.prototype.f = ...`) is
  // enumerable. After each successful run the guard deletes enumerable properties that were not
  // there after setup, on the global object and on the objects scripts commonly extend, and puts
  // back the global bindings of the standard library if a script replaced them. Whatever it cannot
  // see (for example a replaced built-in method) lives at most until the host recycles the
  // context after `max_runs_per_context` runs. `cleanup` returns false when something could not be
  // undone (a non-configurable global made by indirect eval): the host then drops the context.
  //
  // Both checks have a fast path for the usual run that changed nothing: `for...in` only looks at
  // property flags (no array of names is built), and the standard bindings are compared by a
  // function generated at setup that reads each one by a constant name.
  var extended = [G, Object.prototype, Array.prototype, String.prototype];
  var bindingNames = ['Object', 'Function', 'Array', 'String', 'Number', 'Boolean', 'Date', 'RegExp',
    'Error', 'TypeError', 'RangeError', 'SyntaxError', 'JSON', 'Math', 'Promise', 'Map', 'Set',
    'Symbol', 'Reflect', 'Proxy', 'parseInt', 'parseFloat', 'isNaN', 'isFinite', 'encodeURIComponent',
    'decodeURIComponent', 'encodeURI', 'decodeURI', 'escape', 'unescape', 'eval', 'globalThis'];
  var baseKeys = [];
  var bindings = [];
  var bindingValues = [];
  var bindingsIntact = null;
  function snapshot() {
    baseKeys = extended.map(function (o) { return Object.keys(o); });
    bindings = bindingNames.map(function (name) { return getDescriptor(G, name); });
    bindingValues = bindingNames.map(function (name) { return G[name]; });
    bindingsIntact = Function('g', 'v', 'return ' + bindingNames.map(function (name, i) {
      return 'g.' + name + ' === v[' + i + ']';
    }).join(' && ') + ';');
  }
  // Whether `for...in` over `o` still yields exactly the names it had after setup (QuickJS-ng
  // makes `performance` an enumerable global, so "no enumerable names" is not the usual case).
  function unchanged(o, base) {
    var n = 0;
    for (var k in o) {
      if (base.indexOf(k) === -1) return false;
      n++;
    }
    return n === base.length;
  }
  function cleanup() {
    var clean = true;
    for (var i = 0; i < extended.length; i++) {
      if (unchanged(extended[i], baseKeys[i])) continue;
      var keys = Object.keys(extended[i]);
      for (var j = 0; j < keys.length; j++) {
        if (baseKeys[i].indexOf(keys[j]) === -1 && !deleteProperty(extended[i], keys[j])) clean = false;
      }
    }
    if (bindingsIntact(G, bindingValues)) return clean;
    for (var k = 0; k < bindingNames.length; k++) {
      if (bindings[k] !== undefined && G[bindingNames[k]] !== bindingValues[k] &&
          !reflectDefine(G, bindingNames[k], bindings[k])) clean = false;
    }
    return clean;
  }

  return { run: run, cleanup: cleanup, snapshot: snapshot, registerLibrary: registerLibrary, setScript: setScript };
})
