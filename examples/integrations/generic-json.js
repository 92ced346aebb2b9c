// Generic JSON mapper: copy the top-level fields of any JSON object into the event properties
// (nested objects are flattened to "a.b" keys, arrays joined), take priority and recipients from
// well-known field names or the integration's constants.
var body = JSON.parse(request.body);

function flatten(prefix, value, out) {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    Object.keys(value).forEach(function (key) {
      flatten(prefix ? prefix + '.' + key : key, value[key], out);
    });
  } else if (Array.isArray(value)) {
    out[prefix] = value.map(function (v) { return typeof v === 'object' ? JSON.stringify(v) : String(v); }).join(', ');
  } else {
    out[prefix] = value;
  }
  return out;
}

trigger.properties = flatten('', body, {});
var priority = String(body.priority || body.severity || constants.DefaultPriority || 'MEDIUM').toUpperCase();
var PRIORITIES = { CRITICAL: 'HIGH', HIGH: 'HIGH', ERROR: 'HIGH', WARNING: 'MEDIUM', MEDIUM: 'MEDIUM', INFO: 'LOW', LOW: 'LOW' };
trigger.priority = PRIORITIES[priority] || 'MEDIUM';
var recipient = body.recipient || constants.DefaultRecipient;
if (recipient) {
  trigger.recipients = [{ targetName: recipient }];
}
var result = form.post(trigger);
console.log('generic mapper: ' + Object.keys(trigger.properties).length + ' properties, status ' + result.statusCode);
