// Zabbix media type ({"fields": {...macros...}}) → one event per problem; a recovery
// (event_value 0) creates no event.
var fields = JSON.parse(request.body).fields || {};
var SEVERITIES = ['Not classified', 'Information', 'Warning', 'Average', 'High', 'Disaster'];

if (String(fields.event_value) === '0') {
  console.log('Zabbix event ' + fields.event_id + ' resolved: no event');
  return;
}

var severity = parseInt(fields.event_nseverity, 10);
for (var key in fields) {
  if (fields.hasOwnProperty(key)) {
    trigger.properties[key] = fields[key];
  }
}
trigger.properties.severity = SEVERITIES[severity] || 'Unknown';
trigger.properties.summary = fields.event_name + ' on ' + fields.host_name;
trigger.properties.tags = (fields.event_tags || '').split(',').map(function (t) { return t.trim(); }).filter(function (t) { return t; });
trigger.priority = severity >= 4 ? 'HIGH' : severity >= 2 ? 'MEDIUM' : 'LOW';
if (fields.alert_sendto) {
  trigger.recipients = [{ targetName: fields.alert_sendto }];
}
form.post(trigger);
