// Terminate every ACTIVE event whose property matches the request, through the built-in
// `xMatters` endpoint (run_script action). Body: {"name": "host", "value": "db-9"}.
// Terminating an event cancels its notifications that were not delivered yet.
var wanted = JSON.parse(request.body);
var query = '/api/xm/1/events?status=ACTIVE&propertyName=' + encodeURIComponent(wanted.name) +
  '&propertyValue=' + encodeURIComponent(wanted.value);
var found = JSON.parse(http.request({ endpoint: 'xMatters', method: 'GET', path: query }).write().body);
found.data.forEach(function (event) {
  var answer = http.request({ endpoint: 'xMatters', method: 'POST', path: '/api/xm/1/events',
    headers: { 'Content-Type': 'application/json' } }).write({ id: event.id, status: 'TERMINATED' });
  console.log('terminated ' + event.id + ': ' + answer.statusCode);
});
