// Live updates for the xmcentral console, served by the central itself (no other script runs:
// the Content-Security-Policy allows only this file).
//
// An element with data-live-url lists items newest first, each with data-id. Every few seconds
// this asks that URL for the items newer than the first one shown (after=ID) and inserts the
// HTML the central rendered (and escaped) at the top, so new requests appear without reloading.
// It stops when the session ends and says so in the element named by data-live-status, and
// keeps the count named by data-live-count up to date.
'use strict';

(function () {
  var PERIOD_MS = 2000;

  function say(list, text) {
    var status = document.getElementById(list.dataset.liveStatus || '');
    if (status) {
      status.textContent = text;
    }
  }

  // The element named by data-live-count says how many events match (data-total).
  function count(list, added) {
    var counter = document.getElementById(list.dataset.liveCount || '');
    if (counter) {
      var total = Number(counter.dataset.total) + added;
      counter.dataset.total = String(total);
      counter.textContent = total === 1 ? '1 event matches.' : total + ' events match.';
    }
  }

  function newestId(list) {
    var first = list.querySelector('[data-id]');
    return first ? first.dataset.id : '';
  }

  function poll(list) {
    var url = list.dataset.liveUrl;
    var separator = url.indexOf('?') >= 0 ? '&' : '?';
    var target = url + separator + 'after=' + encodeURIComponent(newestId(list));
    fetch(target, { credentials: 'same-origin', redirect: 'error', cache: 'no-store' })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(response.status === 403
            ? 'Your session has ended: reload the page to log in again.'
            : 'Live updates stopped (HTTP ' + response.status + ').');
        }
        return response.text();
      })
      .then(function (html) {
        var template = document.createElement('template');
        template.innerHTML = html;
        var items = Array.prototype.slice.call(template.content.children);
        if (items.length > 0) {
          list.prepend.apply(list, items);
          var empty = document.getElementById(list.id + '-empty');
          if (empty) {
            empty.remove();
          }
          count(list, items.length);
          say(list, items.length + ' new at ' + new Date().toLocaleTimeString() + '.');
        }
        window.setTimeout(function () { poll(list); }, PERIOD_MS);
      })
      .catch(function (error) {
        say(list, error.message);
      });
  }

  document.querySelectorAll('[data-live-url]').forEach(function (list) {
    window.setTimeout(function () { poll(list); }, PERIOD_MS);
  });

  // Trigger URLs: focusing the field selects it, ready to copy.
  document.querySelectorAll('input.copy').forEach(function (input) {
    input.addEventListener('focus', function () { input.select(); });
  });
})();
