// Prometheus Alertmanager → one xMatters event per firing alert.
// Alertmanager groups alerts; each firing alert in the group becomes its own event so that
// responders can act on (and resolve) them one by one. Resolved alerts create no event.
var payload = JSON.parse(request.body);
var alerts = payload.alerts || [];
var posted = 0;

for (var i = 0; i < alerts.length; i++) {
  var alert = alerts[i];
  if (alert.status !== 'firing') {
    continue;
  }
  var labels = alert.labels || {};
  var annotations = alert.annotations || {};
  var event = {
    properties: {
      alertname: labels.alertname,
      summary: annotations.summary || labels.alertname,
      description: annotations.description || '',
      severity: labels.severity || 'unknown',
      instance: labels.instance || '',
      job: labels.job || '',
      service: labels.service || '',
      startsAt: alert.startsAt,
      generatorURL: alert.generatorURL || '',
      fingerprint: alert.fingerprint || ''
    },
    priority: (annotations.priority || (labels.severity === 'critical' ? 'HIGH' : 'MEDIUM')).toUpperCase()
  };
  var recipient = annotations.recipient || constants.DefaultRecipient;
  if (recipient) {
    event.recipients = [{ targetName: recipient }];
  }
  var response = form.post(event);
  if (response.statusCode === 202) {
    posted++;
  }
}
console.log('Alertmanager ' + payload.status + ' group ' + (payload.groupKey || '') + ': ' + posted + ' event(s) of ' + alerts.length + ' alert(s)');
