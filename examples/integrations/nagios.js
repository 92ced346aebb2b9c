// Nagios host or service notification (NAGIOS_* macros as JSON) → one event per PROBLEM;
// RECOVERY and ACKNOWLEDGEMENT notifications are logged, not notified.
var n = JSON.parse(request.body);
var type = n.NAGIOS_NOTIFICATIONTYPE || 'PROBLEM';
var isService = !!n.NAGIOS_SERVICEDESC;
var state = isService ? n.NAGIOS_SERVICESTATE : n.NAGIOS_HOSTSTATE;

if (!type.equalsIgnoreCase('PROBLEM')) {
  console.info('Nagios ' + type + ' for ' + n.NAGIOS_HOSTNAME + ': no event');
  return;
}

trigger.properties.host = n.NAGIOS_HOSTNAME;
trigger.properties.hostDisplayName = n.NAGIOS_HOSTDISPLAYNAME || n.NAGIOS_HOSTNAME;
trigger.properties.service = isService ? n.NAGIOS_SERVICEDESC : '';
trigger.properties.state = state;
trigger.properties.output = isService ? n.NAGIOS_SERVICEOUTPUT : n.NAGIOS_HOSTOUTPUT;
trigger.properties.notificationType = type;
trigger.properties.summary = (isService ? n.NAGIOS_SERVICEDESC + ' on ' : '') + n.NAGIOS_HOSTNAME + ' is ' + state;
trigger.priority = (state === 'DOWN' || state === 'CRITICAL') ? 'HIGH' : 'MEDIUM';
if (n.NAGIOS_CONTACTGROUPNAME) {
  trigger.recipients = [{ targetName: n.NAGIOS_CONTACTGROUPNAME }];
}
form.post(trigger);
