// Grafana alert webhook (legacy and unified alerting) → one event while alerting.
var data = JSON.parse(request.body);

// Unified alerting (Grafana 8+) sends {status, alerts: [...]}; legacy sends {state, ruleName, ...}.
var alerting = data.state ? data.state === 'alerting' : data.status === 'firing';
if (!alerting) {
  console.log('Grafana state ' + (data.state || data.status) + ': nothing to notify');
  return;
}

var tags = data.tags || data.commonLabels || {};
var matches = (data.evalMatches || []).map(function (m) { return m.metric + '=' + m.value; });
trigger.properties.title = data.title || data.ruleName;
trigger.properties.ruleName = data.ruleName || (data.groupLabels && data.groupLabels.alertname) || '';
trigger.properties.message = data.message || '';
trigger.properties.ruleUrl = data.ruleUrl || data.externalURL || '';
trigger.properties.imageUrl = data.imageUrl || '';
trigger.properties.evalMatches = matches.join(', ');
trigger.properties.team = tags.team || '';
var severity = String(tags.severity || '').toLowerCase();
trigger.priority = severity === 'critical' || severity === 'high' ? 'HIGH' : 'MEDIUM';
if (constants.DefaultRecipient) {
  trigger.recipients = [{ targetName: constants.DefaultRecipient }];
}
form.post(trigger);
